"""zip: data-free ZipLoRA, per module (the math and its caveats: lowrank/ziplora.py)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from adapterctl.lowrank.ziplora import zip_merge
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

    def merge(self, parts, weights, params, module):
        content, style = (weighted(p, w) for p, w in zip(parts, weights))
        out = zip_merge(content, style, axis=params.axis, lam=params.lam, steps=params.steps)
        return out.merged, {
            "steps": float(out.steps), "loss_start": out.loss_start, "loss_end": out.loss_end,
            "merger_content_mean": float(np.mean(out.m_content)), "merger_style_mean": float(np.mean(out.m_style)),
            "merger_overlap": float(np.mean(np.abs(out.m_content * out.m_style))),
        }
