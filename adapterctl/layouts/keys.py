"""The key grammar of every LoRA layout we read, mapped onto (component, module path, part).

One table per family, gguf-py style: each foreign key shape is written down once, here.
A parsed key says which tensor of which LoRA branch it is; turning module paths into canonical
names (and SGM names into diffusers ones) is the architecture map's job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

# Parts of a LoRA branch.
DOWN, UP, ALPHA, MAGNITUDE, DORA_SCALE = "down", "up", "alpha", "magnitude", "dora_scale"
EXPERT_DOWN, EXPERT_UP, ROUTER_W, ROUTER_B = "expert_down", "expert_up", "router_weight", "router_bias"

KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2",
                  "lora_te_": "text_encoder"}

KOHYA_SUFFIXES = {"lora_down.weight": DOWN, "lora_up.weight": UP, "alpha": ALPHA, "dora_scale": DORA_SCALE}

# LyCORIS tensor suffixes by algorithm: detected and reported, never converted.
LYCORIS_SUFFIXES = {
    "hada_w1_a": "loha", "hada_w1_b": "loha", "hada_w2_a": "loha", "hada_w2_b": "loha",
    "hada_t1": "loha", "hada_t2": "loha",
    "lokr_w1": "lokr", "lokr_w2": "lokr", "lokr_w1_a": "lokr", "lokr_w1_b": "lokr",
    "lokr_w2_a": "lokr", "lokr_w2_b": "lokr", "lokr_t2": "lokr",
    "diff": "full", "diff_b": "full",
    "oft_blocks": "oft", "oft_diag": "oft", "rescale": "oft",
    "lora_mid.weight": "locon-tucker",
}

# peft/diffusers-style suffixes. The role qualifier slot mirrors peft's own
# "lora_A.<adapter>.weight" naming; adapterctl uses it for two roles on one module.
_DIFFUSERS_SUFFIX = re.compile(
    r"\.(?:"
    r"(?P<ab>lora_[AB])(?:\.(?P<qual>[A-Za-z0-9_-]+))?\.weight"
    r"|(?P<mag>lora_magnitude_vector)(?:\.(?P<qual_m>[A-Za-z0-9_-]+))?(?:\.weight)?"
    r"|(?P<old>lora(?:_linear_layer)?)\.(?P<old_dir>down|up)\.weight"
    r"|(?P<exp>lora_experts_[AB])\.weight"
    r"|(?P<router>lora_router)\.(?P<router_part>weight|bias)"
    r"|(?P<alpha>alpha)"
    r")$"
)

# Diffusers' attention-processor era: ".processor.to_q_lora.down.weight" on the attention module.
_LEGACY_ATTN = re.compile(
    r"^(?P<path>.+?)\.(?:processor\.)?(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<dir>down|up)\.weight$")
_LEGACY_UNET_PROJ = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_LEGACY_TE_PROJ = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}

_COMPONENT_PREFIX = re.compile(r"^(?P<prefix>(?:unet\.)+|text_encoder_2\.|text_encoder\.|base_model\.model\.)")

_UNET_ROOTS = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in", "conv_out", "time_embedding.",
               "add_embedding.")


@dataclass(frozen=True, slots=True)
class ParsedKey:
    key: str
    family: str  # kohya | diffusers | diffusers-old | diffusers-legacy-attn | peft | lycoris
    component: Optional[str]  # None when the key does not say (peft, or bare paths)
    path: str  # kohya: flat name without prefix; others: dotted module path
    part: str
    qualifier: Optional[str] = None
    doubled_prefix: bool = False
    lycoris: Optional[str] = None


def parse_key(key: str) -> Optional[ParsedKey]:
    """Return what a tensor key is, or None when no grammar knows it."""
    for prefix, component in KOHYA_PREFIXES.items():
        if key.startswith(prefix):
            return _parse_kohya(key, prefix, component)
    legacy = _LEGACY_ATTN.match(key)
    if legacy:
        component, path, doubled = _split_component(legacy["path"])
        table = _LEGACY_UNET_PROJ if component in (None, "unet") and not path.startswith("text_model") else _LEGACY_TE_PROJ
        part = DOWN if legacy["dir"] == "down" else UP
        return ParsedKey(key, "diffusers-legacy-attn", component, f"{path}.{table[legacy['proj']]}", part,
                         doubled_prefix=doubled)
    match = _DIFFUSERS_SUFFIX.search(key)
    if not match:
        return None
    component, path, doubled = _split_component(key[: match.start()])
    peft = key.startswith("base_model.model.")
    family = "peft" if peft else "diffusers"
    if match["ab"]:
        part = DOWN if match["ab"] == "lora_A" else UP
        return ParsedKey(key, family, component, path, part, match["qual"], doubled)
    if match["mag"]:
        return ParsedKey(key, family, component, path, MAGNITUDE, match["qual_m"], doubled)
    if match["old"]:
        part = DOWN if match["old_dir"] == "down" else UP
        return ParsedKey(key, "diffusers-old", component, path, part, None, doubled)
    if match["exp"]:
        part = EXPERT_DOWN if match["exp"].endswith("A") else EXPERT_UP
        return ParsedKey(key, family, component, path, part, None, doubled)
    if match["router"]:
        part = ROUTER_W if match["router_part"] == "weight" else ROUTER_B
        return ParsedKey(key, family, component, path, part, None, doubled)
    # A bare ".alpha" belongs to whichever diffusers family the file's factors use.
    return ParsedKey(key, "diffusers-alpha", component, path, ALPHA, None, doubled)


def _parse_kohya(key: str, prefix: str, component: str) -> Optional[ParsedKey]:
    flat, _, suffix = key[len(prefix):].partition(".")
    if not flat or not suffix:
        return None
    if suffix in KOHYA_SUFFIXES:
        return ParsedKey(key, "kohya", component, flat, KOHYA_SUFFIXES[suffix])
    algo = LYCORIS_SUFFIXES.get(suffix)
    if algo:
        return ParsedKey(key, "lycoris", component, flat, suffix, lycoris=algo)
    return None


def _split_component(prefixed: str) -> tuple[Optional[str], str, bool]:
    match = _COMPONENT_PREFIX.match(prefixed)
    if not match:
        component = "unet" if prefixed.startswith(_UNET_ROOTS) else None
        return component, prefixed, False
    prefix = match["prefix"]
    path = prefixed[len(prefix):]
    if prefix.startswith("unet."):
        return "unet", path, prefix.count("unet.") > 1
    if prefix == "base_model.model.":
        return None, path, False
    return prefix[:-1], path, False


def bare_component_guess(path: str) -> Optional[str]:
    if path.startswith(_UNET_ROOTS):
        return "unet"
    return None
