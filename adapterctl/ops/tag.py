"""The tag op: assign content/style roles by preset and/or 'role=selector' rules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from adapterctl.errors import UsageError
from adapterctl.format import roles as _roles
from adapterctl.ops.base import Op, Params

if TYPE_CHECKING:
    from adapterctl.adapter import Adapter


class TagParams(Params):
    preset: Optional[str] = None  # a role preset of the architecture, e.g. "b-lora"
    roles: list[str] = []  # "role=selector[,selector...]" rules; later ones win
    clear: bool = False  # drop existing (non-expert) roles first


class Tag(Op):
    name = "tag"
    Params = TagParams

    def apply(self, adapter: "Adapter", params: TagParams) -> dict:
        rules = self._rules(adapter, params)
        entries = adapter.manifest.modules
        if params.clear:
            entries = [e if e.role == "expert" else e.model_copy(update={"role": None, "role_source": None})
                       for e in entries]
        entries = _roles.apply_rules(adapter.arch, entries, rules, replace=False)
        # Re-tagging promotes every surviving role to 'declared': the user has now looked at it.
        entries = [e.model_copy(update={"role_source": "declared"}) if e.role else e for e in entries]
        keep_method = params.preset == "b-lora" and adapter.method in ("lora", "b-lora")
        kept_rules = [] if params.clear else list(adapter.manifest.role_rules)
        return {"modules": entries, "preset": params.preset or adapter.manifest.preset,
                "role_rules": kept_rules + rules, "method": "b-lora" if keep_method else adapter.method}

    def record(self, adapter: "Adapter", params: TagParams) -> dict:
        # The resolved rules (the preset's included) say exactly what was applied.
        rules = self._rules(adapter, params)
        return {"preset": params.preset, "rules": [f"{r.role}={r.selector}" for r in rules], "clear": params.clear}

    @staticmethod
    def _rules(adapter: "Adapter", params: TagParams):
        rules = list(_roles.preset_rules(adapter.arch, params.preset)) if params.preset else []
        # One 'role=a,b' string is several rules; keep them all, not just the first selector.
        rules += _roles.parse_role_rules(params.roles)
        if not rules and not params.clear:
            raise UsageError("nothing to tag", hint="pass --preset NAME or --role ROLE=SELECTOR")
        return rules
