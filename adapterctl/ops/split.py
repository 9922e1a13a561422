"""The split op: keep only some branches, by role and/or by block selector."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapterctl.errors import UsageError
from adapterctl.format.constants import ROLES
from adapterctl.format.manifest import ModuleEntry
from adapterctl.ops.base import Op, Params

if TYPE_CHECKING:
    from adapterctl.adapter import Adapter

_ROLE_WORDS = ROLES + ("untagged",)


class SplitParams(Params):
    keep: list[str] = []  # roles to keep ('untagged' allowed)
    drop: list[str] = []  # roles to drop
    keep_blocks: list[str] = []  # block/module selectors


class Split(Op):
    name = "split"
    Params = SplitParams

    def apply(self, adapter: "Adapter", params: SplitParams) -> dict:
        return {"modules": select_entries(adapter, keep=params.keep, drop=params.drop,
                                          keep_blocks=params.keep_blocks)}


def select_entries(adapter: "Adapter", *, keep: list[str], drop: list[str], keep_blocks: list[str]) -> list[ModuleEntry]:
    if not (keep or drop or keep_blocks):
        raise UsageError("nothing selected", hint="pass --keep ROLE, --drop ROLE or --keep-blocks SELECTOR")
    if keep and drop:
        raise UsageError("--keep and --drop are exclusive")
    for word in keep + drop:
        if word not in _ROLE_WORDS:
            raise UsageError(f"unknown role '{word}'", hint=f"roles: {', '.join(_ROLE_WORDS)}")
    entries = adapter.manifest.modules
    roles_present = {e.role or "untagged" for e in entries}
    asked = set(keep + drop) - {"untagged"}
    if asked and roles_present == {"untagged"}:
        raise UsageError("this adapter has no roles to split by",
                         hint=f"tag it first: adapterctl tag {adapter.path} --role style=BLOCK "
                              "(or --preset NAME)")
    chosen = entries
    if keep:
        chosen = [e for e in chosen if (e.role or "untagged") in keep]
    if drop:
        chosen = [e for e in chosen if (e.role or "untagged") not in drop]
    if keep_blocks:
        allowed: set[str] = set()
        for selector in keep_blocks:
            names = adapter.arch.resolve_selector(selector)
            if not names:
                raise UsageError(f"block selector '{selector}' matches nothing in {adapter.arch.name}",
                                 hint="see block ids with: adapterctl inspect FILE")
            allowed.update(names)
        chosen = [e for e in chosen if e.module in allowed]
    if not chosen:
        raise UsageError("the selection keeps no tensors", hint=f"roles here: {', '.join(sorted(roles_present))}")
    return list(chosen)
