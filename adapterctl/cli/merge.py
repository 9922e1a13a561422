"""adapterctl merge: combine adapters into one: ZipLoRA (data-free or calibrated), NP-LoRA, exact sums, SVD, TIES/DARE, experts.

Every method works one module at a time and never holds the whole model: cat/linear/zip/np are
exact in low rank (the factors are concatenated, mergers and projections folded in), svd
compresses the exact sum by a low-rank SVD, ties/dare build one module's dense update at a time.
For zip and np the content and style inputs are picked by their roles (a B-LoRA file holds
both: content comes from the first input, style from the second); untagged files need
--content FILE --style FILE. Modules only one input has are copied unchanged. zip with --base
learns its mergers as ZipLoRA does, through the base model's UNet on the reference images
(recorded by 'adapterctl train', or --content-image/--style-image); needs the train extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from adapterctl.cli._help import command_help
from adapterctl.cli._write import Extras, default_output, save_and_report
from adapterctl.cli.options import ArchOpt, ForceOpt, FsyncOpt, JsonOpt, OutputOpt, QuietOpt
from adapterctl.cli.output import Output
from adapterctl.cli.prune import ReportOpt
from adapterctl.layouts.registry import writable, writer

PlotOpt = Annotated[Optional[Path], typer.Option("--plot", help="Also draw block x metric heatmaps (PNG; needs "
                                                                "Pillow: pip install 'adapterctl[plot]').",
                                                 dir_okay=False)]
_FileOpt = dict(show_default=False, readable=False, dir_okay=True)


def register(app: typer.Typer) -> None:
    app.command("merge", help=command_help(
        __doc__,
        examples=[
            "adapterctl merge --list",
            "adapterctl merge dog.safetensors painting.safetensors --method zip --report zip.json",
            "adapterctl merge dog.safetensors painting.safetensors --method zip --base "
            "stabilityai/stable-diffusion-xl-base-1.0",
            "adapterctl merge --content dog.safetensors --style painting.safetensors --method np",
            "adapterctl merge a.safetensors b.safetensors --method svd --rank 64 --weights 1,0.7",
            "adapterctl merge styleinject.safetensors --method experts --mix 0.5,0.3,0.2",
        ]))(merge_cmd)


def merge_cmd(
    paths: Annotated[Optional[list[Path]], typer.Argument(help="Input adapters (.safetensors or peft dirs).",
                                                          show_default=False, readable=False)] = None,
    method: Annotated[Optional[str], typer.Option("--method", "-m", help="Merge method (see --list).")] = None,
    list_methods: Annotated[bool, typer.Option("--list", help="List the merge methods and exit.")] = False,
    content: Annotated[Optional[Path], typer.Option("--content", help="The content input (zip, np).",
                                                    **_FileOpt)] = None,
    style: Annotated[Optional[Path], typer.Option("--style", help="The style input (zip, np).", **_FileOpt)] = None,
    pick_roles: Annotated[bool, typer.Option("--pick-roles", help="Take content from one input and style from "
                                                                  "the other, as zip does, for any method.")] = False,
    weights: Annotated[Optional[str], typer.Option("--weights", help="One weight per input, e.g. 1,0.7.")] = None,
    block_weights: Annotated[Optional[list[str]], typer.Option(
        "--block-weights", help="12/20 LBW weights, a preset, or BLOCK=W,...; once for all inputs or once "
                                "per input.")] = None,
    rank: Annotated[Optional[int], typer.Option("--rank", help="Output rank (svd, ties, dare); the cap with "
                                                               "--dynamic.")] = None,
    dynamic: Annotated[Optional[str], typer.Option("--dynamic", help="svd: each module's rank from the sum's "
                                                                     "singular values: sv_ratio, sv_fro or "
                                                                     "sv_cumulative (as in prune).")] = None,
    param: Annotated[Optional[float], typer.Option("--param", help="The --dynamic rule's parameter.")] = None,
    density: Annotated[Optional[float], typer.Option("--density", help="Share of entries kept (ties, dare).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the random masks (dare), or of the "
                                                               "calibration's noise (zip --base; default 0).")] = None,
    lam: Annotated[Optional[float], typer.Option("--lambda", help="Merger-overlap penalty (zip).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Most optimiser steps per module (zip).")] = None,
    axis: Annotated[Optional[str], typer.Option("--axis", help="What zip's mergers scale: input or output.")] = None,
    base: Annotated[Optional[str], typer.Option(
        "--base", help="zip: calibrate the mergers on images through this base model (tiny, a diffusers folder, a "
                       ".safetensors checkpoint or a Hub id), as ZipLoRA does.", show_default=False)] = None,
    revision: Annotated[Optional[str], typer.Option("--revision", help="The --base Hub repo's branch, tag or "
                                                                       "commit.")] = None,
    content_image: Annotated[Optional[Path], typer.Option(
        "--content-image", help="zip --base: the content reference image (default: the one the content "
                                "input records).", **_FileOpt)] = None,
    style_image: Annotated[Optional[Path], typer.Option(
        "--style-image", help="zip --base: the style reference image (default: the one the style input "
                              "records).", **_FileOpt)] = None,
    content_prompt: Annotated[Optional[str], typer.Option("--content-prompt", help="zip --base: the content "
                                                                                   "LoRA's prompt.")] = None,
    style_prompt: Annotated[Optional[str], typer.Option("--style-prompt", help="zip --base: the style LoRA's "
                                                                               "prompt.")] = None,
    calibration_steps: Annotated[Optional[int], typer.Option(
        "--calibration-steps", help="zip --base: most Adam steps (default 100).")] = None,
    mu: Annotated[Optional[float], typer.Option("--mu", help="Projection strength (np).")] = None,
    project: Annotated[Optional[str], typer.Option("--project", help="Which update np projects: content or "
                                                                     "style.")] = None,
    mix: Annotated[Optional[str], typer.Option("--mix", help="Expert weights W1,...,Wn (experts).")] = None,
    calibration: Annotated[Optional[Path], typer.Option(
        "--calibration", help="safetensors of mean router inputs per module (experts).", **_FileOpt)] = None,
    to: Annotated[Optional[str], typer.Option("--to", help=f"Output layout: {' or '.join(writable())} "
                                                           "(default: the first input's).")] = None,
    report: ReportOpt = None,
    plot: PlotOpt = None,
    output: OutputOpt = None,
    force: ForceOpt = False,
    fsync: FsyncOpt = False,
    arch: ArchOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from adapterctl.errors import UsageError

    out = Output(json_mode=json_out, quiet=quiet)
    if list_methods:
        _list(out)
        return
    if method is None:
        raise UsageError("which method? pass --method NAME", hint="adapterctl merge --list")
    inputs = list(paths or [])
    pair = None
    if content is not None or style is not None:
        if content is None or style is None or inputs:
            raise UsageError("--content and --style go together, and replace the positional inputs")
        inputs, pair = [content, style], (0, 1)
    if not inputs:
        raise UsageError("no inputs", hint="adapterctl merge A.safetensors B.safetensors --method cat")
    if base is None:
        for flag, value in (("--revision", revision), ("--content-image", content_image),
                            ("--style-image", style_image), ("--content-prompt", content_prompt),
                            ("--style-prompt", style_prompt), ("--calibration-steps", calibration_steps)):
            if value is not None:
                raise UsageError(f"{flag} is used only when calibrating zip on a base model",
                                 hint="add --base MODEL (with --method zip), or drop it")
    elif method != "zip":
        from adapterctl.ops.registry import method as find_method

        find_method(method)  # an unknown name is reported as such
        raise UsageError(f"--base calibrates zip's mergers on images; merge --method {method} takes no base model",
                         hint="use --method zip, or drop --base")
    else:
        import adapterctl.torch as torch_extra
        from adapterctl.cli._env import USER_PINNED_THREADS

        torch_extra.require()
        torch_extra.quiet_libraries()
        if not USER_PINNED_THREADS:
            torch_extra.use_all_cores(base)
    calibration_options = {} if base is None else {
        "base": base, "revision": revision, "content_image": content_image, "style_image": style_image,
        "content_prompt": content_prompt, "style_prompt": style_prompt, "calibration_steps": calibration_steps}
    options = {"rank": rank, "dynamic": dynamic, "param": param, "density": density, "seed": seed, "lam": lam, "steps": steps,
               "axis": axis, "mu": mu, "project": project, "mix": _numbers(mix, "--mix"),
               "calibration": str(calibration) if calibration is not None else None}
    from adapterctl.adapter import Adapter
    from adapterctl.ops.merge import merge

    opened = []
    try:
        for p in inputs:
            opened.append(Adapter.open(p, arch=arch))
        merged = merge(opened, method, weights=_numbers(weights, "--weights"), block_weights=block_weights or [],
                       content=pair[0] if pair else None, style=pair[1] if pair else None, pick_roles=pick_roles,
                       to=to, measure_quality=report is not None or plot is not None, **calibration_options,
                       **options)
        for note in merged.report.notes:
            out.note(note)
        target = output or _default_output(inputs, method, to)
        extras = Extras(report=report, plot=plot, summary=_summary,
                        document=lambda a: a.report.to_dict() if a.report is not None and a.report.measured else None,
                        draw=_draw)
        save_and_report(out, merged, target, force=force, strip_metadata=False, fsync=fsync, extras=extras)
    finally:
        for a in opened:
            a.close()


def _default_output(inputs: list[Path], method: str, to: Optional[str]) -> Path:
    stem = "+".join(p.name if p.is_dir() else p.stem for p in inputs[:3])
    return default_output(inputs[0].parent / stem, method, directory=to is not None and writer(to).directory)


def _numbers(text: Optional[str], flag: str) -> Optional[list[float]]:
    from adapterctl.errors import UsageError

    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated numbers, got '{text}'") from None


def _list(out: Output) -> None:
    from adapterctl.ops.registry import METHODS

    rows = [{"name": m.name, "inputs": m.inputs, "parameters": list(m.Params.model_fields), "summary": m.summary}
            for m in METHODS]

    def render(console, data):
        from rich.table import Table

        table = Table(title="Merge methods", title_justify="left")
        for col in ("method", "inputs", "parameters", "what it does"):
            table.add_column(col)
        for r in data["methods"]:
            table.add_row(r["name"], r["inputs"], ", ".join(r["parameters"]) or "-", r["summary"])
        console.print(table)

    out.result({"ok": True, "methods": rows}, render)


_SHOWN = (("interference", "interference"), ("interference_direct", "direct merge"), ("ratio", "ratio"),
          ("paired_column_cosine", "column cos"), ("row_overlap", "row overlap"))


def _summary(console, document: dict) -> None:
    from rich.table import Table

    from adapterctl.cli.output import plain

    table = Table(title=f"Merge quality proxies ({plain(document['method'])}; lower interference is better)",
                  title_justify="left")
    table.add_column("block")
    table.add_column("modules", justify="right")
    for _, label in _SHOWN:
        table.add_column(label, justify="right")
    for row in document["blocks"] + [dict(document["overall"], block="all")]:
        table.add_row(plain(str(row["block"])), str(row["modules"]),
                      *(f"{row[key]:.4f}" if isinstance(row.get(key), float) else "-" for key, _ in _SHOWN))
    console.print(table)


def _draw(document: dict, path: Path, *, force: bool, inputs) -> None:
    from adapterctl.io.atomic import atomic_write
    from adapterctl.ops.merge_report import BLOCK_METRICS
    from adapterctl.plot import block_heatmap_png

    png = block_heatmap_png(document["blocks"], [(k, k.replace("_", " ")) for k in BLOCK_METRICS],
                            title=f"merge --method {document['method']}: quality proxies per block")
    with atomic_write(path, force=force, inputs=tuple(inputs)) as fh:
        fh.write(png)
