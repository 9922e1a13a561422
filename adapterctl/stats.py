"""Weight statistics computed from the LoRA factors, never from a dense delta_W.

For delta_W = s * B @ A with B [out, r] and A [r, in]:
- ||delta_W||_F^2 = s^2 * tr((B^T B)(A A^T)), an r x r product;
- singular values come from the r x r core R_B R_A^T of the QR factorisations B = Q_B R_B and
  A^T = Q_A R_A, so the cost is O((out + in) r^2), not O(out * in * r).
The effective rank is Roy & Vetterli's exp(entropy) of the normalised singular values.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from adapterctl.io.arrays import as_matrix, read_array

if TYPE_CHECKING:
    from adapterctl.adapter import Adapter
    from adapterctl.format.manifest import ModuleEntry


@dataclass(frozen=True)
class ModuleStats:
    module: str
    block: str | None
    role: str | None
    norm: float  # ||delta_W||_F including scale
    effective_rank: float
    singular_values: tuple[float, ...]


def factors(adapter: "Adapter", entry: "ModuleEntry") -> tuple[np.ndarray, np.ndarray]:
    """(B, A) as float64 matrices, scale folded into B. Experts are not plain factors."""
    st = adapter.source
    up = as_matrix(read_array(st, entry.tensors.up))
    down = as_matrix(read_array(st, entry.tensors.down))
    return up * entry.scale, down


def singular_values(b: np.ndarray, a: np.ndarray) -> np.ndarray:
    _, rb = np.linalg.qr(b)
    _, ra = np.linalg.qr(a.T)
    return np.linalg.svd(rb @ ra.T, compute_uv=False)


def effective_rank(sv: np.ndarray) -> float:
    total = float(sv.sum())
    if total <= 0 or not np.isfinite(total):
        return 0.0
    p = sv[sv > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def module_stats(adapter: "Adapter", entry: "ModuleEntry") -> ModuleStats:
    """Statistics of one branch; NaN (never an exception or a warning) when its factors are not
    finite. Cost: the reader bounds the rank by min(in, out), so the r x r products stay smaller
    than the factors themselves."""
    b, a = factors(adapter, entry)
    with np.errstate(all="ignore"):
        if not (np.isfinite(b).all() and np.isfinite(a).all()):
            return ModuleStats(entry.module, entry.block, entry.role, math.nan, math.nan, ())
        try:
            sv = singular_values(b, a)
        except np.linalg.LinAlgError:  # SVD did not converge (overflowing values)
            return ModuleStats(entry.module, entry.block, entry.role, math.nan, math.nan, ())
        norm = float(np.sqrt(max(np.trace((b.T @ b) @ (a @ a.T)), 0.0)))
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
