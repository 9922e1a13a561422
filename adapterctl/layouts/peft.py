"""peft: a directory of adapter_config.json (LoraConfig: r, lora_alpha, patterns) and
adapter_model.safetensors with keys under ``base_model.model.`` (reading the directory: peft_dir.py).

    base_model.model.up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.lora_A.weight

One directory holds one model component, so a UNet + text encoder adapter cannot be one peft
directory (convert refuses; split first).
"""

from __future__ import annotations

from adapterctl.layouts.base import Layout
from adapterctl.layouts.diffusers import PEFT_PREFIX, SUFFIX, _ab_names, parse_suffixed


class Peft(Layout):
    name = "peft"
    summary = "peft's save_pretrained directory: adapter_config.json + adapter_model.safetensors"
    group = "peft"
    writable = True
    directory = True
    example = "base_model.model.up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.lora_A.weight"

    def parse(self, key):
        if not key.startswith(PEFT_PREFIX) or key.endswith(".alpha"):
            return None
        match = SUFFIX.search(key)
        if not match or match["old"]:
            return None
        return parse_suffixed(key, self.name)

    def factor_names(self, arch, entry, qualifier):
        return _ab_names(f"{PEFT_PREFIX}{arch.get(entry.module).path}", entry, qualifier)
