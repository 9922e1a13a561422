"""zip: ZipLoRA per module: data-free (the math and its caveats: lowrank/ziplora.py), or with
mergers calibrated on images through a base model (adapterctl/torch/zip_calibrate.py)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from adapterctl.lowrank.ziplora import Mergers, find_mergers, fold
from adapterctl.ops.methods.base import MergeMethod, MethodParams, weighted


class ZipParams(MethodParams):
    axis: Literal["input", "output"] = Field("input", description="what the mergers scale: ΔW columns or rows")
    lam: float = Field(0.01, ge=0, description="weight of the merger-overlap penalty")
    steps: int = Field(8, ge=1, le=1000, description="most conjugate-gradient steps per module")


class CalibratedZipParams(ZipParams):
    """ZipParams plus mergers found beforehand on images (``adapterctl.torch.zip_calibrate``):
    module -> (m_content, m_style), sized as ``fold`` takes them. Set by the merge driver when it
    is given a base model; not an option of its own, and left out of the provenance record (the
    driver records the calibration's statistics instead)."""

    mergers: Any = Field(default=None, exclude=True)


class Zip(MergeMethod):
    name = "zip"
    # (docs/user-guide.md shows this line in a replayed session: change both together)
    summary = "data-free ZipLoRA: per-module merger vectors folded into a rank r_c+r_s LoRA (content + style)"
    Params = ZipParams
    inputs = "pair"

    def plan(self, parts, weights, params, module):
        """The mergers are found before the header is written, so their statistics can go into
        the provenance record; only the vectors are kept (2 x in floats per module). Calibrated
        mergers, when the params carry them, replace the data-free search."""
        content, style = (weighted(p, w) for p, w in zip(parts, weights))
        calibrated = getattr(params, "mergers", None)
        if calibrated is not None:
            found = calibrated.get(module)
            if found is None:  # not calibrated (the driver calibrates every shared module): data-free
                m = find_mergers(content, style, axis=params.axis, lam=params.lam, steps=params.steps)
            else:
                m = Mergers(np.asarray(found[0], np.float64), np.asarray(found[1], np.float64), 0,
                            float("nan"), float("nan"))
            return m, _merger_stats(m)
        m = find_mergers(content, style, axis=params.axis, lam=params.lam, steps=params.steps)
        return m, {"steps": float(m.steps), "loss_start": m.loss_start, "loss_end": m.loss_end, **_merger_stats(m)}

    def merge(self, parts, weights, params, module, planned=None):
        content, style = (weighted(p, w) for p, w in zip(parts, weights))
        m = planned if planned is not None else self.plan(parts, weights, params, module)[0]
        return fold(content, style, m.m_content, m.m_style, params.axis), {}


def _merger_stats(m: Mergers) -> dict[str, float]:
    return {"merger_content_mean": float(np.mean(m.m_content)), "merger_style_mean": float(np.mean(m.m_style)),
            "merger_overlap": float(np.mean(np.abs(m.m_content * m.m_style)))}
