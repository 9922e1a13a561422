"""The prune op: smaller adapters with a known error.

- ``rank`` / ``conv_rank``, or ``dynamic`` with ``param``: Eckart-Young truncation of each
  branch's effective update, through the QR core (lowrank/), never a dense matrix. The scale a
  loader applies is kept, so the output's update is exactly the truncated one in every layout.
  Dynamic rules follow kohya's resize_lora: sv_ratio keeps singular values >= s_max / param;
  sv_fro keeps the fewest whose Frobenius share sqrt(sum s_i^2 / sum s^2) reaches param;
  sv_cumulative the fewest whose share of sum s reaches param. ``rank`` then caps the result.
- ``columns`` (a fraction) or ``energy`` (a share of ||delta_W||^2): keep the input features
  (columns of delta_W; input channels of a conv) with the largest norms, zero the rest in ``down``.
- ``keep_blocks`` drops the other blocks; ``scale_blocks`` multiplies blocks' updates (a weight
  goes into alpha, so the factor bytes are copied unchanged; weight 0 drops the branch).

A pruned branch is computed when the writer reaches it, one module at a time (a dynamic rule
reads the singular values once more beforehand, since they decide the rank written in the
header); a branch whose rank would not change is copied byte for byte.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, Optional

import numpy as np
from pydantic import Field, model_validator

from adapterctl.errors import UnsupportedConversion, UsageError
from adapterctl.format.manifest import ModuleEntry
from adapterctl.io.arrays import writable_dtype
from adapterctl.lowrank import Factored, dynamic_rank
from adapterctl.model.origins import Computed, key_of
from adapterctl.ops.base import Op, Params
from adapterctl.ops.block_weights import parse_block_weights
from adapterctl.ops.energy import EnergyReport
from adapterctl.ops.methods.base import weighted
from adapterctl.textsafe import clip

if TYPE_CHECKING:
    from adapterctl.adapter import Adapter

Dynamic = Literal["sv_ratio", "sv_fro", "sv_cumulative"]


class PruneParams(Params):
    rank: Optional[int] = Field(None, ge=1)
    conv_rank: Optional[int] = Field(None, ge=1)
    dynamic: Optional[Dynamic] = None
    param: Optional[float] = Field(None, gt=0)
    columns: Optional[float] = Field(None, gt=0, le=1)
    energy: Optional[float] = Field(None, gt=0, le=1)
    keep_blocks: list[str] = []
    scale_blocks: list[str] = []
    copy_smaller: bool = False  # a branch already at or below the target rank is copied, not an error

    @model_validator(mode="after")
    def _coherent(self):
        if (self.dynamic is None) != (self.param is None):
            raise ValueError("--dynamic and --param go together")
        if self.dynamic == "sv_ratio" and self.param < 1:
            raise ValueError("sv_ratio's --param is a ratio s_max / s_min, at least 1")
        if self.dynamic in ("sv_fro", "sv_cumulative") and self.param > 1:
            raise ValueError(f"{self.dynamic}'s --param is a share, at most 1")
        if self.columns is not None and self.energy is not None:
            raise ValueError("--columns and --energy are exclusive")
        if not (self.rank or self.conv_rank or self.dynamic or self.columns or self.energy
                or self.keep_blocks or self.scale_blocks):
            raise ValueError("nothing to prune: pass --rank, --dynamic, --columns, --energy, --keep-blocks "
                             "or --scale-blocks")
        return self

    @property
    def reshapes(self) -> bool:
        return bool(self.rank or self.conv_rank or self.dynamic or self.columns or self.energy)


class Prune(Op):
    name = "prune"
    Params = PruneParams

    def apply(self, adapter: "Adapter", params: PruneParams) -> dict:
        if adapter.read.lycoris:
            _refuse_unprunable(adapter, [])
        entries, folded = _kept(adapter, params)

        def read(entry: ModuleEntry) -> Factored:
            branch = adapter.branch(entry)
            weight = folded.get(key_of(entry))
            return weighted(branch, weight) if weight is not None else branch

        if not params.reshapes:
            # A block weight that the layout cannot carry in an alpha is folded into the factors.
            origins = {key_of(e): Computed((lambda e=e: read(e)), *_tails(adapter, e))
                       for e in entries if key_of(e) in folded}
            return {"modules": [_resized(e, e.rank, adapter.layout) if key_of(e) in folded else e for e in entries],
                    "origins": origins}
        _refuse_unprunable(adapter, entries)
        report = EnergyReport(adapter.arch)
        out: list[ModuleEntry] = []
        origins = {}
        for entry in entries:
            tails = _tails(adapter, entry)
            if params.dynamic:  # the singular values decide the rank, so they are needed now
                branch = read(entry)
                k = _target_rank(entry, _columns(branch, tails, params).singular_values(), params)
            else:  # a fixed rank: nothing is read until the branch is written
                k = _target_rank(entry, None, params)
            if k == entry.rank and params.columns is None and params.energy is None and key_of(entry) not in folded:
                # Nothing changes: copied byte for byte, and counted whole.
                norm = read(entry).frobenius_norm() ** 2
                report.add(entry, rank_in=entry.rank, rank_out=k, total=norm, retained=norm)
                out.append(entry)
                continue
            new = _resized(entry, k, adapter.layout)
            origins[key_of(new)] = Computed(_producer(read, entry, params, k, tails, report), *tails)
            out.append(new)
        return {"modules": out, "origins": origins, "report": report, "metadata": _kohya_metadata(adapter, out, params)}

    def record(self, adapter: "Adapter", params: PruneParams) -> dict:
        return {k: v for k, v in params.model_dump().items() if v not in (None, [], False)}


def _kohya_metadata(adapter: "Adapter", entries: list[ModuleEntry], params: PruneParams) -> dict[str, str]:
    """sd-scripts' ss_network_dim / ss_network_alpha describe the ranks; a resize that left them
    would misreport the file (kohya's resize_lora rewrites them the same way)."""
    meta = dict(adapter.metadata)
    ranks = {e.rank for e in entries if e.kind == "linear"}
    alphas = {e.alpha for e in entries if e.kind == "linear"}
    for key, values in (("ss_network_dim", ranks), ("ss_network_alpha", alphas)):
        if key in meta:
            meta[key] = str(next(iter(values))) if len(values) == 1 and not params.dynamic else "Dynamic"
    return meta


def _kept(adapter: "Adapter", params: PruneParams) -> tuple[list[ModuleEntry], dict]:
    """The branches kept, block weights applied: into alpha where the output can say so (the
    writable layouts, or a stored alpha tensor), else returned as weights to fold into ``up``."""
    from adapterctl.layouts.registry import writable

    entries = list(adapter.manifest.modules)
    if params.keep_blocks:
        from adapterctl.ops.split import select_entries

        entries = select_entries(adapter, keep=[], drop=[], keep_blocks=params.keep_blocks)
    folded: dict = {}
    for spec in params.scale_blocks:
        weights = parse_block_weights(adapter.arch, spec, flag="--scale-blocks")
        scaled = []
        for e in entries:
            w = weights.weight(adapter.arch, e.module)
            if w == 0:
                continue
            if w != 1 and adapter.layout not in writable() and e.tensors.alpha is None:
                folded[key_of(e)] = folded.get(key_of(e), 1.0) * w
            elif w != 1:
                e = e.model_copy(update={"alpha": e.alpha * w, "scale": e.scale * w})
            scaled.append(e)
        entries = scaled
    if not entries:
        raise UsageError("the selection keeps no branches")
    if folded:
        _refuse_unprunable(adapter, [e for e in entries if key_of(e) in folded])
    return entries, folded


def _refuse_unprunable(adapter: "Adapter", entries: list[ModuleEntry]) -> None:
    if adapter.read.lycoris:
        raise UnsupportedConversion(f"LyCORIS tensors ({', '.join(sorted(adapter.read.lycoris))}) are not plain "
                                    "LoRA factors; prune reads only LoRA/LoCon")
    for e in entries:
        if e.role == "expert":
            raise UnsupportedConversion(f"'{clip(e.module, 120)}' holds experts; prune works on plain branches",
                                        hint="collapse them first: adapterctl merge FILE --method experts --mix ...")
        if e.dora:
            raise UnsupportedConversion(f"'{clip(e.module, 120)}' is DoRA: its magnitude is tied to the update's "
                                        "column norms, so a truncated update would change more than its rank")


def _target_rank(entry: ModuleEntry, sv: Optional[np.ndarray], params: PruneParams) -> int:
    cap = params.conv_rank if entry.kind == "conv" and params.conv_rank else params.rank
    if params.dynamic:
        k = dynamic_rank(sv, params.dynamic, params.param)
        return max(1, min(k, cap or k, entry.rank))
    if cap is None:
        return entry.rank  # columns/energy only
    if cap > entry.rank and not params.copy_smaller:
        flag = "--conv-rank" if entry.kind == "conv" and params.conv_rank else "--rank"
        raise UsageError(f"{flag} {cap} is larger than the rank {entry.rank} of '{clip(entry.module, 120)}'; "
                         "nothing to truncate", hint="pass --copy-smaller to copy such branches unchanged")
    return min(cap, entry.rank)


def _columns(branch: Factored, tails, params: PruneParams) -> Factored:
    """The branch with only its strongest input features (ΔW columns) kept; itself when not asked."""
    if params.columns is None and params.energy is None:
        return branch
    gram = branch.up.T @ branch.up  # [r, r]: ||up @ down[:, j]||^2 = down[:, j]^T gram down[:, j]
    norms2 = np.sum((gram @ branch.down) * branch.down, axis=0) * branch.scale ** 2
    # A conv's down is [r, in, kh, kw], flattened to [r, in*kh*kw]: an input channel's kh*kw
    # columns are one feature, kept or dropped together.
    groups = tails[1][0]
    per_feature = norms2.reshape(groups, -1).sum(axis=1)
    order = np.argsort(per_feature)[::-1]
    if params.columns is not None:
        keep = max(1, math.ceil(params.columns * groups))
    else:
        share = np.cumsum(per_feature[order]) / max(float(per_feature.sum()), np.finfo(float).tiny)
        keep = int(np.searchsorted(share, params.energy - 1e-12) + 1)
    mask = np.zeros(groups, dtype=bool)
    mask[order[:min(keep, groups)]] = True
    down = branch.down * np.repeat(mask, branch.down.shape[1] // groups)[None, :]
    return Factored(branch.up, down, branch.scale)


def _resized(entry: ModuleEntry, k: int, layout: str) -> ModuleEntry:
    """The entry for a computed branch of rank k that a loader applies with the same scale. A
    read-only layout (old diffusers) gets no new scale metadata, so its scale goes into the factors."""
    from adapterctl.layouts.registry import writable

    if layout not in writable():
        return entry.model_copy(update={"rank": k, "alpha": float(k), "scale": 1.0, "rslora": False,
                                        "dtype": writable_dtype(entry.dtype), "alpha_dtype": None, "dora": False,
                                        "tensors": entry.tensors.model_copy(update={"alpha": None})})
    alpha = entry.scale * (math.sqrt(k) if entry.rslora else k)
    return entry.model_copy(update={"rank": k, "alpha": alpha, "dtype": writable_dtype(entry.dtype),
                                    "alpha_dtype": entry.alpha_dtype, "dora": False})


def _tails(adapter: "Adapter", entry: ModuleEntry) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """The stored factor shapes: up's rows, and after the rank axis (in,) or (in, kh, kw), () or (1, 1)."""
    origin = adapter.origin(entry)
    if isinstance(origin, Computed):
        return origin.out_features, origin.down_tail, origin.up_tail
    src = adapter.input_adapters()[origin.index]
    down = src.source.tensors[entry.tensors.down].shape
    up = src.source.tensors[entry.tensors.up].shape
    return up[0], tuple(down[1:]), tuple(up[2:])


def _producer(read, entry: ModuleEntry, params: PruneParams, k: int, tails, report: EnergyReport):
    """Computes the branch when the writer reaches it, and records what it kept."""
    def produce() -> Factored:
        branch = read(entry)
        kept = _columns(branch, tails, params)
        out, sv = kept.truncated(k)
        total = float(np.sum(sv ** 2)) if kept is branch else branch.frobenius_norm() ** 2
        report.add(entry, rank_in=entry.rank, rank_out=k, total=total, retained=float(np.sum(sv[:k] ** 2)))
        return out
    return produce
