"""adapterctl verify: check a library directory against its lock; the exit code is the verdict.

The library is the lock's own directory. It is scanned and hashed as lock would, and every
difference is one line: '+ path' added, '- path' removed, 'M path' modified (other bytes),
'~ path' read differently (manifest digest) or another origin recorded for the same bytes,
'! path: reason' a file that does not open as an adapter (a failure even if locked that way).
Exit 0: identical; 1: any difference; 2: the lock is missing; 3: it is not a valid lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adapterctl.cli._help import command_help
from adapterctl.cli.options import JsonOpt, QuietOpt
from adapterctl.cli.output import Output, plain

EXIT_DIFFERENT = 1
_SIGN = {"added": "[green]+[/]", "removed": "[red]-[/]", "modified": "[yellow]M[/]", "manifest": "[yellow]~[/]",
         "origin": "[yellow]~[/]", "invalid": "[red]![/]", "unreadable": "[red]![/]"}


def register(app: typer.Typer) -> None:
    app.command("verify", help=command_help(
        __doc__,
        examples=[
            "adapterctl verify adapters/adapters.lock",
            "adapterctl verify --json | jq '.differences[].path'",
        ]))(verify_cmd)


def verify_cmd(
    lock: Annotated[Path, typer.Argument(metavar="LOCK", help="The lock file (default: ./adapters.lock).",
                                         show_default=False, readable=False)] = Path("adapters.lock"),
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from adapterctl.library.verify import verify_lock
    from adapterctl.textsafe import clip, display_path

    out = Output(json_mode=json_out, quiet=quiet)
    report = verify_lock(lock)
    for line in report.warnings:
        out.note(f"warning: {line}")
    counts: dict[str, int] = {}
    for d in report.differences:
        counts[d.kind] = counts.get(d.kind, 0) + 1
    result = {"ok": report.ok, "lock": display_path(report.lock), "root": display_path(report.root),
              "files": {"locked": report.locked, "found": report.found},
              "differences": [{"kind": d.kind, "path": display_path(d.path), "locked": _safe(d.locked),
                               "now": _safe(d.now), "reason": d.reason} for d in report.differences],
              "summary": counts, "warnings": [clip(w, 300) for w in report.warnings]}
    out.result(result, _render)
    if not report.ok:
        raise typer.Exit(EXIT_DIFFERENT)


def _safe(value):
    """Origins come from files: escape their strings like every other file-derived string."""
    from adapterctl.textsafe import clip

    if isinstance(value, dict):
        return {k: clip(v, 1000) if isinstance(v, str) else v for k, v in value.items()}
    return value


def _short(sha) -> str:
    return f"{sha[:12]}…" if sha else "none"


def _origin(o) -> str:
    return f"{o['repo']}@{o['revision'][:12]}:{o['path']}" if o else "none"


def line_of(d: dict) -> str:
    """One difference as verify prints it (rich markup; file-derived text escaped)."""
    path, kind = plain(d["path"]), d["kind"]
    if kind == "modified":
        return f"{_SIGN[kind]} {path} (sha256 {_short(d['locked']['sha256'])} -> {_short(d['now']['sha256'])})"
    if kind == "manifest":
        return f"{_SIGN[kind]} {path}: manifest digest {_short(d['locked'])} -> {_short(d['now'])} (same bytes, read " \
               "differently by this adapterctl)"
    if kind == "origin":
        return f"{_SIGN[kind]} {path}: origin {plain(_origin(d['locked']))} -> {plain(_origin(d['now']))}"
    if kind in ("invalid", "unreadable"):
        return f"{_SIGN[kind]} {path}: {plain(d['reason'] or '')}"
    return f"{_SIGN[kind]} {path}"


def _render(console, result: dict) -> None:
    for d in result["differences"]:
        console.print(line_of(d))
    files = result["files"]
    if result["ok"]:
        console.print(f"[green]ok[/] {plain(result['lock'])}: {files['locked']} files, identical")
        return
    parts = ", ".join(f"{n} {kind}" for kind, n in result["summary"].items())
    total = len(result["differences"])
    console.print(f"[red]FAIL[/] {plain(result['lock'])}: {total} difference{'s' if total != 1 else ''} ({parts})")
