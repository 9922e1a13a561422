"""adapterctl convert: rewrite an adapter in the kohya, diffusers or peft layout, losslessly."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from adapterctl.cli._help import command_help
from adapterctl.cli._write import default_output, write_command
from adapterctl.cli.output import Output
from adapterctl.layouts.registry import writable
from adapterctl.cli.options import ArchOpt, ForceOpt, FsyncOpt, InputArg, JsonOpt, OutputOpt, QuietOpt, StripOpt


def register(app: typer.Typer) -> None:
    app.command("convert", help=command_help(
        __doc__,
        "Only names change: factor bytes are streamed unchanged and the scale travels as kohya alpha "
        "tensors, diffusers' lora_adapter_metadata, or peft's adapter_config.json. kohya output uses SGM "
        "names. peft output is a directory. Refuses (exit 5) what cannot be converted without loss: "
        "LyCORIS, experts, two roles on one module, DoRA into kohya.",
        examples=[
            "adapterctl convert my_lora.safetensors --to diffusers",
            "adapterctl convert blora.safetensors --to kohya -o blora_a1111.safetensors",
            "adapterctl convert unet_lora.safetensors --to peft -o my_adapter/",
            "adapterctl convert blora.safetensors --for comfyui    # the layout ComfyUI loads completely",
        ]))(convert_cmd)


def convert_cmd(
    path: InputArg,
    to: Annotated[Optional[str], typer.Option("--to", help=f"Target layout: {' or '.join(writable())}.",
                                              show_default=False)] = None,
    for_tool: Annotated[Optional[str], typer.Option(
        "--for", metavar="TOOL", help="Write the layout TOOL loads completely and at the right scale "
                                      "(its recorded profile; see validate --for).")] = None,
    output: OutputOpt = None,
    force: ForceOpt = False,
    fsync: FsyncOpt = False,
    strip_metadata: StripOpt = False,
    arch: ArchOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from adapterctl.consumers.profile import check_names
    from adapterctl.errors import UsageError
    from adapterctl.layouts.registry import writer

    if (to is None) == (for_tool is None):
        raise UsageError("pass --to LAYOUT or --for TOOL (one of them)", hint="adapterctl convert --help")
    if for_tool is not None:
        check_names([for_tool])
        from adapterctl.consumers.profile import load_profiles

        to = load_profiles()[for_tool].convert_to
    layout = writer(to)
    target = output or default_output(path, for_tool or to, directory=layout.directory)
    write_command(path, lambda a: a.convert(to), suffix=for_tool or to, directory=layout.directory, output=target,
                  force=force, fsync=fsync, strip_metadata=strip_metadata, arch=arch, json_out=json_out, quiet=quiet)
    if for_tool is not None:
        _confirm(target, for_tool, Output(json_mode=json_out, quiet=quiet))


def _confirm(target: Path, tool: str, out: Output) -> None:
    """The written file, judged by the tool's profile: it must now load completely."""
    from adapterctl.adapter import Adapter
    from adapterctl.consumers.profile import load_profiles
    from adapterctl.consumers.verdict import judge

    with Adapter.open(target) as written:
        verdict = judge(written, load_profiles()[tool])
    out.note(f"{tool}: {verdict.summary()}")
