"""adapterctl push: upload adapters to a Hugging Face Hub repository, with a generated model card.

One commit holds the files and README.md, or no commit is made when the branch already has
exactly these bytes (compared by sha256, nothing downloaded). The card lists every file, the
roles and blocks (with LBW labels), and how to load each file in adapterctl, diffusers, ComfyUI
and A1111; an existing README keeps its text outside the adapterctl section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from adapterctl.cli._help import command_help
from adapterctl.cli.options import JsonOpt, QuietOpt

TokenOpt = Annotated[Optional[str], typer.Option(
    "--token", help="Hub access token (default: HF_TOKEN, then the saved login). Prefer HF_TOKEN: an argument "
                    "is visible to other users of this machine. Never printed or written.", show_default=False)]


def register(app: typer.Typer) -> None:
    app.command("push", help=command_help(
        __doc__,
        "The endpoint is HF_ENDPOINT (default huggingface.co).",
        examples=[
            "adapterctl push painting.safetensors me/painting-blora",
            "adapterctl push blora.safetensors me/blora --split-roles --also kohya",
            "adapterctl push a.safetensors b.safetensors me/loras --private --revision dev",
        ]))(push_cmd)


def push_cmd(
    file: Annotated[list[Path], typer.Argument(metavar="FILE", show_default=False, readable=False,
                                                help="Adapter .safetensors files.")],
    repo_id: Annotated[str, typer.Argument(metavar="REPO_ID", show_default=False,
                                           help="The repository, OWNER/NAME (created if missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private (an existing public "
                                                            "one is refused, not changed).")] = False,
    revision: Annotated[Optional[str], typer.Option("--revision", "--branch", help="Branch to commit to (created "
                                                    "from main if missing).", show_default="main")] = None,
    commit_message: Annotated[Optional[str], typer.Option("--commit-message", "-m", help="Commit message.")] = None,
    token: TokenOpt = None,
    split_roles: Annotated[bool, typer.Option("--split-roles", help="Also upload one file per role "
                                              "(<stem>.<role>.safetensors), for tools that load whole files.")] = False,
    also: Annotated[Optional[list[str]], typer.Option("--also", metavar="LAYOUT", help="Also upload a copy in this "
                                                      "layout (<stem>.kohya.safetensors): kohya for ComfyUI/A1111/"
                                                      "Forge, or diffusers; repeatable.")] = None,
    license: Annotated[Optional[str], typer.Option("--license", help="License id for the card (default: the base "
                                                   "model's, openrail++ for SDXL; an existing card's stays; 'none' "
                                                   "leaves it out).")] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from adapterctl.cli.output import Output
    from adapterctl.hub._client import endpoint
    from adapterctl.hub.push import push

    result = push(file, repo_id, token=token, private=private, revision=revision,
                  commit_message=commit_message, split_roles=split_roles, also=tuple(also or ()), license=license,
                  endpoint=endpoint())
    out = Output(json_mode=json_out, quiet=quiet)
    for note in result.notes:
        out.note(note)
    out.result(result.to_dict(), _render)


def _render(console, result: dict) -> None:
    from adapterctl.cli.output import plain

    where = f"{plain(result['repo'])}@{plain(result['branch'])}"
    if result["up_to_date"]:
        console.print(f"Up to date: {where} is at {result['commit']} ({len(result['files'])} files unchanged); "
                      "no commit made", markup=False)
        return
    sent = [f for f in result["files"] if f["status"] == "uploaded"]
    console.print(f"Pushed {len(sent)} of {len(result['files'])} files to {where}: commit {result['commit']}",
                  markup=False)
    for f in result["files"]:
        console.print(f"  {f['status']:<9} {f['sha256'][:12]}  {plain(f['path'])}", markup=False)
    console.print(plain(result["url"]), markup=False)
