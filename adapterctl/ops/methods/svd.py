"""svd: the exact weighted sum, then its optimal rank-k approximation.

The sum is the concatenation of the scaled factors (rank R = r1 + r2 + ...); its SVD comes from
the R x R core of the factors' Gram roots (lowrank/factored.py), so cost is O((out + in) R^2) and
no dense matrix exists. peft's '*_svd' combination types and kohya's svd_merge_lora build the
dense update and run a full SVD instead. At rank >= R this is the sum itself."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from adapterctl.lowrank import concat
from adapterctl.ops.methods.base import MergeMethod, MethodParams


class RankParams(MethodParams):
    rank: Optional[int] = Field(None, ge=1, description="output rank (default: the largest input rank)")


class Svd(MergeMethod):
    name = "svd"
    summary = "weighted sum compressed to --rank N by exact low-rank SVD (default: the largest input rank)"
    Params = RankParams

    def rank(self, ranks, limit, params):
        return min(params.rank or max(ranks), sum(ranks), limit)

    def merge(self, parts, weights, params, module, planned=None):
        total = concat(parts, weights)
        out, sv = total.truncated(self.rank([p.rank for p in parts], min(total.shape), params))
        kept = float((sv[:out.rank] ** 2).sum())
        whole = float((sv ** 2).sum())
        return out, {"retained_energy": kept / whole if whole > 0 else 1.0}
