"""Applying adapters to a loaded pipeline by fusing their updates into the base weights.

Each selected branch adds ``scale · ΔW`` (ΔW = entry scale · up @ down, the update a loader
applies) to its live module's weight, one module at a time: one dense matrix exists at once, and
sampling then runs at the base model's speed with no LoRA layers in the way. The originals of
the touched modules only are kept (on the CPU), so ``restore`` puts them back bit-exactly and
``--grid`` renders every combination from one loaded pipeline.

An adapter is named on the command line as ``FILE[:ROLE[=SCALE]]`` or ``FILE:SCALE``:

- ``blora.safetensors`` every branch, scale 1;
- ``blora.safetensors:style`` the style branches (the manifest's per-block roles), scale 1;
- ``blora.safetensors:style=0.8`` and ``blora.safetensors:0.8`` (every branch at 0.8).

Only the text after the *last* ':' is read, and only when it is a role, ``ROLE=SCALE`` or a
number, so a path holding ':' still works. The scale is linear, ΔW · scale; the reference B-LoRA
inference multiplies both up and down by alpha, so its effective scale is alpha².
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import torch

from adapterctl.errors import UnsupportedConversion, UsageError
from adapterctl.textsafe import clip

ROLES = ("content", "style", "expert", "untagged")
_ROLE_SUFFIX = re.compile(r"^(?P<role>[A-Za-z][A-Za-z0-9_-]*)(?:=(?P<scale>[^/]*))?$")
_COLLAPSE_HINT = "collapse the experts first: adapterctl merge FILE --method experts --mix W1,...,Wn"


@dataclass(frozen=True)
class AdapterSpec:
    path: Path
    role: Optional[str] = None  # None: every branch of the file
    scale: float = 1.0

    @property
    def label(self) -> str:
        """How grids and reports name it: 'stem:role=scale' (role 'all' when none was given)."""
        return f"{self.path.stem}:{self.role or 'all'}={self.scale:g}"


def parse_adapter_spec(text: str) -> AdapterSpec:
    """``FILE``, ``FILE:ROLE``, ``FILE:ROLE=SCALE`` or ``FILE:SCALE``; UsageError (one line) otherwise."""
    text = str(text)
    prefix, sep, suffix = text.rpartition(":")
    role, scale_text = None, None
    if sep and _is_number(suffix):
        scale_text = suffix
    elif sep and (match := _ROLE_SUFFIX.match(suffix)):
        role, scale_text = match["role"], match["scale"]
    else:
        prefix = text  # no role grammar after the last ':': it is part of the path
    if sep and prefix != text and Path(text).exists() and not Path(prefix).exists():
        return AdapterSpec(Path(text))  # a file really named 'x:style' wins over the grammar
    if not prefix:
        raise UsageError(f"--adapter '{clip(text, 200)}' names no file", hint="FILE[:ROLE[=SCALE]]")
    if role is not None and role not in ROLES:
        raise UsageError(f"unknown role '{clip(role, 60)}' in --adapter '{clip(text, 200)}'",
                         hint=f"choose {', '.join(ROLES)}")
    scale = 1.0 if scale_text is None else _scale(scale_text, text)
    return AdapterSpec(Path(prefix), role, scale)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _scale(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"scale '{clip(text, 60)}' in --adapter '{clip(spec, 200)}' is not a number",
                         hint="e.g. FILE:style=0.8") from None
    if not math.isfinite(value):
        raise UsageError(f"scale '{clip(text, 60)}' in --adapter '{clip(spec, 200)}' is not finite")
    return value


@dataclass(frozen=True)
class Planned:
    """One spec checked against the base: which branches of the file it applies."""

    spec: AdapterSpec
    roles: dict[str, int]  # of the selected branches
    modules: int  # branches selected


def plan(arch, specs: Iterable[AdapterSpec]) -> list[Planned]:
    """Check every spec against the base's architecture map before any weight is touched
    (``arch`` None: everything but the architecture, before a base model is even loaded)."""
    import adapterctl

    out = []
    for spec in specs:
        with adapterctl.open(spec.path) as adapter:
            entries = _select(adapter, spec, arch)
            roles: dict[str, int] = {}
            for e in entries:
                roles[e.role or "untagged"] = roles.get(e.role or "untagged", 0) + 1
            out.append(Planned(spec, roles, len(entries)))
    return out


def _select(adapter, spec: AdapterSpec, arch) -> list:
    name = clip(spec.path.name, 120)
    if arch is not None and adapter.arch.name != arch.name:
        raise UsageError(f"{name} is for {adapter.arch.name}, the base model is {arch.name}",
                         hint="pass the base model the adapter was trained on with --base")
    if adapter.read.lycoris:
        raise UnsupportedConversion(f"{name} holds LyCORIS tensors ({', '.join(sorted(adapter.read.lycoris))}); "
                                    "generate applies plain LoRA/LoCon branches")
    entries = [e for e in adapter.manifest.modules
               if spec.role is None or (e.role or "untagged") == spec.role]
    if not entries:
        have = adapter.roles()
        untagged_only = set(have) == {"untagged"}
        raise UsageError(f"{name} has no '{spec.role}' branches (it has "
                         f"{', '.join(f'{role} {n}' for role, n in sorted(have.items()))})",
                         hint="tag it first: adapterctl tag FILE --preset b-lora" if untagged_only else None)
    for e in entries:
        if e.role == "expert":
            raise UnsupportedConversion(f"{name} holds experts ('{clip(e.module, 120)}'): a router picks them per "
                                        "input, so they cannot be fused into the weights", hint=_COLLAPSE_HINT)
        if e.dora:
            raise UnsupportedConversion(f"'{clip(e.module, 120)}' in {name} is DoRA: its magnitude is tied to the "
                                        "base weights, so it is not a fixed ΔW to add")
    return entries


@dataclass
class FuseReport:
    """What ``fuse`` applied, and the originals it needs to undo it. A context manager: leaving
    the ``with`` block restores the base weights."""

    adapters: list[Planned] = field(default_factory=list)
    _saved: dict = field(default_factory=dict, repr=False)  # canonical module -> (live weight, original)

    @property
    def modules_touched(self) -> int:
        return len(self._saved)

    def restore(self) -> None:
        """Put every touched weight back, bit-exactly; idempotent."""
        with torch.no_grad():
            for weight, original in self._saved.values():
                weight.copy_(original)
        self._saved.clear()

    def __enter__(self) -> "FuseReport":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def fuse(pipe, arch, specs: Iterable[AdapterSpec]) -> FuseReport:
    """Add each spec's selected updates to ``pipe``'s live weights. On any failure the weights
    already changed are restored before the error propagates."""
    import adapterctl

    specs = list(specs)
    report = FuseReport(adapters=plan(arch, specs))
    try:
        for spec in specs:
            with adapterctl.open(spec.path) as adapter:
                for entry in _select(adapter, spec, arch):
                    _add(pipe, entry, adapter.branch(entry), spec.scale, report, spec.path.name)
    except BaseException:
        report.restore()
        raise
    return report


def _add(pipe, entry, branch, scale: float, report: FuseReport, file_name: str) -> None:
    weight = _live_weight(pipe, entry.module)
    delta = branch.dense() * scale  # float64, [out, in*kh*kw]; one module's worth
    if delta.size != weight.numel() or delta.shape[0] != weight.shape[0]:
        raise UsageError(f"'{clip(entry.module, 120)}' in {clip(file_name, 120)} is {list(delta.shape)}, the base "
                         f"model's weight is {list(weight.shape)}", hint="is the adapter for another base model?")
    if entry.module not in report._saved:  # the first touch keeps the original; later ones stack on it
        report._saved[entry.module] = (weight, weight.detach().to("cpu", copy=True))
    # float64 where the weight lives on the CPU (exact to the weight's own rounding), float32 on
    # accelerators that lack float64; the sum is cast back to the weight's dtype once.
    work = torch.float64 if weight.device.type == "cpu" else torch.float32
    with torch.no_grad():
        d = torch.from_numpy(delta).to(device=weight.device, dtype=work).reshape(weight.shape)
        weight.copy_((weight.to(work) + d).to(weight.dtype))


def _live_weight(pipe, canonical: str) -> torch.Tensor:
    from adapterctl.torch.layers import live_path

    component, _, path = canonical.partition(".")
    model = getattr(pipe, component, None)
    if model is None:
        raise UsageError(f"the base pipeline has no {clip(component, 40)} for '{clip(canonical, 120)}'")
    try:
        module = model.get_submodule(live_path(model, component, path))
    except AttributeError:
        raise UsageError(f"the base model has no module '{clip(canonical, 120)}'",
                         hint="is the adapter for another base model?") from None
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise UsageError(f"'{clip(canonical, 120)}' in the base model has no weight to fuse into")
    return weight
