"""LyCORIS (LoHa, LoKr, full diff, OFT, Tucker LoCon): read and reported, never converted.

Its tensors share kohya's prefixes; the suffix names the algorithm, e.g.
``lora_unet_..._to_q.hada_w1_a``. None of them is a plain (up, down) pair, so no other layout
can hold them without loss.
"""

from __future__ import annotations

from adapterctl.layouts import keys as K
from adapterctl.layouts.base import Layout
from adapterctl.layouts.kohya import split_prefixed

# Tensor suffixes by algorithm.
SUFFIXES = {
    "hada_w1_a": "loha", "hada_w1_b": "loha", "hada_w2_a": "loha", "hada_w2_b": "loha",
    "hada_t1": "loha", "hada_t2": "loha",
    "lokr_w1": "lokr", "lokr_w2": "lokr", "lokr_w1_a": "lokr", "lokr_w1_b": "lokr",
    "lokr_w2_a": "lokr", "lokr_w2_b": "lokr", "lokr_t2": "lokr",
    "diff": "full", "diff_b": "full",
    "oft_blocks": "oft", "oft_diag": "oft", "rescale": "oft",
    "lora_mid.weight": "locon-tucker",
}


class Lycoris(Layout):
    name = "lycoris"
    summary = "LyCORIS (LoHa, LoKr, full, OFT, Tucker): read-only, reported per algorithm"
    group = "kohya"
    example = "lora_unet_output_blocks_1_1_transformer_blocks_0_attn1_to_q.hada_w1_a"

    def parse(self, key):
        found = split_prefixed(key)
        if found is None or found[2] not in SUFFIXES:
            return None
        component, flat, suffix = found
        return K.ParsedKey(key, self.name, component, flat, suffix, lycoris=SUFFIXES[suffix])
