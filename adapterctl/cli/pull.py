"""adapterctl pull: download adapters from a Hugging Face Hub repository, verified by sha256.

The revision is pinned to its commit; every file is checked against the Hub's sha256 (offline:
against the cache), written into the directory only when all of them pass, and recorded in
DIR/.adapterctl-origins.json (repo, commit, path, sha256) for lock and sync. Names that could
escape the directory are refused before any download. Files go through huggingface_hub's cache
(HF_HOME), so HF_HUB_OFFLINE=1 pulls them again without a network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from adapterctl.cli._help import command_help
from adapterctl.cli.options import ForceOpt, JsonOpt, QuietOpt
from adapterctl.cli.push import TokenOpt


def register(app: typer.Typer) -> None:
    app.command("pull", help=command_help(
        __doc__,
        "--role takes the repository's file holding only that role (push --split-roles), else extracts "
        "it locally from the combined file (no origin is recorded for an extracted file).",
        examples=[
            "adapterctl pull me/painting-blora -o adapters/",
            "adapterctl pull me/painting-blora --role style -o adapters/",
            "adapterctl pull me/loras@v1.0 a.safetensors -o adapters/",
        ]))(pull_cmd)


def pull_cmd(
    repo_id: Annotated[str, typer.Argument(metavar="REPO_ID", show_default=False,
                                           help="Repository, OWNER/NAME[@REVISION] (a branch, tag or commit).")],
    file: Annotated[Optional[str], typer.Argument(metavar="FILE", show_default=False,
                                                      help="One file of the repository (default: every "
                                                           ".safetensors file).")] = None,
    role: Annotated[Optional[str], typer.Option("--role", help="Only this role: content, style, expert or "
                                                               "untagged.")] = None,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Branch, tag or commit (or REPO@REVISION).",
                                                    show_default="main")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory to write into (created if missing).",
                                         show_default=".")] = Path("."),
    token: TokenOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from adapterctl.cli.output import Output
    from adapterctl.hub._client import endpoint
    from adapterctl.hub.pull import pull, split_ref

    repo, rev = split_ref(repo_id, revision)
    result = pull(repo, rev, file, role, output, token=token, endpoint=endpoint(), force=force)
    out = Output(json_mode=json_out, quiet=quiet)
    for note in result.notes:
        out.note(note)
    if result.offline:
        out.note(f"offline ({result.offline}): verified against the local cache")
    out.result(result.to_dict(), _render)


def _render(console, result: dict) -> None:
    from adapterctl.cli.output import plain

    console.print(f"Pulled {plain(result['repo'])}@{result['commit']} into {plain(result['output'])}",
                  markup=False)
    for f in result["files"]:
        role = f" (role {f['role']}, extracted)" if f.get("role") else ""
        console.print(f"  {f['status']:<9} {f['sha256'][:12]}  {plain(f['path'])}{role}  verified: "
                      f"{plain(f['how'])}", markup=False)
