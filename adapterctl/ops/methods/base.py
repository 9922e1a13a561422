"""One merge method: a name, a typed parameter model, and a per-module merge of factored branches.

The merge driver (ops/merge.py) pairs the inputs' branches by module, works out each part's
weight (``--weights`` times ``--block-weights``), plans the output rank from ``rank``, and calls
``merge`` when the writer reaches the module. Parts arrive unweighted, with their weights beside
them, because some methods weigh after other steps (ties elects signs on the unweighted
updates, as peft does). A method never reads files or writes provenance.

    class Cat(MergeMethod):
        name = "cat"
        summary = "exact weighted sum, rank r1 + r2 + ..."
        def merge(self, parts, weights, params, module, planned=None): return concat(parts, weights), {}
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal, Optional

from adapterctl.lowrank import Factored
from adapterctl.ops.base import Params

Inputs = Literal["many", "pair", "one"]


class MethodParams(Params):
    """Parameters of a method that takes none."""


class MergeMethod(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]  # one line for 'adapterctl merge --list'
    Params: ClassVar[type[MethodParams]] = MethodParams
    inputs: ClassVar[Inputs] = "many"  # pair: a content and a style branch (picked by role); one: experts
    default_weight: ClassVar[Literal["one", "mean"]] = "one"  # what --weights defaults to

    def rank(self, ranks: list[int], limit: int, params: MethodParams, planned: object = None) -> int:
        """The output rank of a module whose parts have ``ranks`` (``limit`` = min(in, out))."""
        return min(sum(ranks), limit)

    def plan(self, parts: list[Factored], weights: list[float], params: MethodParams,
             module: str) -> Optional[tuple[object, dict[str, float]]]:
        """Work done before the output's header is written, when its statistics belong in the
        provenance record (zip's mergers): (state handed to ``merge``, statistics), or None."""
        return None

    @abstractmethod
    def merge(self, parts: list[Factored], weights: list[float], params: MethodParams,
              module: str, planned: object = None) -> tuple[Factored, dict[str, float]]:
        """The merged branch (rank at most ``rank(...)``) and per-module statistics for the report."""


def weighted(part: Factored, weight: float) -> Factored:
    """The same branch with its update multiplied by ``weight``."""
    return Factored(part.up, part.down, part.scale * weight)
