"""What writing a layout needs beyond names (which each layout's module gives): convertibility,
the scale metadata (LoraConfig fields), and kohya alpha tensors.

Conversions only rename tensors, so the bytes of every factor are copied unchanged. Scale is
carried, never folded: kohya keeps ``alpha`` tensors; diffusers gets ``lora_adapter_metadata``
(LoraConfig fields per component, which diffusers passes to peft); peft gets adapter_config.json.
"""

from __future__ import annotations

import json
import math

from adapterctl.arch import ArchMap
from adapterctl.errors import UnsupportedConversion
from adapterctl.format.constants import COMPONENTS
from adapterctl.format.manifest import ModuleEntry
from adapterctl.layouts.scaling import compact_patterns, decode_scalar, encode_scalar

_ALPHA_DTYPES = ("F16", "BF16", "F32", "F64", "I64", "I32")  # kept as-is in kohya output; others become F32


def check_convertible(entries: list[ModuleEntry], target: str, *, lycoris: dict, unmapped: list[str]) -> None:
    if lycoris:
        raise UnsupportedConversion(
            f"LyCORIS tensors ({', '.join(sorted(lycoris))}) cannot be converted without loss",
            hint="adapterctl reports LyCORIS files but only converts plain LoRA/LoCon")
    if unmapped:
        raise UnsupportedConversion(f"{len(unmapped)} tensors do not map to {target} names and would be lost",
                                    hint="run 'adapterctl inspect' to list them")
    seen: set[str] = set()
    for e in entries:
        if e.role == "expert":
            raise UnsupportedConversion(f"'{e.module}' holds experts; no {target} layout can store them",
                                        hint="collapse experts into a plain LoRA first")
        if e.module in seen:
            raise UnsupportedConversion(f"'{e.module}' carries two roles; a {target} file holds one LoRA per module",
                                        hint="split by role first: adapterctl split FILE --keep content")
        seen.add(e.module)
        # The two DoRA forms are different parametrisations: each stays within its own family.
        kohya_dora = e.dora and (e.tensors.magnitude or "").endswith("dora_scale")
        if e.dora and not kohya_dora and target == "kohya":
            raise UnsupportedConversion(f"'{e.module}' is DoRA; kohya's dora_scale is a different parametrisation",
                                        hint="convert to diffusers or peft instead, which keep the magnitude vector")
        if kohya_dora and target != "kohya":
            raise UnsupportedConversion(f"'{e.module}' has a kohya/LyCORIS dora_scale, which {target} cannot hold "
                                        "(diffusers drops it for SDXL)", hint="keep this adapter in the kohya layout")
    if target == "peft" and len({e.component for e in entries}) > 1:
        raise UnsupportedConversion("a peft adapter directory holds one model component, this adapter has "
                                    f"{', '.join(sorted({e.component for e in entries}))}",
                                    hint="split first, e.g. adapterctl split FILE --keep-blocks 'up_blocks.*'")


def factor_names(arch: ArchMap, entry: ModuleEntry, target: str, *, qualifier: str | None = None) -> dict[str, str]:
    """Tensor names for one branch in the target layout: keys 'down', 'up', and maybe 'alpha', 'magnitude'."""
    from adapterctl.layouts.registry import writer

    return writer(target).factor_names(arch, entry, qualifier)


def lora_config_fields(entries: list[ModuleEntry], arch: ArchMap, *, unwrap: bool = False) -> dict[str, dict]:
    """Per component, the LoraConfig fields that reproduce each entry's scale exactly.

    ``unwrap``: name text-encoder modules without the ``text_model.`` wrapper (see _config_path).
    """
    per: dict[str, dict] = {}
    for component in COMPONENTS:
        chosen = [e for e in entries if e.component == component]
        if not chosen:
            continue
        rslora = {e.rslora for e in chosen}
        use_rslora = rslora == {True}
        pairs = {_config_path(arch.get(e.module).path, unwrap): (e.rank, _alpha_for(e, use_rslora))
                 for e in chosen}
        fields = compact_patterns(pairs)
        fields.update({
            "target_modules": sorted(pairs),
            "use_rslora": use_rslora,
            "use_dora": any(e.dora for e in chosen),
            "lora_dropout": 0.0,
            "bias": "none",
        })
        per[component] = fields
    return per


def _config_path(path: str, unwrap: bool) -> str:
    # LoraConfig names are matched against *live* module names. transformers 5 dropped the
    # ``text_model`` wrapper from CLIPTextModel (not from CLIPTextModelWithProjection), while files
    # keep it. diffusers strips ``text_model.`` from a flattened encoder's tensor keys but passes
    # lora_adapter_metadata through untouched, so with the wrapper in target_modules a
    # transformers-5 TE1 fails (NoMatchingPeftModuleError). peft matches target_modules and
    # patterns as dotted suffixes, so the unwrapped path selects the same module under every
    # transformers version. A peft directory is not unwrapped: its tensor keys name live paths,
    # and a config that matched while the keys did not would load nothing, silently.
    return path.removeprefix("text_model.") if unwrap else path


def _alpha_for(entry: ModuleEntry, use_rslora: bool) -> float:
    if entry.rslora == use_rslora:
        return entry.alpha
    # Mixed conventions in one component: express this entry's scale in the chosen one.
    return entry.scale * (math.sqrt(entry.rank) if use_rslora else entry.rank)


def diffusers_metadata(entries: list[ModuleEntry], arch: ArchMap) -> str:
    packed = {f"{component}.{k}": v for component, fields in lora_config_fields(entries, arch, unwrap=True).items()
              for k, v in fields.items()}
    return json.dumps(packed, sort_keys=True, separators=(",", ":"))


def peft_adapter_config(entries: list[ModuleEntry], arch: ArchMap) -> dict:
    (fields,) = lora_config_fields(entries, arch).values()
    return {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": None,
            "inference_mode": True, "init_lora_weights": True, **fields}


def kohya_alpha(entry: ModuleEntry) -> tuple[str, bytes]:
    """The alpha tensor for kohya output: the value that gives the same scale, in the dtype it came in."""
    value = entry.alpha if not entry.rslora else entry.scale * entry.rank
    dtype = entry.alpha_dtype if entry.alpha_dtype in _ALPHA_DTYPES else "F32"
    if dtype in ("I64", "I32") and value != int(value):
        dtype = "F32"
    encoded = encode_scalar(dtype, value)
    if decode_scalar(dtype, encoded) != value:  # never round an alpha away: widen until exact
        dtype = "F32" if dtype in ("F16", "BF16", "I64", "I32") else "F64"
        encoded = encode_scalar(dtype, value)
        if decode_scalar(dtype, encoded) != value:
            dtype, encoded = "F64", encode_scalar("F64", value)
    return dtype, encoded

