"""Weight statistics of an adapter, computed from the LoRA factors, never from a dense delta_W.

The math lives in ``adapterctl.lowrank`` (norms and singular values from the r x r QR core, at
O((out + in) r^2)); this module reads each branch and aggregates per block. The effective rank
is Roy & Vetterli's exp(entropy) of the normalised singular values.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from adapterctl.io.arrays import read_array
from adapterctl.lowrank import Factored, effective_rank

if TYPE_CHECKING:
    from adapterctl.adapter import Adapter
    from adapterctl.format.manifest import ModuleEntry

__all__ = ["ModuleStats", "block_stats", "branch", "effective_rank", "factors", "module_stats"]


@dataclass(frozen=True)
class ModuleStats:
    module: str
    block: str | None
    role: str | None
    norm: float  # ||delta_W||_F including scale
    effective_rank: float
    singular_values: tuple[float, ...]


def branch(adapter: "Adapter", entry: "ModuleEntry") -> Factored:
    """One plain LoRA branch as float64 factors with its scale. Experts are not plain factors."""
    st = adapter.source
    return Factored.of(read_array(st, entry.tensors.up), read_array(st, entry.tensors.down), entry.scale)


def factors(adapter: "Adapter", entry: "ModuleEntry") -> tuple[np.ndarray, np.ndarray]:
    """(B, A) as float64 matrices, scale folded into B."""
    b = branch(adapter, entry)
    return b.up * b.scale, b.down


def module_stats(adapter: "Adapter", entry: "ModuleEntry") -> ModuleStats:
    """Statistics of one branch; NaN (never an exception or a warning) when its factors are not
    finite. Cost: the reader bounds the rank by min(in, out), so the r x r products stay smaller
    than the factors themselves."""
    b = branch(adapter, entry)
    with np.errstate(all="ignore"):
        if not b.is_finite():
            return ModuleStats(entry.module, entry.block, entry.role, math.nan, math.nan, ())
        try:
            sv = b.singular_values()
        except np.linalg.LinAlgError:  # SVD did not converge (overflowing values)
            return ModuleStats(entry.module, entry.block, entry.role, math.nan, math.nan, ())
        norm = b.frobenius_norm()
    return ModuleStats(entry.module, entry.block, entry.role, norm, effective_rank(sv), tuple(float(x) for x in sv))


def block_stats(adapter: "Adapter") -> list[dict]:
    """Per block: Frobenius norm of the block's whole update, and mean/min/max effective rank."""
    per: dict[str, list[ModuleStats]] = defaultdict(list)
    for entry in adapter.manifest.modules:
        if entry.role == "expert":
            continue
        s = module_stats(adapter, entry)
        per[s.block or "?"].append(s)
    order = {blk: i for i, blk in enumerate(adapter.arch.blocks())}
    out = []
    for block in sorted(per, key=lambda b: order.get(b, 1 << 30)):
        items = per[block]
        ranks = [s.effective_rank for s in items]
        norms = [s.norm for s in items]
        with np.errstate(all="ignore"):
            out.append({
                "block": block,
                "modules": len(items),
                "norm": float(np.sqrt(np.sum(np.square(norms)))),
                "max_module_norm": float(np.max(norms)),  # NaN when any module is not finite
                "effective_rank": {"mean": float(np.mean(ranks)), "min": float(np.min(ranks)),
                                   "max": float(np.max(ranks))},
            })
    return out
