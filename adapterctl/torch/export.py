"""A finished training run as an adapter: tagged branches, full provenance, any writable layout.

The trained branches become computed origins of a new ``Adapter`` (adapter.py ``Adapter.new``),
so the file is written by the same streaming writer as every other command: atomically, read
back before it is named, with roles and the manifest checked. The default layout is kohya with
SGM names and one uniform alpha, the one that loads completely and at the right scale in
diffusers, ComfyUI and A1111 alike (consumers/data; DESIGN.md §2).
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from adapterctl.adapter import Adapter
from adapterctl.arch import ArchMap
from adapterctl.format.manifest import Manifest, ModuleEntry, Operation, TensorKeys
from adapterctl.lowrank import Factored
from adapterctl.model.origins import Computed
from adapterctl.textsafe import clip
from adapterctl.torch.base import BaseModel
from adapterctl.torch.images import LoadedImage
from adapterctl.torch.methods import UNTAGGED
from adapterctl.torch.recipe import get_method
from adapterctl.torch.train import TrainResult
from adapterctl.version import __version__

# --save-dtype spellings -> safetensors dtype names
SAVE_DTYPES = {"float32": "F32", "fp32": "F32", "float16": "F16", "fp16": "F16", "bfloat16": "BF16", "bf16": "BF16"}


def to_adapter(result: TrainResult, image: LoadedImage, base: BaseModel, *, layout: str = "kohya",
               save_dtype: str = "F32", title: Optional[str] = None, output: Optional[Path] = None) -> Adapter:
    """``output``: where the file will be written; the image is then recorded relative to it, so
    that it is found again next to the adapter (calibrated zip) and no home directory leaks."""
    config, arch = result.config, base.arch
    method = get_method(config.method)
    entries, origins = [], {}
    for name in (n for n in arch.modules if n in result.wrappers):  # map order: blocks read in forward order
        wrapper = result.wrappers[name]
        for role in result.roles[name]:
            branch = wrapper.branches[role]
            entry = _entry(arch, name, branch, None if role == UNTAGGED else role, save_dtype)
            entries.append(entry)
            origins[(entry.module, entry.role)] = _origin(branch)
    preset = method.preset or ("unziplora" if method.name == "unziplora" else None)
    manifest = Manifest(architecture=arch.name, layout=layout, method=method.output_method, preset=preset,
                        modules=entries)
    stamp = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    operation = Operation(op="train", args=train_args(result, image, base, image_ref(image.path, output)),
                          tool=f"adapterctl {__version__}", at=stamp)
    metadata = {"modelspec.title": clip(title or f"{image.path.stem} ({method.name})", 200),
                "modelspec.trigger_phrase": clip(trigger_phrase(config.prompt), 200),
                "modelspec.description": f"{method.summary}; trained by adapterctl {__version__} from one image"}
    return Adapter.new(arch, manifest, origins, operation, metadata, name=image.path.name)


def image_ref(image: Path, output: Optional[Path]) -> str:
    """The image's path relative to the output's directory (as given when there is no output)."""
    import os

    if output is None:
        return str(image)
    try:
        return os.path.relpath(Path(image).resolve(), Path(output).resolve().parent)
    except ValueError:  # another drive (Windows): no relative path exists
        return str(image)


def train_args(result: TrainResult, image: LoadedImage, base: BaseModel, image_path: str) -> dict:
    """The training provenance: enough to rerun it, and to find its image again (calibrated zip)."""
    import diffusers
    import transformers

    c = result.config
    losses = result.losses
    window = max(1, len(losses) // 10)
    args = {
        "method": c.method, "image": clip(image_path, 500), "image_sha256": image.sha256,
        "image_size": f"{image.original_size[1]}x{image.original_size[0]}", "prompt": c.prompt,
        "steps": len(losses), "seed": c.seed, "lr": c.lr, "rank": c.rank, "alpha": c.alpha or float(c.rank),
        "resolution": c.resolution, "flip": c.flip, "weight_decay": c.weight_decay,
        "max_grad_norm": c.max_grad_norm, "precision": c.precision, "device": result.device,
        "base": clip(base.name, 500), "base_revision": base.revision,
        "loss_first": float(np.mean(losses[:window])), "loss_last": float(np.mean(losses[-window:])),
        "resumed_from": result.resumed_from, "torch": torch.__version__, "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
    if c.method == "unziplora":
        args.update(content_prompt=c.content_prompt, style_prompt=c.style_prompt, merger_lr=c.merger_lr,
                    mask_every=c.mask_every, mask_top=c.mask_top, overlap_lambda=c.overlap_lambda)
    if c.method == "blockwise":
        args.update(blocks=[clip(b, 200) for b in c.blocks], conv_rank=c.conv_rank)
    if image.notes:
        args["image_notes"] = [clip(n, 200) for n in image.notes]
    return args


def trigger_phrase(prompt: str) -> str:
    """The placeholder tokens of the prompt ("[v]"), or the prompt itself when it has none."""
    tokens = re.findall(r"\[[^\]\s]{1,20}\]|<[^>\s]{1,20}>", prompt)
    return ", ".join(dict.fromkeys(tokens)) if tokens else prompt


def _entry(arch: ArchMap, name: str, branch, role: Optional[str], dtype: str) -> ModuleEntry:
    spec = arch.modules[name]
    placeholder = f"{name}:{role or UNTAGGED}"  # the writer names the tensors for the layout
    return ModuleEntry(module=name, component=spec.component, block=spec.block, kind=spec.kind, rank=branch.rank,
                       alpha=branch.alpha, scale=branch.scale, dtype=dtype, role=role,
                       role_source="declared" if role else None,
                       tensors=TensorKeys(down=placeholder + ".down", up=placeholder + ".up"))


def _origin(branch) -> Computed:
    conv = branch.conv

    def produce() -> Factored:
        up, down = branch.folded()
        up = up.double().reshape(up.shape[0], -1).numpy()
        down = down.double().reshape(down.shape[0], -1).numpy()
        return Factored.of(up, down, branch.scale)

    down_tail = tuple(branch.down.shape[1:])
    return Computed(produce, out_features=branch.out_features, down_tail=down_tail, up_tail=(1, 1) if conv else ())


def default_output(image: Path, method: str) -> Path:
    return image.with_name(f"{image.stem}.{method}.safetensors")
