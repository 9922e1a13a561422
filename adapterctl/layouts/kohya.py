"""kohya / sd-scripts: flat names under lora_unet_ / lora_te1_ / lora_te2_, an alpha tensor per branch.

    lora_unet_output_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_down.weight   [r, in]
    lora_unet_output_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_up.weight     [out, r]
    lora_unet_output_blocks_1_1_transformer_blocks_0_attn1_to_q.alpha              []   scale = alpha / r

Written with SGM names for the SDXL UNet (what A1111 and ComfyUI look up); read with SGM or
diffusers-flavoured flat names (the architecture map knows both). LyCORIS keys share the
prefixes and are read by lycoris.py.
"""

from __future__ import annotations

from typing import Optional

from adapterctl.layouts import keys as K
from adapterctl.layouts.base import Layout

PREFIXES = {"lora_unet_": "unet", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2",
            "lora_te_": "text_encoder"}
SUFFIXES = {"lora_down.weight": K.DOWN, "lora_up.weight": K.UP, "alpha": K.ALPHA, "dora_scale": K.DORA_SCALE}


def split_prefixed(key: str) -> Optional[tuple[str, str, str]]:
    """(component, flat module name, suffix) of a key under a kohya prefix, or None."""
    for prefix, component in PREFIXES.items():
        if key.startswith(prefix):
            flat, _, suffix = key[len(prefix):].partition(".")
            return (component, flat, suffix) if flat and suffix else None
    return None


class Kohya(Layout):
    name = "kohya"
    summary = "sd-scripts / A1111 / ComfyUI: flat SGM names, an alpha tensor per branch"
    group = "kohya"
    writable = True
    alpha_tensors = True
    example = "lora_unet_output_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_down.weight"

    def parse(self, key):
        found = split_prefixed(key)
        if found is None or found[2] not in SUFFIXES:
            return None
        component, flat, suffix = found
        return K.ParsedKey(key, self.name, component, flat, SUFFIXES[suffix])

    def factor_names(self, arch, entry, qualifier):
        base = arch.kohya_name(entry.module)  # SGM names for the SDXL UNet, as A1111/ComfyUI expect
        names = {"down": f"{base}.lora_down.weight", "up": f"{base}.lora_up.weight", "alpha": f"{base}.alpha"}
        if entry.dora:  # only a kohya dora_scale gets here (write.check_convertible)
            names["magnitude"] = f"{base}.dora_scale"
        return names
