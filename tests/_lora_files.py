"""What the merge and prune tests share: SDXL module names with real shapes, a branch as numbers,
and kohya files written and read with safetensors alone (never through adapterctl)."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import load_file

from adapterctl.arch import load_arch

ARCH = load_arch("sdxl")
KOHYA_NAMES = {**{ARCH.kohya_name(n, sgm=False): n for n in ARCH.modules},
               **{ARCH.kohya_name(n, sgm=True): n for n in ARCH.modules}}

TE = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"  # 768x768, LBW BASE
CONV3 = "unet.conv_in"  # 3x3 conv 4 -> 320 (in*k = 36); IN00: no slot in the 12-value LBW list
CONV1 = "unet.down_blocks.1.resnets.0.conv_shortcut"  # 1x1 conv 320 -> 640, IN04
Q4 = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"  # 640x640, IN04
P4 = "unet.down_blocks.1.attentions.0.proj_in"  # same block as Q4
K5 = "unet.down_blocks.1.attentions.1.transformer_blocks.0.attn1.to_k"  # 640x640, IN05
V3 = "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v"  # 640x640, OUT03


class Branch:
    """A stored branch as numbers: delta_W = scale * up @ down (factors flattened, float64)."""

    def __init__(self, up, down, scale):
        self.up = np.asarray(up, np.float64).reshape(up.shape[0], -1)
        self.down = np.asarray(down, np.float64).reshape(down.shape[0], -1)
        self.scale = float(scale)

    @property
    def rank(self):
        return self.down.shape[0]

    def dense(self):
        return self.scale * (self.up @ self.down)


def kohya_branch(tensors: dict, name: str, up: np.ndarray, down: np.ndarray, alpha) -> Branch:
    """Add one branch under its SGM kohya name (alpha None: no alpha tensor, so alpha = rank)."""
    base = ARCH.kohya_name(name)
    tensors[f"{base}.lora_down.weight"] = down
    tensors[f"{base}.lora_up.weight"] = up
    if alpha is not None:
        tensors[f"{base}.alpha"] = np.array(alpha, dtype=np.float32)
    rank = down.shape[0]
    return Branch(up, down, (rank if alpha is None else alpha) / rank)


def read_kohya(path) -> dict[str, np.ndarray]:
    """canonical name -> delta_W of a kohya file, read with safetensors alone."""
    arrays = load_file(str(path))
    out = {}
    for key in arrays:
        assert key.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")), key
        if not key.endswith(".lora_down.weight"):
            continue
        base = key.removesuffix(".lora_down.weight")
        down, up = arrays[key], arrays[f"{base}.lora_up.weight"]
        rank = down.shape[0]
        alpha = float(arrays[f"{base}.alpha"]) if f"{base}.alpha" in arrays else rank
        name = KOHYA_NAMES[base]
        assert name not in out
        out[name] = Branch(up, down, alpha / rank).dense()
    return out
