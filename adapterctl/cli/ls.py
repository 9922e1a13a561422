"""adapterctl ls: list the adapters of a directory, from their headers alone.

One row per adapter (every *.safetensors file below DIR, and peft adapter directories; hidden
files and directories skipped, links to directories not followed): path, architecture, layout,
method, roles, rank, size and status. A file that does not open as an adapter is listed as
invalid with the reason. Exit 0 whatever the files hold (validate and verify are the gates);
exit 2 when DIR is missing or not a directory.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from adapterctl.cli._help import command_help
from adapterctl.cli.options import JsonOpt, LibraryDirArg, QuietOpt
from adapterctl.cli.output import Output, plain

SCHEMA = "adapterctl.ls/1"
ROLES = ("content", "style", "expert", "untagged")


def register(app: typer.Typer) -> None:
    app.command("ls", help=command_help(
        __doc__,
        examples=[
            "adapterctl ls adapters",
            "adapterctl ls adapters --role style",
            "adapterctl ls adapters --sha256 --json | jq '.adapters[].sha256'",
        ]))(ls_cmd)


def ls_cmd(
    dir: LibraryDirArg,  # noqa: A002
    role: Annotated[Optional[str], typer.Option("--role", help=f"Only adapters carrying this role "
                                                               f"({', '.join(ROLES)}).")] = None,
    arch: Annotated[Optional[str], typer.Option("--arch", help="Only adapters for this architecture "
                                                               "(e.g. sdxl).")] = None,
    sha256: Annotated[bool, typer.Option("--sha256", help="Also hash every file (reads every byte): sha256, "
                                                          "manifest digest and origin.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from adapterctl.library.listing import list_library

    want_arch = _architecture(arch)
    if role is not None and role not in ROLES:
        from adapterctl.errors import UsageError

        raise UsageError(f"unknown role '{role}'", hint=f"roles: {', '.join(ROLES)}")
    out = Output(json_mode=json_out, quiet=quiet)
    listing = list_library(dir, sha256=sha256)
    rows = [r for r in listing.rows
            if (role is None or r.roles.get(role, 0) > 0) and (want_arch is None or r.architecture == want_arch)]
    warnings = [f"{w}: {why}" for w, why in listing.problems] + listing.warnings
    for line in warnings:
        out.note(f"warning: {line}")
    result = {"schema": SCHEMA, "root": _display(listing.root), "filters": {"role": role, "architecture": want_arch},
              "adapters": [row_json(r, sha256=sha256) for r in rows],
              "summary": {"adapters": len(rows), "invalid": sum(r.status != "ok" for r in rows),
                          "bytes": sum(r.size or 0 for r in rows), "scanned": len(listing.rows)},
              "warnings": [_clip(w) for w in warnings]}
    out.result(result, _render)


def _architecture(name: Optional[str]) -> Optional[str]:
    if name is None:
        return None
    from adapterctl.arch import known_architectures, load_arch
    from adapterctl.errors import UnknownArchitecture, UsageError

    try:
        return load_arch(name).name
    except UnknownArchitecture:
        raise UsageError(f"unknown architecture '{_clip(name)}'",
                         hint=f"known: {', '.join(known_architectures())}") from None


def row_json(r, *, sha256: bool) -> dict:
    out = {"path": _display(r.rel), "kind": r.kind, "status": r.status, "reason": r.reason,
           "architecture": r.architecture, "layout": r.layout, "method": _clip(r.method) if r.method else None,
           "roles": r.roles, "modules": r.modules,
           "rank": {"min": r.rank_min, "max": r.rank_max} if r.rank_min is not None else None, "size": r.size}
    if sha256:
        origin = r.origin and {k: _clip(v, 1000) for k, v in r.origin.items()}
        out.update(sha256=r.sha256, manifest_sha256=r.manifest_sha256, origin=origin)
    return out


def _display(path) -> str:
    from adapterctl.textsafe import display_path

    return display_path(path)


def _clip(text: str, limit: int = 200) -> str:
    from adapterctl.textsafe import clip

    return clip(text, limit)


def human_size(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _render(console, result: dict) -> None:
    from rich.table import Table

    rows = result["adapters"]
    if not rows:
        filtered = any(result["filters"].values())
        console.print(f"no adapters{' match' if filtered else ''} under {plain(result['root'])}"
                      + (f" ({result['summary']['scanned']} scanned)" if filtered else ""))
        return
    hashes = bool(rows) and "sha256" in rows[0]
    table = Table(box=None, pad_edge=False, show_edge=False)
    for name in ("path", "arch", "layout", "method", "roles", "rank", "size", "status") + (("sha256",) if hashes else ()):
        table.add_column(name, justify="right" if name in ("size", "rank") else "left", no_wrap=True)
    for r in rows:
        roles = ", ".join(f"{plain(k)} {v}" for k, v in r["roles"].items())
        rank = r["rank"] and (str(r["rank"]["min"]) if r["rank"]["min"] == r["rank"]["max"]
                              else f"{r['rank']['min']}-{r['rank']['max']}")
        status = "[green]ok[/]" if r["status"] == "ok" else "[red]invalid[/]"
        cells = [plain(r["path"]) + ("/" if r["kind"] == "peft" else ""), r["architecture"] or "-",
                 r["layout"] or "-", plain(r["method"] or "-"), roles or "-", rank or "-", human_size(r["size"]),
                 status]
        table.add_row(*cells, *((r["sha256"] or "-",) if hashes else ()))
    # One line per adapter, never cut or folded to the terminal's width (a long line wraps in the
    # terminal instead): paths and hashes stay whole, and `ls | grep` sees one row per line.
    from rich.measure import Measurement

    natural = Measurement.get(console, console.options.update(max_width=1 << 20), table).maximum
    console.width = max(console.width, natural)  # (print(width=...) does not widen a soft-wrap console)
    console.print(table)
    for r in rows:
        if r["status"] != "ok":
            console.print(f"[red]![/] {plain(r['path'])}: {plain(r['reason'] or '')}")
    s = result["summary"]
    noun = "adapter" if s["adapters"] == 1 else "adapters"
    console.print(f"{s['adapters']} {noun}, {s['invalid']} invalid, {human_size(s['bytes'])}"
                  + (f" ({s['scanned']} scanned)" if any(result["filters"].values()) else ""))
