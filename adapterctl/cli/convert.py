"""adapterctl convert: rewrite an adapter in the kohya, diffusers or peft layout, losslessly."""

from __future__ import annotations

from typing import Annotated

import typer

from adapterctl.cli._write import write_command
from adapterctl.layouts.registry import writable
from adapterctl.cli.options import ArchOpt, ForceOpt, FsyncOpt, InputArg, JsonOpt, OutputOpt, QuietOpt, StripOpt


def register(app: typer.Typer) -> None:
    app.command("convert", help=__doc__.split(":", 1)[1].strip() + "\n\n"
                "Only names change: factor bytes are streamed unchanged and the scale travels as kohya alpha "
                "tensors, diffusers' lora_adapter_metadata, or peft's adapter_config.json. kohya output uses SGM "
                "names. peft output is a directory. Refuses (exit 5) what cannot be converted without loss: "
                "LyCORIS, experts, two roles on one module, DoRA into kohya.\n\n"
                "Examples:\n\n"
                "  adapterctl convert my_lora.safetensors --to diffusers\n\n"
                "  adapterctl convert blora.safetensors --to kohya -o blora_a1111.safetensors\n\n"
                "  adapterctl convert unet_lora.safetensors --to peft -o my_adapter/")(convert_cmd)


def convert_cmd(
    path: InputArg,
    to: Annotated[str, typer.Option("--to", help=f"Target layout: {' or '.join(writable())}.", show_default=False)],
    output: OutputOpt = None,
    force: ForceOpt = False,
    fsync: FsyncOpt = False,
    strip_metadata: StripOpt = False,
    arch: ArchOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from adapterctl.layouts.registry import writer

    write_command(path, lambda a: a.convert(to), suffix=to, directory=writer(to).directory, output=output, force=force,
                  fsync=fsync, strip_metadata=strip_metadata, arch=arch, json_out=json_out, quiet=quiet)
