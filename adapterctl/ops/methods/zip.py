"""zip: data-free ZipLoRA, per module (the math and its caveats: lowrank/ziplora.py)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from adapterctl.lowrank.ziplora import find_mergers, fold
from adapterctl.ops.methods.base import MergeMethod, MethodParams, weighted


class ZipParams(MethodParams):
    axis: Literal["input", "output"] = Field("input", description="what the mergers scale: ΔW columns or rows")
    lam: float = Field(0.01, ge=0, description="weight of the merger-overlap penalty")
    steps: int = Field(8, ge=1, le=1000, description="most conjugate-gradient steps per module")


class Zip(MergeMethod):
    name = "zip"
    summary = "data-free ZipLoRA: per-module merger vectors folded into a rank r_c+r_s LoRA (content + style)"
    Params = ZipParams
    inputs = "pair"

    def plan(self, parts, weights, params, module):
        """The mergers are found before the header is written, so their statistics can go into
        the provenance record; only the vectors are kept (2 x in floats per module)."""
        content, style = (weighted(p, w) for p, w in zip(parts, weights))
        m = find_mergers(content, style, axis=params.axis, lam=params.lam, steps=params.steps)
        return m, {
            "steps": float(m.steps), "loss_start": m.loss_start, "loss_end": m.loss_end,
            "merger_content_mean": float(np.mean(m.m_content)), "merger_style_mean": float(np.mean(m.m_style)),
            "merger_overlap": float(np.mean(np.abs(m.m_content * m.m_style))),
        }

    def merge(self, parts, weights, params, module, planned=None):
        content, style = (weighted(p, w) for p, w in zip(parts, weights))
        m = planned if planned is not None else self.plan(parts, weights, params, module)[0]
        return fold(content, style, m.m_content, m.m_style, params.axis), {}
