"""adapterctl prune: make an adapter smaller with a known error: lower ranks, fewer columns, fewer blocks.

Ranks are cut by optimal truncation (Eckart-Young) of each module's effective update, computed
from the factors one module at a time (never a dense matrix). The scale a loader applies is
kept, so the output's update is exactly the truncated one in kohya, diffusers and peft alike.
The table shows the retained Frobenius energy per block; --report writes it per module too.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from adapterctl.cli._help import command_help
from adapterctl.cli._write import Extras, write_command
from adapterctl.cli.options import ArchOpt, ForceOpt, FsyncOpt, InputArg, JsonOpt, OutputOpt, QuietOpt, StripOpt
from adapterctl.cli.split import _words

_DYNAMIC = "sv_ratio, sv_fro or sv_cumulative"  # ops.prune.Dynamic; checked by a test against the Literal
ReportOpt = Annotated[Optional[Path], typer.Option("--report", help="Also write the measurements as JSON here.",
                                                   dir_okay=False)]


def register(app: typer.Typer) -> None:
    app.command("prune", help=command_help(
        __doc__,
        examples=[
            "adapterctl prune big.safetensors --rank 32 --conv-rank 16",
            "adapterctl prune big.safetensors --dynamic sv_fro --param 0.9 --rank 64",
            "adapterctl prune style.safetensors --columns 0.3 --report kept.json",
            "adapterctl prune blora.safetensors --scale-blocks up_blocks.0.attentions.1=0.7",
        ]))(prune_cmd)


def prune_cmd(
    path: InputArg,
    rank: Annotated[Optional[int], typer.Option("--rank", help="Target rank (the cap, with --dynamic).",
                                                min=1)] = None,
    conv_rank: Annotated[Optional[int], typer.Option("--conv-rank", help="Target rank of conv (LoCon) modules.",
                                                     min=1)] = None,
    dynamic: Annotated[Optional[str], typer.Option("--dynamic", help=f"Choose each rank from the singular values: "
                                                                     f"{_DYNAMIC} (kohya's rules).")] = None,
    param: Annotated[Optional[float], typer.Option("--param", help="The --dynamic rule's parameter: a ratio "
                                                                   "(sv_ratio) or a share in (0, 1].")] = None,
    columns: Annotated[Optional[float], typer.Option("--columns", help="Keep this fraction of each module's input "
                                                                       "features (ΔW columns), the strongest.")] = None,
    energy: Annotated[Optional[float], typer.Option("--energy", help="Keep the fewest columns holding this share "
                                                                     "of each module's energy.")] = None,
    keep_blocks: Annotated[Optional[list[str]], typer.Option("--keep-blocks", help="Keep only these blocks/modules "
                                                             "(selectors, comma-separated or repeated).")] = None,
    scale_blocks: Annotated[Optional[list[str]], typer.Option(
        "--scale-blocks", help="Scale blocks: BLOCK=W[,BLOCK=W...], or 12/20 LBW weights; 0 drops a block.")] = None,
    copy_smaller: Annotated[bool, typer.Option("--copy-smaller", help="Copy modules already at or below the "
                                                                      "target rank instead of refusing.")] = False,
    report: ReportOpt = None,
    output: OutputOpt = None,
    force: ForceOpt = False,
    fsync: FsyncOpt = False,
    strip_metadata: StripOpt = False,
    arch: ArchOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from adapterctl.errors import UsageError
    from adapterctl.ops.prune import Dynamic

    if dynamic is not None and dynamic not in typing.get_args(Dynamic):
        raise UsageError(f"unknown --dynamic rule '{dynamic}'", hint=f"choose {_DYNAMIC}")
    scales = [s for s in scale_blocks or [] if s.strip()]
    suffix = f"r{rank}" if rank and not dynamic else (dynamic or ("columns" if columns or energy else "pruned"))

    def derive(adapter):
        return adapter.prune(rank=rank, conv_rank=conv_rank, dynamic=dynamic, param=param, columns=columns,
                             energy=energy, keep_blocks=_words(keep_blocks), scale_blocks=scales,
                             copy_smaller=copy_smaller)

    extras = Extras(report=report, summary=_summary,
                    document=lambda a: a.report.to_dict() if a.report is not None else None)
    write_command(path, derive, suffix=suffix, output=output, force=force, fsync=fsync,
                  strip_metadata=strip_metadata, arch=arch, json_out=json_out, quiet=quiet, extras=extras)


def _summary(console, document: dict) -> None:
    from rich.table import Table

    from adapterctl.cli.output import plain

    table = Table(title="Retained energy (share of ||ΔW||² kept)", title_justify="left")
    for name in ("block", "modules", "rank", "retained", "rel. error"):
        table.add_column(name, justify="left" if name == "block" else "right")
    for row in document["blocks"] + [dict(document["overall"], block="all")]:
        table.add_row(plain(str(row["block"])), str(row["modules"]), f"{row['rank_in']} → {row['rank_out']}",
                      f"{row['retained_energy']:.4f}", f"{row['relative_error']:.4f}")
    console.print(table)
