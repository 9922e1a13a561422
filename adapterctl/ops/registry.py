"""Every registered operation and merge method, in plain lists. Adding one is one file and one line here."""

from __future__ import annotations

from adapterctl.errors import UsageError
from adapterctl.ops.base import Op
from adapterctl.ops.convert import Convert
from adapterctl.ops.prune import Prune
from adapterctl.ops.split import Split
from adapterctl.ops.methods.base import MergeMethod
from adapterctl.ops.methods.experts import Experts
from adapterctl.ops.methods.np_lora import NullSpace
from adapterctl.ops.methods.sums import Cat, Linear
from adapterctl.ops.methods.svd import Svd
from adapterctl.ops.methods.ties import Dare, DareTies, Ties
from adapterctl.ops.methods.zip import Zip
from adapterctl.ops.tag import Tag

OPS: list[Op] = [Tag(), Split(), Convert(), Prune()]
METHODS: list[MergeMethod] = [Zip(), NullSpace(), Cat(), Linear(), Svd(), Ties(), Dare(), DareTies(), Experts()]


def method(name: str) -> MergeMethod:
    for m in METHODS:
        if m.name == name:
            return m
    raise UsageError(f"unknown merge method '{name}'", hint=f"known: {', '.join(m.name for m in METHODS)}")


def get(name: str) -> Op:
    for op in OPS:
        if op.name == name:
            return op
    raise UsageError(f"unknown operation '{name}'", hint=f"known: {', '.join(op.name for op in OPS)}")


def names() -> list[str]:
    return [op.name for op in OPS]
