"""Operations as small registered units: a name, a typed parameter model, and an apply function.

An op never builds its own provenance record and never touches the manifest's validation: it
returns the manifest fields it changes, and ``run`` validates the parameters (bad values are a
UsageError, exit 2), records the ``Operation`` from them, and derives the new adapter through
``Adapter._derive``, which validates the result like a manifest read from a file.

    class Split(Op):
        name = "split"
        Params = SplitParams
        def apply(self, adapter, params): return {"modules": ...}

The registry is a plain list (``ops/registry.py``); ``adapterctl.ops.registry.get(name)`` finds one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from adapterctl.errors import UsageError

if TYPE_CHECKING:
    from adapterctl.adapter import Adapter


class Params(BaseModel):
    """Base for op parameters: strict about unknown names, so a typo is an error, not a no-op."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Op(ABC):
    name: ClassVar[str]
    Params: ClassVar[type[Params]]

    @abstractmethod
    def apply(self, adapter: "Adapter", params: Params) -> dict[str, Any]:
        """The manifest fields this op changes (``modules``, ``layout``, ``preset``...), plus, for
        ops that compute, ``origins`` (branch key -> model.origins.Computed) and ``report``."""

    def record(self, adapter: "Adapter", params: Params) -> dict[str, Any]:
        """Arguments for the provenance record: the validated parameters, plus what an op adds."""
        return params.model_dump()


def run(op: Op, adapter: "Adapter", **kwargs) -> "Adapter":
    try:
        params = op.Params(**kwargs)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        raise UsageError(f"{op.name}: bad parameter '{where}': {err.get('msg')}") from None
    changes = op.apply(adapter, params)
    return adapter._derive(op.name, op.record(adapter, params), **changes)
