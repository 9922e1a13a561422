"""What a parsed tensor key says: which tensor of which LoRA branch it is.

The grammars live with their layouts (kohya.py, lycoris.py, diffusers.py, peft.py), gguf-py
style: each foreign key shape is written down once, in its layout's module; ``registry.parse_key``
tries them in ``registry.LAYOUTS`` order. Turning module paths into canonical names (and SGM names
into diffusers ones) is the architecture map's job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

# Parts of a LoRA branch.
DOWN, UP, ALPHA, MAGNITUDE, DORA_SCALE = "down", "up", "alpha", "magnitude", "dora_scale"
EXPERT_DOWN, EXPERT_UP, ROUTER_W, ROUTER_B = "expert_down", "expert_up", "router_weight", "router_bias"

_COMPONENT_PREFIX = re.compile(r"^(?P<prefix>(?:unet\.)+|text_encoder_2\.|text_encoder\.|base_model\.model\.)")

_UNET_ROOTS = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in", "conv_out", "time_embedding.",
               "add_embedding.")


@dataclass(frozen=True, slots=True)
class ParsedKey:
    key: str
    family: str  # a layout name (registry.LAYOUTS), or diffusers-alpha
    component: Optional[str]  # None when the key does not say (peft, or bare paths)
    path: str  # kohya: flat name without prefix; others: dotted module path
    part: str
    qualifier: Optional[str] = None
    doubled_prefix: bool = False
    lycoris: Optional[str] = None


def split_component(prefixed: str) -> tuple[Optional[str], str, bool]:
    """(component, module path, doubled 'unet.unet.' prefix) of a dotted key stem."""
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
