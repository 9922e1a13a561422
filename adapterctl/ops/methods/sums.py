"""cat and linear: the weighted sum, exactly, as one branch of rank r1 + r2 + ... (no cross terms).

peft's ``add_weighted_adapter`` 'linear' mixes A and B separately, which adds cross terms and
needs equal ranks; concatenating the scaled factors is exact for any ranks. The two differ only
in what ``--weights`` defaults to: cat sums (1 each), linear averages (1/N each)."""

from __future__ import annotations

from adapterctl.lowrank import concat
from adapterctl.ops.methods.base import MergeMethod


class Cat(MergeMethod):
    name = "cat"
    summary = "exact weighted sum, sum(w_i dW_i) at rank r1+r2+... (weights default to 1)"

    def merge(self, parts, weights, params, module, planned=None):
        return concat(parts, weights), {}


class Linear(Cat):
    name = "linear"
    summary = "exact weighted average (task arithmetic), as cat with weights defaulting to 1/N"
    default_weight = "mean"
