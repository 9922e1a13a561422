"""diffusers, and the two older spellings diffusers still loads (read-only).

    unet.up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.lora_A.weight     [r, in]
    unet.up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.lora_B.weight     [out, r]
    text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight

Scale travels in the header as ``lora_adapter_metadata`` (each component's LoraConfig fields,
which diffusers hands to peft). Without it, a diffusers file has scale 1 unless it carries
``.alpha`` tensors (network alphas, scale = alpha / r).

- diffusers-old: ``...to_q.lora.down.weight`` / ``lora_linear_layer`` (the official B-LoRA output);
- diffusers-legacy-attn: the attention-processor era, ``...attn1.processor.to_q_lora.down.weight``.

The role slot ``lora_A.<role>.weight`` mirrors peft's adapter-name slot; adapterctl uses it for
two roles on one module. Experts: ``lora_experts_A/B`` and ``lora_router.weight/bias``.
"""

from __future__ import annotations

import re
from typing import Optional

from adapterctl.format.constants import DIFFUSERS_METADATA_KEY
from adapterctl.layouts import keys as K
from adapterctl.layouts.base import Layout
from adapterctl.layouts.lora_config import diffusers_metadata

SUFFIX = re.compile(
    r"\.(?:"
    r"(?P<ab>lora_[AB])(?:\.(?P<qual>[A-Za-z0-9_-]+))?\.weight"
    r"|(?P<mag>lora_magnitude_vector)(?:\.(?P<qual_m>[A-Za-z0-9_-]+))?(?:\.weight)?"
    r"|(?P<old>lora(?:_linear_layer)?)\.(?P<old_dir>down|up)\.weight"
    r"|(?P<exp>lora_experts_[AB])\.weight"
    r"|(?P<router>lora_router)\.(?P<router_part>weight|bias)"
    r"|(?P<alpha>alpha)"
    r")$"
)
PEFT_PREFIX = "base_model.model."

_LEGACY_ATTN = re.compile(
    r"^(?P<path>.+?)\.(?:processor\.)?(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<dir>down|up)\.weight$")
_LEGACY_UNET_PROJ = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_LEGACY_TE_PROJ = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


def parse_suffixed(key: str, family: str) -> Optional[K.ParsedKey]:
    """A key in the peft/diffusers suffix grammar, as ``family`` (diffusers or peft)."""
    match = SUFFIX.search(key)
    if not match or match["old"]:
        return None
    component, path, doubled = K.split_component(key[: match.start()])
    if match["ab"]:
        part = K.DOWN if match["ab"] == "lora_A" else K.UP
        return K.ParsedKey(key, family, component, path, part, match["qual"], doubled)
    if match["mag"]:
        return K.ParsedKey(key, family, component, path, K.MAGNITUDE, match["qual_m"], doubled)
    if match["exp"]:
        part = K.EXPERT_DOWN if match["exp"].endswith("A") else K.EXPERT_UP
        return K.ParsedKey(key, family, component, path, part, None, doubled)
    if match["router"]:
        part = K.ROUTER_W if match["router_part"] == "weight" else K.ROUTER_B
        return K.ParsedKey(key, family, component, path, part, None, doubled)
    # A bare ".alpha" belongs to whichever diffusers family the file's factors use.
    return K.ParsedKey(key, "diffusers-alpha", component, path, K.ALPHA, None, doubled)


class Diffusers(Layout):
    name = "diffusers"
    summary = "diffusers' own: component.path.lora_A/B.weight, scale in lora_adapter_metadata"
    group = "diffusers"
    writable = True
    example = "unet.up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.lora_A.weight"

    def parse(self, key):
        if key.startswith(PEFT_PREFIX) and SUFFIX.search(key) and not key.endswith(".alpha"):
            return None  # peft's, see peft.py
        return parse_suffixed(key, self.name)

    def factor_names(self, arch, entry, qualifier):
        spec = arch.get(entry.module)
        return _ab_names(f"{spec.component}.{spec.path}", entry, qualifier)

    def header_metadata(self, entries, arch):
        return {DIFFUSERS_METADATA_KEY: diffusers_metadata(entries, arch)}


class DiffusersOld(Layout):
    name = "diffusers-old"
    summary = "older diffusers/B-LoRA spelling: path.lora.down/up.weight (read-only)"
    group = "diffusers"
    example = "unet.up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.lora.down.weight"

    def parse(self, key):
        match = SUFFIX.search(key)
        if not match or not match["old"]:
            return None
        component, path, doubled = K.split_component(key[: match.start()])
        part = K.DOWN if match["old_dir"] == "down" else K.UP
        return K.ParsedKey(key, self.name, component, path, part, None, doubled)


class DiffusersLegacyAttn(Layout):
    name = "diffusers-legacy-attn"
    summary = "attention-processor era: attn1.processor.to_q_lora.down.weight (read-only)"
    group = "diffusers"
    example = "unet.up_blocks.0.attentions.1.transformer_blocks.0.attn1.processor.to_q_lora.down.weight"

    def parse(self, key):
        legacy = _LEGACY_ATTN.match(key)
        if not legacy:
            return None
        component, path, doubled = K.split_component(legacy["path"])
        te = component not in (None, "unet") or path.startswith("text_model")
        table = _LEGACY_TE_PROJ if te else _LEGACY_UNET_PROJ
        part = K.DOWN if legacy["dir"] == "down" else K.UP
        return K.ParsedKey(key, self.name, component, f"{path}.{table[legacy['proj']]}", part,
                           doubled_prefix=doubled)


def _ab_names(prefix: str, entry, qualifier: Optional[str]) -> dict[str, str]:
    q = f".{qualifier}" if qualifier else ""
    names = {"down": f"{prefix}.lora_A{q}.weight", "up": f"{prefix}.lora_B{q}.weight"}
    if entry.dora:
        # peft saves DoRA magnitudes without a ".weight" suffix, and diffusers inherits that naming.
        names["magnitude"] = f"{prefix}.lora_magnitude_vector{q}"
    return names
