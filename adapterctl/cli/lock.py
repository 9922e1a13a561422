"""adapterctl lock: write DIR/adapters.lock, the sha256, size and reading of every adapter in DIR.

The lock lists every adapter that ls lists (path, sha256 of the bytes, size, manifest digest,
architecture, layout, roles, and the Hub origin recorded by pull when its sha256 still matches).
It is rewritten in place when it is already an adapterctl lock (the same bytes are left alone);
anything else at that path needs --force. The lock must be inside DIR: its paths are relative to
its own directory, which is what verify checks. Files that do not open are locked as invalid
(and verify fails on them). Exit 2 when DIR is missing or a directory in it cannot be read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from adapterctl.cli._help import command_help
from adapterctl.cli.options import ForceOpt, JsonOpt, LibraryDirArg, QuietOpt
from adapterctl.cli.output import Output

LockOutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the lock (default: "
                                                                           "DIR/adapters.lock; must be in DIR).",
                                                    dir_okay=False, resolve_path=False)]


def register(app: typer.Typer) -> None:
    app.command("lock", help=command_help(
        __doc__,
        examples=[
            "adapterctl lock adapters",
            "adapterctl lock adapters -o adapters/prod.lock --json",
        ]))(lock_cmd)


def lock_cmd(
    dir: LibraryDirArg,  # noqa: A002
    output: LockOutputOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from adapterctl.cli.ls import human_size
    from adapterctl.library.listing import lock_library
    from adapterctl.textsafe import display_path

    out = Output(json_mode=json_out, quiet=quiet)
    done = lock_library(dir, output=output, force=force)
    invalid = [r for r in done.rows if r.status != "ok"]
    for line in done.warnings:
        out.note(f"warning: {line}")
    if invalid:
        out.note(f"warning: {len(invalid)} of {len(done.rows)} files do not open as adapters; they are locked as "
                 f"invalid and verify fails on them (first: {display_path(invalid[0].rel)})")
    size = sum(r.size or 0 for r in done.rows)
    result = {"ok": True, "lock": display_path(done.path), "changed": done.changed, "files": len(done.rows),
              "bytes": size, "invalid": len(invalid), "with_origin": sum(r.origin is not None for r in done.rows)}
    out.result(result)
    noun = "adapter" if len(done.rows) == 1 else "adapters"
    facts = f"{len(done.rows)} {noun}, {human_size(size)}, {len(invalid)} invalid, {result['with_origin']} with an origin"
    out.done(f"Wrote {result['lock']} ({facts})" if done.changed else f"{result['lock']} is up to date ({facts})")
