"""Every registered operation, in one plain list. Adding an op is one file and one line here."""

from __future__ import annotations

from adapterctl.errors import UsageError
from adapterctl.ops.base import Op
from adapterctl.ops.convert import Convert
from adapterctl.ops.prune import Prune
from adapterctl.ops.split import Split
from adapterctl.ops.tag import Tag

OPS: list[Op] = [Tag(), Split(), Convert(), Prune()]


def get(name: str) -> Op:
    for op in OPS:
        if op.name == name:
            return op
    raise UsageError(f"unknown operation '{name}'", hint=f"known: {', '.join(op.name for op in OPS)}")


def names() -> list[str]:
    return [op.name for op in OPS]
