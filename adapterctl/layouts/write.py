"""What writing a layout needs beyond each layout's own module: what can be converted without
loss, the names of a branch in a target layout, and kohya alpha tensors.

Conversions only rename tensors, so the bytes of every factor are copied unchanged. Scale is
carried, never folded: kohya keeps ``alpha`` tensors; diffusers gets ``lora_adapter_metadata``
and peft adapter_config.json (lora_config.py).
"""

from __future__ import annotations

from adapterctl.arch import ArchMap
from adapterctl.errors import UnsupportedConversion
from adapterctl.format.manifest import ModuleEntry
from adapterctl.layouts.registry import writer
from adapterctl.layouts.scaling import decode_scalar, encode_scalar

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
    return writer(target).factor_names(arch, entry, qualifier)


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

