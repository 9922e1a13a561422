"""experts: collapse StyleInject's routed experts into one plain LoRA that any loader reads.

With fixed mixture weights w (``mix``, or the router's softmax(W x + b) at a calibration mean
input x), the experts' update is exact in low rank: delta_W = B sum_i w_i A_i for a shared up
matrix (rank r), or sum_i w_i B_i A_i for per-expert ones (the concatenation, rank n r, cut to
min(in, out) by an exact SVD only when it would exceed it). Branches that are not experts are
copied unchanged.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from pydantic import Field, model_validator

from adapterctl.errors import UsageError
from adapterctl.lowrank import Factored, concat
from adapterctl.ops.methods.base import MergeMethod, MethodParams
from adapterctl.textsafe import clip


class ExpertParams(MethodParams):
    mix: Optional[list[float]] = Field(None, description="one weight per expert")
    calibration: Optional[str] = Field(None, description="safetensors file: module name -> mean router input [d]")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.mix is None) == (self.calibration is None):
            raise ValueError("experts needs exactly one of --mix W1,...,Wn or --calibration FILE")
        return self


class Experts(MergeMethod):
    name = "experts"
    summary = "collapse StyleInject experts into a plain LoRA: B sum(w_i A_i), w from --mix or the router"
    Params = ExpertParams
    inputs = "one"

    def rank(self, ranks, limit, params, planned=None):
        return min(sum(ranks), limit)

    def merge(self, parts, weights, params, module, planned=None):  # pragma: no cover - the driver calls collapse()
        raise NotImplementedError("experts collapses one branch's arrays; see collapse()")

    def mixture(self, arrays: dict[str, np.ndarray], params: ExpertParams, module: str,
                calibration: Optional[dict[str, np.ndarray]]) -> np.ndarray:
        n = arrays["down"].shape[0]
        if params.mix is not None:
            if len(params.mix) != n:
                raise UsageError(f"--mix has {len(params.mix)} weights but '{clip(module, 120)}' has {n} experts")
            return np.asarray(params.mix, dtype=np.float64)
        x = (calibration or {}).get(module)
        if x is None:
            raise UsageError(f"the calibration file has no mean input for '{clip(module, 120)}'",
                             hint="it maps each expert module's canonical name to its mean router input")
        weight, bias = arrays["router_weight"], arrays.get("router_bias")
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if weight.ndim != 2 or weight.shape != (n, x.size):
            raise UsageError(f"calibration input for '{clip(module, 120)}' has {x.size} values; its router "
                             f"expects {weight.shape[-1]}")
        logits = weight @ x + (bias.reshape(-1) if bias is not None else 0.0)
        e = np.exp(logits - logits.max())
        return e / e.sum()

    def collapse(self, arrays: dict[str, np.ndarray], w: np.ndarray, scale: float, limit: int) -> Factored:
        down, up = arrays["down"], arrays["up"]  # [n, r, in...], [out, r] or [n, out, r]
        n, r = down.shape[0], down.shape[1]
        flat = down.reshape(n, r, -1)
        if up.ndim == 2:
            return Factored(up, np.tensordot(w, flat, axes=1), scale)
        parts = [Factored(up[i], flat[i], scale) for i in range(n)]
        total = concat(parts, list(w))
        return total.truncate(limit) if total.rank > limit else total

    @staticmethod
    def output_rank(arrays_shapes: tuple[tuple[int, ...], tuple[int, ...]], limit: int) -> int:
        down, up = arrays_shapes
        return down[1] if len(up) == 2 else min(down[0] * down[1], limit)
