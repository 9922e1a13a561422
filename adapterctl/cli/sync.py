"""adapterctl sync: make a directory match a lock file, fetching what is missing from its origins.

Every locked file must end up with its locked sha256: files already there and intact are kept,
the others are fetched from their origin (repository at a pinned commit), verified against the
Hub's tree and the lock, and moved in only when all of them pass; on any failure the directory
is unchanged. A locked file without an origin must already be present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from adapterctl.cli._help import command_help
from adapterctl.cli.options import JsonOpt, QuietOpt
from adapterctl.cli.push import TokenOpt


def register(app: typer.Typer) -> None:
    app.command("sync", help=command_help(
        __doc__,
        examples=[
            "adapterctl sync adapters/adapters.lock",
            "adapterctl sync adapters.lock -o /srv/adapters --json",
        ]))(sync_cmd)


def sync_cmd(
    lock: Annotated[Path, typer.Argument(metavar="LOCK", show_default=False, readable=False,
                                         help="The lock file (adapterctl lock).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Directory to sync (default: the lock's "
                                                                          "directory).")] = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from adapterctl.cli.output import Output
    from adapterctl.hub._client import endpoint
    from adapterctl.hub.sync import sync

    result = sync(lock, output, token=token, endpoint=endpoint())
    Output(json_mode=json_out, quiet=quiet).result(result.to_dict(), _render)


def _render(console, result: dict) -> None:
    from adapterctl.cli.output import plain

    counts = ", ".join(f"{n} {k}" for k, n in sorted(result["counts"].items())) or "nothing locked"
    console.print(f"Synced {plain(result['output'])} with {plain(result['lock'])}: {counts}", markup=False)
    for f in result["files"]:
        if f["status"] != "present":
            console.print(f"  {f['status']:<9} {f['sha256'][:12]}  {plain(f['path'])}  from "
                          f"{plain(f['repo'])}@{f['revision'][:12]}", markup=False)
