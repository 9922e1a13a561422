"""The inspect report: everything a person or a CI script wants to know, from the header alone.

The dict built here is the documented ``inspect --json`` schema (docs/inspect-json.md);
``SCHEMA`` changes whenever a field is renamed or removed. Strings that come from the file are
escaped so that control characters can never reach a terminal or a log unescaped.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

from adapterctl.textsafe import clip, display_path

if TYPE_CHECKING:
    from adapterctl.adapter import Adapter

SCHEMA = "adapterctl.inspect/1"
_UNMAPPED_LISTED = 20


def inspect_report(adapter: "Adapter") -> dict[str, Any]:
    m = adapter.manifest
    st = adapter.source
    entries = m.modules
    tensors = [st.tensors[k] for e in entries for k in e.tensors.model_dump().values() if k]
    alpha_names = {e.tensors.alpha for e in entries}  # built once: per tensor it made inspect O(n^2)
    roles: dict[str, dict] = {}
    for e in entries:
        key = e.role or "untagged"
        slot = roles.setdefault(key, {"modules": 0, "source": None, "blocks": []})
        slot["modules"] += 1
        slot["source"] = e.role_source if slot["source"] in (None, e.role_source) else "mixed"
        if e.block and clip(e.block) not in slot["blocks"]:
            slot["blocks"].append(clip(e.block))
    blocks: dict[str, dict] = {}
    for e in entries:
        b = blocks.setdefault(e.block or "?", {"block": e.block, "modules": 0, "roles": [], "kinds": Counter(),
                                               "ranks": set(), "lbw": adapter.arch.get(e.module).lbw})
        b["modules"] += 1
        b["kinds"][e.kind] += 1
        b["ranks"].add(e.rank)
        role = e.role or "untagged"
        if role not in b["roles"]:
            b["roles"].append(role)
    order = {blk: i for i, blk in enumerate(adapter.arch.blocks())}
    block_list = [
        {"block": clip(v["block"]) if v["block"] else None, "modules": v["modules"], "roles": v["roles"],
         "kinds": dict(v["kinds"]), "rank": sorted(v["ranks"]), "lbw": v["lbw"]}
        for v in sorted(blocks.values(), key=lambda v: order.get(v["block"], 1 << 30))
    ]
    return json_safe({
        "schema": SCHEMA,
        "path": display_path(adapter.path),
        "size": st.size,
        "header_bytes": st.header_len,
        "manifest": "stored" if adapter.manifest_stored else "inferred",
        "format_version": m.version if adapter.manifest_stored else None,
        "architecture": adapter.arch.name,
        "layout": m.layout,
        "method": clip(m.method, 200),
        "preset": clip(m.preset, 200) if m.preset else None,
        "modules": len(entries),
        "tensors": len(st.tensors),
        "parameters": sum(t.numel for t in tensors if t.name not in alpha_names),
        "dtypes": dict(Counter(clip(e.dtype) for e in entries)),
        "components": dict(Counter(e.component for e in entries)),
        "kinds": dict(Counter(e.kind for e in entries)),
        "roles": roles,
        "blocks": block_list,
        "rank": _summary([e.rank for e in entries]),
        "alpha": _summary([e.alpha for e in entries]),
        "scale": _summary([e.scale for e in entries]),
        "scaling": adapter.read.scaling_source,
        "dora_modules": sum(e.dora for e in entries),
        "expert_modules": sum(e.role == "expert" for e in entries),
        "lycoris": adapter.read.lycoris,
        "unmapped": {"count": len(adapter.read.unmapped),
                     "first": [clip(k, 300) for k in adapter.read.unmapped[:_UNMAPPED_LISTED]]},
        "doubled_prefix": adapter.read.doubled_prefix,
        "warnings": [clip(w, 500) for w in dict.fromkeys(adapter.read.warnings)],
        "metadata": _metadata(adapter.foreign_metadata()),
        "provenance": {"sources": len(m.provenance.sources),
                       "operations": [clip(op.op, 100) for op in m.provenance.operations]},
        "loads_in": _loads_in(adapter),
    })


def _loads_in(adapter: "Adapter") -> list[dict]:
    """Per consumer with a recorded profile: would it apply every module at the right scale?"""
    from adapterctl.consumers.profile import load_profiles
    from adapterctl.consumers.verdict import judge

    out = []
    for name, profile in load_profiles().items():
        v = judge(adapter, profile)
        out.append({"consumer": name, "version": clip(profile.version.split()[0], 60), "ok": v.ok,
                    "applied": 0 if v.lost_all else len(v.applied), "ignored": len(v.ignored),
                    "misscaled": len(v.misscaled), "summary": v.summary()})
    return out


def json_safe(value: Any) -> Any:
    """The same data with every non-finite float as the string "NaN", "Infinity" or "-Infinity",
    so that the report is strict JSON however broken the file (a NaN alpha, NaN factors)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"min": None, "max": None, "values": {}}
    counts = Counter(values)
    return {"min": min(values), "max": max(values),
            "values": {_num(v): n for v, n in sorted(counts.items())[:16]}}


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _metadata(meta: dict[str, str], limit: int = 2000) -> dict[str, dict[str, str]]:
    groups: dict[str, dict[str, str]] = defaultdict(dict)
    for key, value in sorted(meta.items()):
        group = "modelspec" if key.startswith("modelspec.") else "kohya" if key.startswith(("ss_", "sshs_")) else "other"
        # Clipped before escaping: the cost stays bounded however long the value is.
        suffix = f" ({len(value)} chars)" if len(value) > limit else ""
        groups[group][clip(key, 200)] = clip(value, limit) + suffix
    return dict(groups)
