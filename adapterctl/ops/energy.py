"""What a prune kept: Frobenius energy per module, per block and overall.

Branches that are computed add themselves when they are written, so the report of a prune is
complete once its output is saved (each module is read once, not once to plan and once to write).

retained = ||delta_W'||^2 / ||delta_W||^2, and the relative error ||delta_W - delta_W'|| / ||delta_W||.
For a truncation (with or without column pruning) the two are tied, error^2 = 1 - retained,
because what is dropped is orthogonal to what is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from adapterctl.arch import ArchMap
from adapterctl.format.manifest import ModuleEntry


@dataclass
class ModuleEnergy:
    module: str
    block: str | None
    role: str | None
    rank_in: int
    rank_out: int
    total: float  # ||delta_W||_F^2
    retained: float  # ||delta_W'||_F^2

    @property
    def share(self) -> float:
        return self.retained / self.total if self.total > 0 else 1.0

    @property
    def error(self) -> float:
        return math.sqrt(max(self.total - self.retained, 0.0) / self.total) if self.total > 0 else 0.0


@dataclass
class EnergyReport:
    arch: ArchMap
    by_branch: dict[tuple, ModuleEnergy] = field(default_factory=dict)  # (module, role) -> energy

    @property
    def modules(self) -> list[ModuleEnergy]:
        return list(self.by_branch.values())

    def add(self, entry: ModuleEntry, *, rank_in: int, rank_out: int, total: float, retained: float) -> None:
        self.by_branch[(entry.module, entry.role)] = ModuleEnergy(entry.module, entry.block, entry.role, rank_in,
                                                                  rank_out, total, retained)

    def blocks(self) -> list[dict]:
        order = {b: i for i, b in enumerate(self.arch.blocks())}
        per: dict[str, list[ModuleEnergy]] = {}
        for m in self.modules:
            per.setdefault(m.block or "?", []).append(m)
        return [_summary(items, block=b) for b, items in sorted(per.items(), key=lambda kv: order.get(kv[0], 1 << 30))]

    def overall(self) -> dict:
        return _summary(self.modules)

    def to_dict(self) -> dict:
        return {"overall": self.overall(), "blocks": self.blocks(),
                "modules": [{"module": m.module, "block": m.block, "role": m.role, "rank_in": m.rank_in,
                             "rank_out": m.rank_out, "retained_energy": m.share, "relative_error": m.error}
                            for m in self.modules]}


def _summary(items: list[ModuleEnergy], **extra) -> dict:
    total = sum(m.total for m in items)
    retained = sum(m.retained for m in items)
    share = retained / total if total > 0 else 1.0
    return {**extra, "modules": len(items), "rank_in": sum(m.rank_in for m in items),
            "rank_out": sum(m.rank_out for m in items), "retained_energy": share,
            "relative_error": math.sqrt(max(1.0 - share, 0.0))}
