"""adapterctl tag: write a copy of an adapter with roles assigned per block or per module."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from adapterctl.cli._help import command_help
from adapterctl.cli._write import write_command
from adapterctl.cli.options import ArchOpt, ForceOpt, FsyncOpt, InputArg, JsonOpt, OutputOpt, QuietOpt, StripOpt


def register(app: typer.Typer) -> None:
    app.command("tag", help=command_help(
        __doc__,
        "A selector is a block id (up_blocks.0.attentions.1), a canonical module name, an SGM block "
        "(output_blocks.1.1) or a glob over either.",
        examples=[
            "adapterctl tag blora.safetensors --preset b-lora",
            "adapterctl tag mix.safetensors --role style=up_blocks.0.attentions.1 --role "
            "content=up_blocks.0.attentions.0 -o mix.tagged.safetensors",
        ]))(tag_cmd)


def tag_cmd(
    path: InputArg,
    preset: Annotated[Optional[str], typer.Option("--preset", help="Role preset: b-lora, unziplora.")] = None,
    role: Annotated[Optional[list[str]], typer.Option("--role", help="ROLE=SELECTOR[,SELECTOR...]; repeatable.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Drop existing roles before applying the new ones.")] = False,
    output: OutputOpt = None,
    force: ForceOpt = False,
    fsync: FsyncOpt = False,
    strip_metadata: StripOpt = False,
    arch: ArchOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    write_command(path, lambda a: a.tag(preset=preset, roles=role or [], clear=clear), suffix="tagged",
                  output=output, force=force, fsync=fsync, strip_metadata=strip_metadata, arch=arch,
                  json_out=json_out, quiet=quiet)
