"""Assigning roles to LoRA branches: from presets, from explicit rules, or by inference.

Rules are applied per block or per module (a selector is whatever the architecture map's
``resolve_selector`` understands). Inference only ever produces roles marked "inferred".
"""

from __future__ import annotations

from adapterctl.arch import ArchMap, role_presets
from adapterctl.errors import UsageError
from adapterctl.format.manifest import ModuleEntry, RoleRule

TAGGABLE_ROLES = ("content", "style")  # 'expert' comes from the tensors themselves, never from a rule


def parse_role_rules(specs: list[str]) -> list[RoleRule]:
    """Parse CLI-style 'role=selector[,selector...]' strings."""
    rules: list[RoleRule] = []
    for spec in specs:
        role, sep, selectors = spec.partition("=")
        role = role.strip()
        if not sep or not selectors.strip():
            raise UsageError(f"bad --role '{spec}': expected ROLE=SELECTOR[,SELECTOR...]",
                             hint="e.g. --role style=up_blocks.0.attentions.1")
        if role not in TAGGABLE_ROLES:
            raise UsageError(f"unknown role '{role}'", hint=f"roles: {', '.join(TAGGABLE_ROLES)}")
        rules.extend(RoleRule(selector=s.strip(), role=role) for s in selectors.split(",") if s.strip())
    return rules


def preset_rules(arch: ArchMap, preset: str) -> list[RoleRule]:
    presets = role_presets(arch.name)
    if preset not in presets:
        raise UsageError(f"unknown preset '{preset}'", hint=f"presets for {arch.name}: {', '.join(sorted(presets))}")
    return [RoleRule(selector=sel, role=role) for role, sels in presets[preset].roles.items() for sel in sels]


def apply_rules(arch: ArchMap, entries: list[ModuleEntry], rules: list[RoleRule], *,
                source: str = "declared", replace: bool = True) -> list[ModuleEntry]:
    """Return entries with roles from ``rules`` (later rules win). Expert entries keep their role.

    Every selector must match at least one module of the architecture, so typos fail loudly.
    """
    role_of = rule_roles(arch, rules)
    out = []
    for entry in entries:
        if entry.role == "expert":
            out.append(entry)
            continue
        new_role = role_of.get(entry.module)
        if new_role is None and not replace:
            out.append(entry)
            continue
        out.append(entry.model_copy(update={"role": new_role, "role_source": source if new_role else None}))
    return out


def rule_roles(arch: ArchMap, rules: list[RoleRule]) -> dict[str, str]:
    """Module name -> role, from ``rules`` in order (later rules win)."""
    role_of: dict[str, str] = {}
    for rule in rules:
        names = arch.resolve_selector(rule.selector)
        if not names:
            raise UsageError(f"selector '{rule.selector}' matches no module of {arch.name}",
                             hint="use a block id such as up_blocks.0.attentions.1, a module name, or a glob")
        for name in names:
            role_of[name] = rule.role
    return role_of


def infer_roles(arch: ArchMap, entries: list[ModuleEntry]) -> tuple[list[ModuleEntry], str | None]:
    """Recognise untagged files whose shape gives their roles away; returns (entries, preset or None)."""
    preset = inferred_preset(arch, entries)
    if preset is None:
        return entries, None
    return apply_rules(arch, entries, preset_rules(arch, preset), source="inferred"), preset


def inferred_preset(arch: ArchMap, branches) -> str | None:
    """The preset an untagged file's branches (anything with ``role`` and ``block``) give away.

    Today: a file whose LoRA modules lie exactly in the two B-LoRA blocks, with both blocks present
    (the official B-LoRA output), is tagged content/style per the b-lora preset, marked inferred.
    """
    if not branches or any(b.role for b in branches):
        return None
    blora = role_presets(arch.name).get("b-lora")
    if blora is None:
        return None
    wanted = set().union(*(set(sels) for sels in blora.roles.values()))
    return "b-lora" if {b.block for b in branches} == wanted else None


def preset_roles(arch: ArchMap, preset: str) -> dict[str, str]:
    """Module name -> role under a preset (what ``apply_rules`` with its rules assigns)."""
    return rule_roles(arch, preset_rules(arch, preset))
