"""The scale metadata of the layouts that carry LoraConfig fields: diffusers'
``lora_adapter_metadata`` (per component) and peft's adapter_config.json.

Each entry's scale is reproduced exactly: the most common (r, alpha) becomes the default and the
rest are listed as rank/alpha patterns (see scaling.compact_patterns).
"""

from __future__ import annotations

import json
import math

from adapterctl.arch import ArchMap
from adapterctl.format.constants import COMPONENTS
from adapterctl.format.manifest import ModuleEntry
from adapterctl.layouts.scaling import compact_patterns


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
