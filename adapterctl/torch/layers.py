"""LoRA branches inside a live torch model: training, calibration and their export.

A targeted ``nn.Linear``/``nn.Conv2d`` is replaced by ``Adapted``, which keeps the frozen base
module and one ``Branch`` per role (one for B-LoRA and plain LoRA, two for UnZipLoRA and
ZipLoRA calibration). Our own small module instead of peft's, because the methods need what
peft's layers do not offer: per-branch merger vectors on either axis and output-column masks
(UnZipLoRA, ZipLoRA), a branch that reads a different input than the base (UnZipLoRA's prompt
separation: the content LoRA's cross-attention K/V sees the content prompt), and switching
branches on and off between forward passes (ZipLoRA's loss compares merged against each LoRA
alone). Exported files are checked by loading them into diffusers and peft, so the two agree.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn


class Branch(nn.Module):
    """ΔW = scale · up @ down, applied as up(down(x)); never a dense matrix in the forward pass."""

    def __init__(self, base: nn.Module, rank: int, *, alpha: Optional[float] = None,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        self.conv = isinstance(base, nn.Conv2d)
        if self.conv:
            in_f, out_f = base.in_channels, base.out_channels
            down_shape, up_shape = (rank, in_f, *base.kernel_size), (out_f, rank, 1, 1)
            self.conv_args = {"stride": base.stride, "padding": base.padding, "dilation": base.dilation}
        else:
            in_f, out_f = base.in_features, base.out_features
            down_shape, up_shape = (rank, in_f), (out_f, rank)
        self.rank, self.in_features, self.out_features = rank, in_f, out_f
        self.alpha = float(alpha if alpha is not None else rank)
        # The reference B-LoRA init: down ~ N(0, (1/rank)^2), up = 0, so training starts at ΔW = 0.
        self.down = nn.Parameter(torch.randn(down_shape, generator=generator) / rank)
        self.up = nn.Parameter(torch.zeros(up_shape))
        self.merger: Optional[nn.Parameter] = None
        self.merger_axis: Optional[str] = None  # "input" | "output"
        self.register_buffer("mask", None)  # output columns this branch may use (UnZipLoRA), or None
        self.context: Optional[str] = None  # name of a substitute input (prompt separation), or None

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def add_merger(self, axis: str) -> nn.Parameter:
        size = self.in_features if axis == "input" else self.out_features
        self.merger = nn.Parameter(torch.ones(size, device=self.down.device))
        self.merger_axis = axis
        return self.merger

    def column_gate(self) -> Optional[torch.Tensor]:
        """The output-axis multiplier (merger times mask), or None."""
        gate = self.merger if self.merger_axis == "output" else None
        if self.mask is not None:
            gate = self.mask if gate is None else gate * self.mask
        return gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merger_axis == "input":
            x = x * (self.merger.view(1, -1, 1, 1) if self.conv else self.merger)
        down, up = self.down.to(x.dtype), self.up.to(x.dtype)
        if self.conv:
            h = F.conv2d(F.conv2d(x, down, **self.conv_args), up)
        else:
            h = F.linear(F.linear(x, down), up)
        gate = self.column_gate()
        if gate is not None:
            h = h * (gate.view(1, -1, 1, 1) if self.conv else gate).to(h.dtype)
        return h * self.scale

    @torch.no_grad()
    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(up, down) with mergers and mask folded in, float32: what a file stores."""
        up, down = self.up.detach().float().clone(), self.down.detach().float().clone()
        gate = self.column_gate()
        if gate is not None:
            up = up * gate.detach().float().view(-1, *([1] * (up.dim() - 1)))
        if self.merger_axis == "input":
            down = down * self.merger.detach().float().view(1, -1, *([1] * (down.dim() - 2)))
        return up, down


class Adapted(nn.Module):
    """A frozen base module plus named branches; ``active`` picks which branches apply."""

    def __init__(self, base: nn.Module, contexts: Mapping[str, torch.Tensor]):
        super().__init__()
        self.base = base
        self.branches = nn.ModuleDict()
        self.contexts = contexts  # shared, read-only here: the trainer fills it once
        self.active: Optional[frozenset[str]] = None  # None: every branch

    def forward(self, x, *args, **kwargs):
        y = self.base(x, *args, **kwargs)
        for role, branch in self.branches.items():
            if self.active is not None and role not in self.active:
                continue
            source = self.contexts[branch.context] if branch.context is not None else x
            y = y + branch(source)
        return y


def live_path(model: nn.Module, component: str, path: str) -> str:
    """The module's name inside the live model: transformers 5 flattened ``CLIPTextModel`` (no
    ``text_model.`` level) while files, and our maps, still spell it."""
    if component.startswith("text_encoder") and path.startswith("text_model.") and not hasattr(model, "text_model"):
        return path.removeprefix("text_model.")
    return path


def adapt(models: Mapping[str, nn.Module], names: Iterable[str], *,
          contexts: Optional[dict[str, torch.Tensor]] = None) -> dict[str, Adapted]:
    """Wrap each canonical module name (``<component>.<path>``) once; returns name -> wrapper."""
    contexts = contexts if contexts is not None else {}
    out: dict[str, Adapted] = {}
    for name in names:
        component, _, path = name.partition(".")
        model = models[component]
        parent_path, _, leaf = live_path(model, component, path).rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        base = getattr(parent, leaf) if not leaf.isdigit() else parent[int(leaf)]
        if isinstance(base, Adapted):
            out[name] = base
            continue
        if not isinstance(base, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"{name} is a {type(base).__name__}, not a Linear or Conv2d")
        wrapper = Adapted(base, contexts)
        if leaf.isdigit():
            parent[int(leaf)] = wrapper
        else:
            setattr(parent, leaf, wrapper)
        out[name] = wrapper
    return out


def set_active(wrappers: Iterable[Adapted], roles: Optional[Iterable[str]]) -> None:
    active = None if roles is None else frozenset(roles)
    for w in wrappers:
        w.active = active


def init_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def trainable(wrappers: Mapping[str, Adapted]) -> list[tuple[str, nn.Parameter]]:
    """Every branch parameter as (``<module>:<role>.<down|up|merger>``, parameter), in a fixed order:
    the order optimizer state and checkpoints use."""
    params = []
    for name in sorted(wrappers):
        for role, branch in sorted(wrappers[name].branches.items()):
            for part in ("down", "up", "merger"):
                p = getattr(branch, part)
                if p is not None:
                    params.append((f"{name}:{role}.{part}", p))
    return params


def fan(branch: Branch) -> int:
    return math.prod(branch.down.shape[1:])
