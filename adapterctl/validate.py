"""Checks for CI: structure, pairing, shapes against the architecture map, rank/alpha
consistency, NaN/Inf, and role coverage.

``validate_path`` never raises for a bad file: a file that cannot even be opened is a failed
check, so one bad adapter in a library does not hide the verdict on the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from adapterctl.errors import AdapterError
from adapterctl.textsafe import clip, display_path

if TYPE_CHECKING:
    from adapterctl.adapter import Adapter

Status = Literal["pass", "warn", "fail"]
_EXAMPLES = 3  # offending modules named per finding


@dataclass
class Check:
    name: str
    status: Status
    message: str


@dataclass
class FileReport:
    path: str
    checks: list[Check] = field(default_factory=list)
    consumers: list[dict] = field(default_factory=list)  # one verdict per --for tool

    def add(self, name: str, problems: list[str], *, severity: Status = "fail", ok: str = "ok") -> None:
        if not problems:
            self.checks.append(Check(name, "pass", ok))
            return
        shown = "; ".join(problems[:_EXAMPLES]) + (f"; and {len(problems) - _EXAMPLES} more" if len(problems) > _EXAMPLES else "")
        self.checks.append(Check(name, severity, clip(shown, 2000)))

    def status(self, *, strict: bool) -> Status:
        states = {c.status for c in self.checks}
        if "fail" in states or (strict and "warn" in states):
            return "fail"
        return "warn" if "warn" in states else "pass"

    def to_dict(self, *, strict: bool) -> dict:
        out = {"path": display_path(self.path), "status": self.status(strict=strict),
               "checks": [c.__dict__ for c in self.checks]}
        if self.consumers:
            out["consumers"] = self.consumers
        return out


def validate_path(path: str | Path, *, weights: bool = True, arch: str | None = None,
                  consumers: tuple[str, ...] = ()) -> FileReport:
    """``consumers``: also judge whether each of these tools (consumers/data/*.json) would apply
    every module at the right scale; a loss or a mis-scaling is a failed ``loads-in:<tool>`` check."""
    from adapterctl.adapter import Adapter

    report = FileReport(str(path))
    try:
        adapter = Adapter.open(path, arch=arch)
    except AdapterError as exc:
        report.checks.append(Check("structure", "fail", clip(f"{exc.message} [{exc.code}]", 600)))
        return report
    except Exception as exc:  # noqa: BLE001 - a bug, but the other files of a batch still get their verdict
        report.checks.append(_internal(exc))
        return report
    try:
        validate_adapter(adapter, report, weights=weights)
        for consumer in consumers:
            _loads_in(adapter, report, consumer)
    except AdapterError as exc:
        report.checks.append(Check("structure", "fail", clip(f"{exc.message} [{exc.code}]", 600)))
    except Exception as exc:  # noqa: BLE001
        report.checks.append(_internal(exc))
    finally:
        adapter.close()
    return report


def _loads_in(adapter: "Adapter", report: FileReport, consumer: str) -> None:
    from adapterctl.consumers.profile import load_profiles
    from adapterctl.consumers.verdict import judge

    verdict = judge(adapter, load_profiles()[consumer])
    message = f"{consumer} {verdict.version.split()[0]}: {verdict.summary()}"
    if not verdict.ok and verdict.fix:
        message += f" (fix: {verdict.fix})"
    report.checks.append(Check(f"loads-in:{consumer}", "pass" if verdict.ok else "fail", clip(message, 600)))
    report.consumers.append(verdict.to_dict())


def _internal(exc: Exception) -> Check:
    return Check("internal", "fail", clip(f"internal error ({type(exc).__name__}: {exc}); please report it", 300))


def validate_adapter(adapter: "Adapter", report: FileReport, *, weights: bool) -> None:
    entries = adapter.manifest.modules
    report.add("structure", [], ok=f"{adapter.layout} layout, {len(entries)} LoRA modules, "
                                   f"manifest {'stored' if adapter.manifest_stored else 'inferred'}")
    report.add("pairing", [], ok="every down factor has its up factor with the same rank")
    report.add("shapes", _shape_problems(adapter))
    report.add("rank_alpha", _rank_alpha_problems(adapter))
    report.add("mapping", _mapping_problems(adapter), severity="warn", ok="every tensor maps to a module")
    report.add("roles", _role_problems(adapter), severity="warn", ok=_role_summary(adapter))
    if weights:
        report.add("finite", _nonfinite(adapter), ok="no NaN or Inf in any factor")


def _shape_problems(adapter: "Adapter") -> list[str]:
    st, problems = adapter.source, []
    for e in adapter.manifest.modules:
        spec = adapter.arch.get(e.module)
        down, up = st.tensors[e.tensors.down].shape, st.tensors[e.tensors.up].shape
        if e.role == "expert":
            got_in, got_out = down[-1], (up[-2] if len(up) == 3 else up[0])
            if (got_in, got_out) != (spec.in_features, spec.out_features):
                problems.append(f"{e.module}: experts are {got_in}->{got_out}, module is "
                                f"{spec.in_features}->{spec.out_features}")
            continue
        if spec.kind != e.kind:
            problems.append(f"{e.module}: {e.kind} factors on a {spec.kind} module")
            continue
        want_down = (e.rank, spec.in_features) + (tuple(spec.kernel) if spec.kernel else ())
        want_up = (spec.out_features, e.rank) + ((1, 1) if spec.kernel else ())
        if tuple(down) != want_down or tuple(up) != want_up:
            problems.append(f"{e.module}: down {list(down)} up {list(up)}, expected {list(want_down)} {list(want_up)}")
        if e.tensors.magnitude:
            mag = st.tensors[e.tensors.magnitude].shape
            # peft keeps one magnitude per output; LyCORIS's dora_scale may be per input instead.
            allowed = {spec.out_features} | ({spec.in_features} if e.tensors.magnitude.endswith("dora_scale") else set())
            if math.prod(mag) not in allowed:
                problems.append(f"{e.module}: DoRA magnitude has {math.prod(mag)} values for {spec.out_features} outputs")
    return problems


def _rank_alpha_problems(adapter: "Adapter") -> list[str]:
    problems = []
    for e in adapter.manifest.modules:
        if not (math.isfinite(e.alpha) and math.isfinite(e.scale)):
            problems.append(f"{e.module}: alpha {e.alpha} / scale {e.scale} is not finite")
            continue
        # A manifest whose scale differs from what loaders apply never gets here: the reader
        # rejects it (a failed `structure` check), so these are the scales loaders apply.
        rule = e.alpha / math.sqrt(e.rank) if e.rslora else e.alpha / e.rank
        if not math.isclose(rule, e.scale, rel_tol=1e-6, abs_tol=1e-12):
            problems.append(f"{e.module}: scale {e.scale:g} but alpha {e.alpha:g} / rank {e.rank} gives {rule:g}")
    return problems


def _mapping_problems(adapter: "Adapter") -> list[str]:
    problems = [f"unmapped tensor '{clip(k, 200)}'" for k in adapter.read.unmapped]
    problems += [f"LyCORIS {algo}: {n} tensors (reported, not convertible)" for algo, n in adapter.read.lycoris.items()]
    return problems + list(dict.fromkeys(adapter.read.warnings))


def _role_summary(adapter: "Adapter") -> str:
    roles = adapter.roles()
    return ", ".join(f"{k}: {v}" for k, v in sorted(roles.items()))


def _role_problems(adapter: "Adapter") -> list[str]:
    from adapterctl.arch import role_presets

    entries = adapter.manifest.modules
    tagged = [e for e in entries if e.role]
    problems = []
    if tagged and len(tagged) != len(entries):
        problems.append(f"{len(entries) - len(tagged)} of {len(entries)} modules are untagged in a tagged file")
    preset = role_presets(adapter.arch.name).get(adapter.manifest.preset or "")
    if preset is not None:
        present = {(e.role, e.block) for e in entries}
        held = {e.role for e in entries}
        # Only roles the file holds are checked: a split-off style file is not missing its content.
        for role, blocks in ((r, b) for r, b in preset.roles.items() if r in held):
            for block in blocks:
                names = adapter.arch.resolve_selector(block)
                blocks_hit = {adapter.arch.get(n).block for n in names}
                if not any((role, b) in present for b in blocks_hit):
                    problems.append(f"preset {preset.name}: no '{role}' modules in {block}")
    split_off = any(op.op == "split" for op in adapter.manifest.provenance.operations)
    if adapter.manifest.method == "b-lora" and not split_off and not {"content", "style"} <= {e.role for e in entries}:
        problems.append("a b-lora file should hold both content and style")
    return problems


def _nonfinite(adapter: "Adapter") -> list[str]:
    from adapterctl.io.arrays import count_nonfinite

    st, problems = adapter.source, []
    for e in adapter.manifest.modules:
        for key in (k for k in e.tensors.model_dump().values() if k):
            bad = count_nonfinite(st, key)
            if bad:
                problems.append(f"{clip(key, 200)}: {bad} NaN/Inf values")
    return problems
