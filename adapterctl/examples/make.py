"""Deterministic example adapters shipped with the package (used by ``adapterctl demo`` and tests).

Regenerate with ``python -m adapterctl.examples.make``; a test checks the shipped bytes still
equal a fresh generation. The files imitate what users download: no adapterctl manifest.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from adapterctl.arch import load_arch, target_presets
from adapterctl.io.writer import OutTensor, write_safetensors

HERE = Path(__file__).resolve().parent
BLORA = "blora_example.safetensors"
PAINTING = "blora_painting_example.safetensors"  # a second B-LoRA, to merge with the first
LOCON = "locon_example.safetensors"


def _factors(rng, spec, rank: int):
    kernel = tuple(spec.kernel) if spec.kernel else ()
    down = rng.normal(0, 1 / rank, size=(rank, spec.in_features) + kernel).astype(np.float16)
    up = rng.normal(0, 0.02, size=(spec.out_features, rank) + ((1, 1) if kernel else ())).astype(np.float16)
    return down, up


def _t(name: str, arr: np.ndarray) -> OutTensor:
    dtype = {np.float16: "F16", np.float32: "F32"}[arr.dtype.type]
    return OutTensor.from_bytes(name, dtype, arr.shape, arr.tobytes())


def blora_tensors(rank: int = 2, seed: int = 0) -> list[OutTensor]:
    """The official B-LoRA output shape: old diffusers naming, no alphas, the two blocks only."""
    arch = load_arch("sdxl")
    rng = np.random.default_rng(seed)
    out = []
    for name in target_presets("sdxl")["b-lora"].modules(arch):
        spec = arch.get(name)
        down, up = _factors(rng, spec, rank)
        out += [_t(f"unet.{spec.path}.lora.down.weight", down), _t(f"unet.{spec.path}.lora.up.weight", up)]
    return out


def locon_tensors(rank: int = 4, conv_rank: int = 2, seed: int = 1) -> list[OutTensor]:
    """A small kohya LoCon file with SGM names: attention + resnet convs of the first up block, one TE layer."""
    arch = load_arch("sdxl")
    rng = np.random.default_rng(seed)
    chosen = [m for m in arch.modules.values() if _in_locon_example(m)]
    out = []
    for spec in chosen:
        r = conv_rank if spec.kind == "conv" else rank
        down, up = _factors(rng, spec, r)
        base = arch.kohya_name(spec.name)
        alpha = np.array(r / 2, dtype=np.float16)
        out += [_t(f"{base}.alpha", alpha), _t(f"{base}.lora_down.weight", down), _t(f"{base}.lora_up.weight", up)]
    return out


def _in_locon_example(m) -> bool:
    if m.block == "up_blocks.0.attentions.0":  # proj_in/out and the first transformer block only
        return ".transformer_blocks." not in m.path or ".transformer_blocks.0." in m.path
    return m.block in ("up_blocks.0.resnets.0", "up_blocks.0.upsamplers.0", "text_encoder.layers.0")


LOCON_METADATA = {
    "ss_network_module": "networks.lora",
    "ss_network_dim": "4",
    "ss_network_alpha": "2.0",
    "ss_base_model_version": "sdxl_base_v1-0",
    "ss_output_name": "locon_example",
}


def write_examples(directory: Path = HERE, *, force: bool = True) -> list[Path]:
    paths = [directory / BLORA, directory / LOCON, directory / PAINTING]
    write_safetensors(paths[0], blora_tensors(), {}, force=force)
    write_safetensors(paths[1], locon_tensors(), dict(LOCON_METADATA), force=force)
    write_safetensors(paths[2], blora_tensors(seed=2), {}, force=force)
    return paths


if __name__ == "__main__":
    for p in write_examples(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(p, p.stat().st_size)
