"""Will this file work in that tool? Each branch judged against a consumer profile: applied,
ignored (the consumer cannot place its keys), or mis-scaled (applied with another scale than
the file means, and by what factor).

The scale a file *means* is the one its own layout's loader applies (the manifest's ``scale``).
A consumer's scale comes from the first source its profile lists that the file has; a profile's
``common_alpha`` replaces some branches' alphas with their component's most common one
(diffusers' kohya converter), and ``all_or_nothing_over`` drops the whole file when too many
keys are unplaced (Forge).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from adapterctl.consumers.profile import Profile
from adapterctl.format.constants import DIFFUSERS_METADATA_KEY
from adapterctl.layouts.registry import parse_key

if TYPE_CHECKING:
    from adapterctl.adapter import Adapter
    from adapterctl.format.manifest import ModuleEntry

_TOLERANCE = 1e-6


@dataclass
class Verdict:
    consumer: str
    title: str
    version: str
    applied: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    misscaled: list[tuple[str, float]] = field(default_factory=list)  # (module, consumer scale / meant scale)
    lost_all: bool = False  # too many unplaced keys: the consumer applies nothing
    fix: Optional[str] = None

    @property
    def ok(self) -> bool:
        return not (self.ignored or self.misscaled or self.lost_all)

    def summary(self) -> str:
        total = len(self.applied) + len(self.ignored) + len(self.misscaled)
        if self.ok:
            return f"all {total} modules applied at the right scale"
        parts = []
        if self.lost_all:
            parts.append(f"applies nothing: {len(self.ignored)} modules cannot be placed, over its limit")
        elif self.ignored:
            parts.append(f"{len(self.ignored)} of {total} modules ignored (first: {self.ignored[0]})")
        if self.misscaled:
            module, factor = self.misscaled[0]
            parts.append(f"{len(self.misscaled)} mis-scaled (first: {module} at {factor:.4g}x)")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {"consumer": self.consumer, "version": self.version, "ok": self.ok, "applied": len(self.applied),
                "ignored": self.ignored, "lost_all": self.lost_all,
                "misscaled": [{"module": m, "factor": f} for m, f in self.misscaled],
                "summary": self.summary(), "fix": None if self.ok else self.fix}


def key_form(adapter: "Adapter", entry: "ModuleEntry") -> Optional[str]:
    """How a branch's keys are spelled, in the profiles' terms; None for what no consumer places."""
    parsed = parse_key(entry.tensors.down)
    if parsed is None or entry.role == "expert" or parsed.qualifier:
        return None  # experts and role-qualified keys are adapterctl's own; no consumer reads them
    if parsed.family == "kohya":
        sgm = adapter.arch.kohya_name(entry.module, sgm=True)
        return "kohya-sgm" if entry.tensors.down.startswith(sgm + ".") else "kohya-diffusers-names"
    return parsed.family


def judge(adapter: "Adapter", profile: Profile) -> Verdict:
    verdict = Verdict(profile.consumer, profile.title, profile.version, fix=profile.fix)
    common = _common_alphas(adapter, profile)
    unplaced_keys = 0
    for entry in adapter.manifest.modules:
        form = key_form(adapter, entry)
        spec = adapter.arch.get(entry.module)
        if form is None or spec is None or not profile.applies(form, spec.component, spec.group):
            verdict.ignored.append(entry.module)
            unplaced_keys += sum(1 for k in entry.tensors.model_dump().values() if k)
            continue
        scale = _consumer_scale(adapter, profile, entry, form, spec.group, common)
        factor = scale / entry.scale if entry.scale else float("inf")
        if abs(factor - 1.0) > _TOLERANCE:
            verdict.misscaled.append((entry.module, factor))
        else:
            verdict.applied.append(entry.module)
    limit = profile.all_or_nothing_over
    verdict.lost_all = limit is not None and unplaced_keys > limit
    return verdict


def _consumer_scale(adapter, profile: Profile, entry, form: str, group: str, common: dict) -> float:
    rule = profile.scale.common_alpha
    if rule is not None and form in rule.forms and group in rule.groups and entry.tensors.alpha is not None:
        return common[entry.component] / entry.rank
    for source in profile.scale.sources:
        if source in ("alpha_tensor", "network_alpha_tensor") and entry.tensors.alpha is not None:
            return entry.alpha / entry.rank
        if source == "lora_adapter_metadata" and DIFFUSERS_METADATA_KEY in adapter.metadata:
            return entry.scale
        if source == "adapter_config" and adapter.peft_config is not None:
            return entry.scale
    return profile.scale.default


def _common_alphas(adapter, profile: Profile) -> dict[str, float]:
    """Per component, the most common stored alpha (diffusers: ``lora_alpha``, the others as patterns)."""
    if profile.scale.common_alpha is None:
        return {}
    per: dict[str, Counter] = {}
    for e in adapter.manifest.modules:
        if e.tensors.alpha is not None:
            per.setdefault(e.component, Counter())[e.alpha] += 1
    return {c: counts.most_common(1)[0][0] for c, counts in per.items()}
