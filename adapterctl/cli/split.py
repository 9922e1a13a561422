"""adapterctl split: write an adapter with only some of its branches, by role or by block."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from adapterctl.cli._help import command_help
from adapterctl.cli._write import write_command
from adapterctl.cli.options import ArchOpt, ForceOpt, FsyncOpt, InputArg, JsonOpt, OutputOpt, QuietOpt, StripOpt


def register(app: typer.Typer) -> None:
    app.command("split", help=command_help(
        __doc__,
        "Roles: content, style, expert, untagged. Untagged files recognised as B-LoRA get their roles "
        "inferred, so an official B-LoRA file splits with no tagging step.",
        examples=[
            "adapterctl split blora.safetensors --keep style            # -> blora.style.safetensors",
            "adapterctl split blora.safetensors --drop style -o content.safetensors",
            "adapterctl split my_lora.safetensors --keep-blocks 'up_blocks.*'",
        ]))(split_cmd)


def split_cmd(
    path: InputArg,
    keep: Annotated[Optional[list[str]], typer.Option("--keep", help="Keep only branches with this role; repeatable.")] = None,
    drop: Annotated[Optional[list[str]], typer.Option("--drop", help="Drop branches with this role; repeatable.")] = None,
    keep_blocks: Annotated[Optional[list[str]], typer.Option(
        "--keep-blocks", help="Keep only these blocks/modules (selectors, comma-separated or repeated).")] = None,
    output: OutputOpt = None,
    force: ForceOpt = False,
    fsync: FsyncOpt = False,
    strip_metadata: StripOpt = False,
    arch: ArchOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    keep, drop, blocks = _words(keep), _words(drop), _words(keep_blocks)
    suffix = "-".join(keep) if keep else ("no-" + "-".join(drop) if drop else "blocks")
    write_command(path, lambda a: a.split(keep=keep, drop=drop, keep_blocks=blocks), suffix=suffix,
                  output=output, force=force, fsync=fsync, strip_metadata=strip_metadata, arch=arch,
                  json_out=json_out, quiet=quiet)


def _words(values: Optional[list[str]]) -> list[str]:
    return [w.strip() for v in values or [] for w in v.split(",") if w.strip()]
