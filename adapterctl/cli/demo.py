"""adapterctl demo: a tour of the toolchain on the examples shipped with the package, training included."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from adapterctl.cli._help import command_help
from adapterctl.cli.options import JsonOpt, QuietOpt
from adapterctl.cli.output import Output


def register(app: typer.Typer) -> None:
    app.command("demo", help=command_help(
        __doc__,
        "Runs inspect, split, convert and validate on a B-LoRA file in old diffusers naming and a kohya "
        "LoCon file; then, with the training extra, trains B-LoRAs on two shipped sample pictures with "
        "the embedded tiny base (random weights: its images are noise), splits one, merges them with "
        "ZipLoRA, converts the merge, and renders a content x style grid. Writes into a work directory.",
        examples=[
            "adapterctl demo --workdir /tmp/adapterctl-demo",
        ]))(demo_cmd)


def demo_cmd(
    workdir: Annotated[Optional[Path], typer.Option("--workdir", help="Where outputs go (default: a new temp dir).")] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from adapterctl.demo import run_demo

    out = Output(json_mode=json_out, quiet=quiet)
    result = run_demo(workdir, log=out.note if not json_out else (lambda _m: None))
    out.result(result, lambda console, r: console.print(
        f"demo {'ok' if r['ok'] else 'FAILED'}: {len(r['steps'])} steps in {r['seconds']} s, outputs in {r['workdir']}"))
    if not result["ok"]:
        raise typer.Exit(1)
