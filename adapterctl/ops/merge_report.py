"""What a merge measured, per module, per block and overall (docs/merge.md explains each number).

For every merged module with parts F_i (each source's weighted update) and output M:
- ``self_error[i]`` = ||(M - F_i) P_i|| / ||F_i||, and the same for the direct merge D = sum F_i;
- ``interference`` = mean_i self_error[i] (for a content/style pair, (e_c + e_s) / 2), and
  ``interference_direct`` for D; their ``ratio`` says how much the method removed;
- ``paired_column_cosine``, ``row_overlap`` and ``column_overlap`` of the sources (mean over pairs);
- the method's own statistics (zip: mergers and losses; svd/ties: retained energy).

Computed branches add themselves when written, so the report is complete once the output is saved.
They are proxies computed from the factors: necessary, not sufficient; no image quality is implied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Optional

import numpy as np

from adapterctl.arch import ArchMap
from adapterctl.lowrank import Factored, concat
from adapterctl.lowrank.subspace import column_basis, overlap, paired_column_cosine, row_basis, self_error
from adapterctl.ops.methods.base import weighted

# Columns shown per block and in --plot, in order.
BLOCK_METRICS = ("interference", "interference_direct", "ratio", "paired_column_cosine", "row_overlap",
                 "column_overlap")


def measure(parts: list[Factored], weights: list[float], merged: Factored) -> dict:
    sources = [weighted(p, w) for p, w in zip(parts, weights)]
    direct = concat(sources)
    rows = [row_basis(s) for s in sources]
    cols = [column_basis(s) for s in sources]
    merged_gram, direct_gram = merged.up.T @ merged.up, direct.up.T @ direct.up
    mine = [self_error(merged, s, q, merged_gram=merged_gram) for s, q in zip(sources, rows)]
    base = [self_error(direct, s, q, merged_gram=direct_gram) for s, q in zip(sources, rows)]
    pairs = list(combinations(range(len(sources)), 2))
    interference, interference_direct = float(np.mean(mine)), float(np.mean(base))
    return {
        "self_error": mine, "self_error_direct": base,
        "interference": interference, "interference_direct": interference_direct,
        "ratio": interference / interference_direct if interference_direct > 0 else math.nan,
        "paired_column_cosine": float(np.mean([paired_column_cosine(sources[i], sources[j]) for i, j in pairs])),
        "row_overlap": float(np.mean([overlap(rows[i], rows[j]) for i, j in pairs])),
        "column_overlap": float(np.mean([overlap(cols[i], cols[j]) for i, j in pairs])),
    }


@dataclass
class MergeReport:
    arch: ArchMap
    method: str
    inputs: list[str]
    measured: bool  # the interference proxies were asked for (they cost a few r x r products per module)
    notes: list[str] = field(default_factory=list)
    copied: int = 0
    by_module: dict[tuple, dict] = field(default_factory=dict)  # (module, role) -> row
    planned: list[dict] = field(default_factory=list)  # statistics known before writing (zip's mergers)

    def planned_summary(self) -> dict[str, float]:
        """Means over modules of what the method found before writing, for the provenance record."""
        if not self.planned:
            return {}
        keys = self.planned[0].keys()
        out = {f"{self.method}_{k}_mean": float(np.mean([p[k] for p in self.planned])) for k in keys}
        out[f"{self.method}_modules"] = len(self.planned)
        return out

    def add(self, module: str, block: Optional[str], stats: dict) -> None:
        self.by_module[(module, None)] = {"module": module, "block": block, **stats}

    def blocks(self) -> list[dict]:
        order = {b: i for i, b in enumerate(self.arch.blocks())}
        per: dict[str, list[dict]] = {}
        for row in self.by_module.values():
            per.setdefault(row["block"] or "?", []).append(row)
        return [_summary(rows, block=b) for b, rows in sorted(per.items(), key=lambda kv: order.get(kv[0], 1 << 30))]

    def to_dict(self) -> dict:
        rows = list(self.by_module.values())
        return {"method": self.method, "inputs": self.inputs, "notes": self.notes,
                "overall": _summary(rows, merged_modules=len(rows), copied_modules=self.copied),
                "blocks": self.blocks(), "modules": rows}


def _summary(rows: list[dict], **extra) -> dict:
    out = dict(extra, modules=len(rows))
    keys = [k for k in (rows[0] if rows else {}) if k not in ("module", "block")
            and isinstance(rows[0][k], (int, float)) and not isinstance(rows[0][k], bool)]
    for key in keys:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        out[key] = float(np.mean(values)) if values else math.nan
    if "interference" in out and out.get("interference_direct"):
        out["ratio"] = out["interference"] / out["interference_direct"]  # of the means, not a mean of ratios
    return out
