"""ties, dare and dare_ties: merges that act on the entries of the update, so they need it dense.

Each module's dense updates are built, merged, and cut back to ``--rank`` by SVD, one module at
a time: memory is bounded by the largest module. The entry-wise steps follow peft's merge_utils
(0.21), so results can be compared with ``add_weighted_adapter``'s '*_svd' types:

- ties: keep each update's top ``density`` share of entries by magnitude; elect each entry's
  sign from the sum of the trimmed updates; average the weighted entries that agree with it;
- dare: drop entries at random (keep probability ``density``), rescale by 1/density, weighted sum;
- dare_ties: dare's random drop, then ties' sign election and disjoint average.

The random masks are seeded per module from ``--seed`` and the module's name, so a run repeats
exactly whatever order modules are written in. peft draws its masks from torch's global RNG, so
dare outputs agree with peft's only in distribution, not entry by entry (docs/merge.md).
"""

from __future__ import annotations

import zlib
from typing import Optional

import numpy as np
from pydantic import Field

from adapterctl.lowrank import Factored
from adapterctl.ops.methods.base import MergeMethod, MethodParams


class DenseParams(MethodParams):
    rank: Optional[int] = Field(None, ge=1, description="output rank (default: the largest input rank)")
    density: float = Field(0.5, gt=0, le=1, description="share of entries kept")
    seed: int = Field(0, ge=0, description="seed of the random masks (dare)")


class _Dense(MergeMethod):
    Params = DenseParams
    trim: str  # "magnitude" | "random"
    elect: bool

    def rank(self, ranks, limit, params, planned=None):
        return min(params.rank or max(ranks), limit)

    def merge(self, parts, weights, params, module, planned=None):
        rng = np.random.default_rng([params.seed, zlib.crc32(module.encode("utf-8", "surrogatepass"))])
        tasks = np.stack([self._trimmed(p.dense(), params.density, rng) for p in parts])
        w = np.asarray(weights, dtype=np.float64).reshape(-1, 1, 1)
        if self.elect:
            majority = np.where(tasks.sum(axis=0) >= 0, 1.0, -1.0)
            agree = np.sign(tasks) == majority
            merged = (tasks * w * agree).sum(axis=0) / np.maximum(agree.sum(axis=0), 1)
        else:
            merged = (tasks * w).sum(axis=0)
        del tasks
        k = self.rank([p.rank for p in parts], min(merged.shape), params)
        u, s, vt = np.linalg.svd(merged, full_matrices=False)
        whole = float((s ** 2).sum())
        root = np.sqrt(s[:k])
        return Factored(u[:, :k] * root, root[:, None] * vt[:k], 1.0), \
            {"retained_energy": float((s[:k] ** 2).sum()) / whole if whole > 0 else 1.0}

    def _trimmed(self, task: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
        if density >= 1:
            return task
        if self.trim == "magnitude":
            k = int(density * task.size)  # peft: top int(density * numel) entries by |value|
            flat = task.reshape(-1)
            keep = np.zeros(flat.size, dtype=bool)
            if k > 0:
                keep[np.argpartition(np.abs(flat), flat.size - k)[flat.size - k:]] = True
            return (flat * keep).reshape(task.shape)
        return task * (rng.random(task.shape) < density) / density


class Ties(_Dense):
    name = "ties"
    summary = "TIES (trim by magnitude, elect signs, disjoint mean) on dense updates, then SVD to --rank"
    trim, elect = "magnitude", True


class Dare(_Dense):
    name = "dare"
    summary = "DARE (random drop and rescale, weighted sum) on dense updates, then SVD to --rank; seeded"
    trim, elect = "random", False


class DareTies(_Dense):
    name = "dare_ties"
    summary = "DARE's random drop with TIES' sign election, then SVD to --rank; seeded"
    trim, elect = "random", True
