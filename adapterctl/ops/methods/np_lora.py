"""np: NP-LoRA's closed-form null-space projection (data-free).

One update is projected off the other's input subspace, softly:
delta_W_m = delta_W_keep + delta_W_proj (I - mu/(1+mu) V V^T), V an orthonormal basis of the row
space of the kept source's ``down``. By default the content update is projected off the style's
subspace (the paper's form); ``project="style"`` does the reverse. The projection folds exactly
into the projected source's ``down``, so the output is a rank r_c + r_s LoRA."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from adapterctl.lowrank import Factored, concat
from adapterctl.lowrank.subspace import row_basis
from adapterctl.ops.methods.base import MergeMethod, MethodParams, weighted


class NpParams(MethodParams):
    mu: float = Field(0.5, ge=0, description="projection strength; mu/(1+mu) of the shared directions is removed")
    project: Literal["content", "style"] = Field("content", description="which update is projected")


class NullSpace(MergeMethod):
    name = "np"
    summary = "NP-LoRA: project one update off the other's input subspace (closed form, rank r_c+r_s)"
    Params = NpParams
    inputs = "pair"

    def merge(self, parts, weights, params, module, planned=None):
        content, style = (weighted(p, w) for p, w in zip(parts, weights))
        moved, kept = (content, style) if params.project == "content" else (style, content)
        v = row_basis(kept)
        shrink = params.mu / (1.0 + params.mu)
        projected = Factored(moved.up, moved.down - shrink * (moved.down @ v) @ v.T, moved.scale)
        pair = (projected, kept) if params.project == "content" else (kept, projected)
        return concat(pair), {"projected_share": float(projected.frobenius_norm() / max(moved.frobenius_norm(), 1e-300))}
