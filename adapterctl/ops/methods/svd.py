"""svd: the exact weighted sum, then its optimal rank-k approximation.

The sum is the concatenation of the scaled factors (rank R = r1 + r2 + ...); its SVD comes from
the R x R core of the factors' Gram roots (lowrank/factored.py), so cost is O((out + in) R^2) and
no dense matrix exists. peft's '*_svd' combination types and kohya's svd_merge_lora build the
dense update and run a full SVD instead. At rank >= R this is the sum itself."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from adapterctl.lowrank import concat, dynamic_rank
from adapterctl.ops.methods.base import MergeMethod, MethodParams


class SvdParams(MethodParams):
    rank: Optional[int] = Field(None, ge=1, description="output rank (default: the largest input rank); "
                                                        "the cap, with dynamic")
    dynamic: Optional[Literal["sv_ratio", "sv_fro", "sv_cumulative"]] = Field(
        None, description="choose each module's rank from the sum's singular values (prune's rules)")
    param: Optional[float] = Field(None, gt=0, description="the dynamic rule's parameter")

    @model_validator(mode="after")
    def _coherent(self):
        if (self.dynamic is None) != (self.param is None):
            raise ValueError("--dynamic and --param go together")
        return self


class Svd(MergeMethod):
    name = "svd"
    summary = "weighted sum compressed to --rank N (or --dynamic) by exact low-rank SVD (default: the largest input rank)"
    Params = SvdParams

    def plan(self, parts, weights, params, module):
        """With a dynamic rule the rank depends on the sum's singular values, and the header
        (written first) holds the rank: so they are computed here, from the r x r core."""
        if params.dynamic is None:
            return None
        k = dynamic_rank(concat(parts, weights).singular_values(), params.dynamic, params.param)
        k = min(k, params.rank) if params.rank else k
        return k, {"rank": float(k)}

    def rank(self, ranks, limit, params, planned=None):
        if planned is not None:
            return min(planned, limit)
        return min(params.rank or max(ranks), sum(ranks), limit)

    def merge(self, parts, weights, params, module, planned=None):
        total = concat(parts, weights)
        out, sv = total.truncated(self.rank([p.rank for p in parts], min(total.shape), params, planned))
        kept = float((sv[:out.rank] ** 2).sum())
        whole = float((sv ** 2).sum())
        return out, {"retained_energy": kept / whole if whole > 0 else 1.0}
