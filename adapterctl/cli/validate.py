"""adapterctl validate: check adapter files for CI; the exit code is the verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from adapterctl.cli._help import command_help
from adapterctl.cli.options import ArchOpt, JsonOpt, QuietOpt
from adapterctl.cli.output import Output, plain
from adapterctl.consumers.profile import names as profile_names

EXIT_FAILED = 1


def register(app: typer.Typer) -> None:
    app.command("validate", help=command_help(
        __doc__,
        "Checks structure, up/down pairing, shapes against the architecture map, rank/alpha consistency, "
        "NaN/Inf and role coverage. --for TOOL also says whether that tool would apply every module at "
        "the right scale (from its recorded profile), and which command fixes the file. Exit 0: all pass "
        "(warnings allowed unless --strict); exit 1: some file failed.",
        examples=[
            "adapterctl validate adapters/*.safetensors",
            "adapterctl validate blora.safetensors --for comfyui --for diffusers",
            "adapterctl validate style.safetensors --strict --json",
        ]))(validate_cmd)


def validate_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Adapter files or peft directories.", show_default=False,
                                                readable=False)],
    strict: Annotated[bool, typer.Option("--strict", help="Treat warnings as failures.")] = False,
    no_weights: Annotated[bool, typer.Option("--no-weights", help="Skip reading tensors (no NaN/Inf check).")] = False,
    consumers: Annotated[Optional[list[str]], typer.Option(
        "--for", metavar="TOOL", help=f"Would it load completely in TOOL ({', '.join(profile_names())})? Repeatable.")] = None,
    arch: ArchOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from adapterctl.consumers.profile import check_names
    from adapterctl.validate import validate_path

    tools = check_names(consumers or [])
    out = Output(json_mode=json_out, quiet=quiet)
    reports = [validate_path(p, weights=not no_weights, arch=arch, consumers=tools) for p in paths]
    files = [r.to_dict(strict=strict) for r in reports]
    failed = sum(f["status"] == "fail" for f in files)
    result = {"ok": failed == 0, "strict": strict, "files": files,
              "summary": {"files": len(files), "failed": failed,
                          "warned": sum(f["status"] == "warn" for f in files)}}
    out.result(result, _render)
    if failed:
        raise typer.Exit(EXIT_FAILED)


_MARK = {"pass": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}


def _render(console, result: dict) -> None:
    for f in result["files"]:
        console.print(f"{_MARK[f['status']]} {plain(f['path'])}")
        for c in f["checks"]:
            if c["status"] != "pass":
                console.print(f"   {_MARK[c['status']]} {c['name']}: {plain(c['message'])}")
    s = result["summary"]
    noun = "file" if s["files"] == 1 else "files"
    console.print(f"{s['files']} {noun}: {s['failed']} failed, {s['warned']} with warnings")
