"""adapterctl generate: sample an image from a base model with adapters fused into its weights.

Each --adapter is FILE, FILE:ROLE, FILE:ROLE=SCALE or FILE:SCALE (ROLE: content, style or
untagged; the roles come from the file's manifest, per block, or are inferred for B-LoRA
files). Only the text after the last ':' is read as a role or scale, so paths with ':' work.
The scale is linear: the base weight gets ΔW·scale. The reference B-LoRA inference multiplies
both up and down by alpha, so its effective scale is alpha²: to reproduce a reference run made
with alpha a, pass scale a² (alpha 0.5 is FILE:style=0.25). Expert (StyleInject) files are
routed per input and cannot be fused: collapse them first with adapterctl merge FILE --method
experts --mix ...

--grid renders a labelled content × style matrix from one loaded model: rows are "no content"
then each FILE:content adapter, columns "no style" then each FILE:style adapter, and every
cell is a strip of one sample per --seeds seed (so the top-left cell is the base alone). With w
× h samples, S seeds, R rows and C columns, u = max(1, min(w, h) // 256), the image is
192u + C·S·w + (C−1)·8u wide and 40u + R·h + (R−1)·8u high.

--base tiny is adapterctl's embedded tiny SDXL-shaped model: its weights are random, so its
images are noise. It is there for trying the tool and for tests, without a download.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from adapterctl.cli._help import command_help
from adapterctl.cli.options import ForceOpt, JsonOpt, QuietOpt

_DEFAULT_OUTPUT, _DEFAULT_GRID = "generated.png", "grid.png"
MAX_SEEDS = 64
_SEED_MAX = 2 ** 63 - 1


def register(app: typer.Typer) -> None:
    app.command("generate", help=command_help(
        __doc__,
        examples=[
            "adapterctl generate \"a dog\" --adapter blora.safetensors:style=0.8 -o dog.png",
            "adapterctl generate \"a dog\" --adapter dog.safetensors:content --adapter "
            "painting.safetensors:style --seed 7",
            "adapterctl generate \"a dog\" --grid --adapter dog.safetensors:content --adapter "
            "painting.safetensors:style --seeds 0,1,2",
            "adapterctl generate \"a dog\" --base tiny --adapter blora.safetensors --steps 2",
        ]))(generate_cmd)


def generate_cmd(
    prompt: Annotated[str, typer.Argument(help="What to draw.", show_default=False)],
    adapter: Annotated[Optional[list[str]], typer.Option(
        "--adapter", "-a", metavar="FILE[:ROLE[=SCALE]]",
        help="An adapter to fuse, repeatable: FILE, FILE:ROLE, FILE:ROLE=SCALE or FILE:SCALE (scale linear, "
             "default 1).")] = None,
    base: Annotated[Optional[str], typer.Option(
        "--base", metavar="tiny|PATH|REPO", show_default=False,
        help="Base model: a diffusers folder, a .safetensors checkpoint, a Hub repo id (from the cache, else "
             "downloaded), or 'tiny' (random weights: noise images). "
             "Default: stabilityai/stable-diffusion-xl-base-1.0.")] = None,  # torch/base.DEFAULT_BASE; tested
    revision: Annotated[Optional[str], typer.Option("--revision", metavar="REV",
                                                    help="Hub revision of --base (branch, tag or commit).")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", metavar="PATH", dir_okay=False,
        help=f"Where to write the PNG (default: {_DEFAULT_OUTPUT}, or {_DEFAULT_GRID} with --grid).")] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="N",
                                      help="Noise seed, 0 to 2^63-1 (same seed, same image).")] = 0,
    steps: Annotated[int, typer.Option("--steps", metavar="N", help="Sampling steps (1-1000).")] = 30,
    guidance: Annotated[float, typer.Option("--guidance", metavar="G",
                                            help="Classifier-free guidance scale.")] = 5.0,
    width: Annotated[Optional[int], typer.Option("--width", metavar="PX", show_default=False,
                                                 help="Image width, a multiple of 8 (default: the base's "
                                                      "native size, 1024 for SDXL).")] = None,
    height: Annotated[Optional[int], typer.Option("--height", metavar="PX", show_default=False,
                                                  help="Image height, a multiple of 8 (default: native).")] = None,
    negative_prompt: Annotated[Optional[str], typer.Option("--negative-prompt", metavar="TEXT",
                                                           help="What to steer away from.")] = None,
    grid: Annotated[bool, typer.Option("--grid", help="Render the content × style matrix of the adapters "
                                                      "(each needs :content or :style) across --seeds.")] = False,
    seeds: Annotated[Optional[str], typer.Option("--seeds", metavar="N,N,...",
                                                 help="--grid: the seeds of each cell's strip (default: "
                                                      "--seed).")] = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    import adapterctl.torch as at
    from adapterctl.cli import _env
    from adapterctl.cli.output import Output
    from adapterctl.errors import UsageError
    from adapterctl.io.atomic import check_output

    at.require()
    at.quiet_libraries()
    if not _env.USER_PINNED_THREADS:
        at.use_all_cores(base)

    from adapterctl.torch.apply import parse_adapter_spec, plan
    from adapterctl.torch.base import DEFAULT_BASE, load_base
    from adapterctl.torch.generate import Settings, check_settings, resolved

    out = Output(json_mode=json_out, quiet=quiet)
    specs = [parse_adapter_spec(text) for text in adapter or []]
    settings = Settings(prompt, steps, guidance, width, height, negative_prompt)
    check_settings(settings)  # the VAE factor is checked again once the base is loaded
    seed_list = _seeds(seeds, seed, grid)
    contents, styles = _grid_axes(specs) if grid else ([], [])
    target = output or Path(_DEFAULT_GRID if grid else _DEFAULT_OUTPUT)
    if target.suffix.lower() != ".png":
        raise UsageError(f"the output is a PNG image; '{target.name}' does not end in .png", hint="-o NAME.png")
    inputs = tuple(s.path for s in specs)
    # Refuse what can be refused before loading the base, which takes a minute for SDXL: the
    # output, and every adapter's file, roles and branch kinds (its architecture needs the base).
    check_output(target, force=force, inputs=inputs)
    plan(None, specs)

    with _status(out, "loading the base model"):
        model = load_base(base or DEFAULT_BASE, revision=revision)
    settings = resolved(model, settings)
    planned = plan(model.arch, specs)  # now the architecture too, before the first sample
    with _status(out, "sampling") as status:
        image = _sample(model, settings, specs, contents, styles, seed_list, grid, status)
    png = _png(image, model, settings, specs, seed_list)
    _write(target, png, force=force, inputs=inputs)

    result = {"ok": True, "output": _shown(target), "base": _shown(model.name), "revision": model.revision,
              "width": settings.width, "height": settings.height, "steps": settings.steps,
              "guidance": settings.guidance, "seeds": seed_list,
              "image": {"width": image.width, "height": image.height, "bytes": len(png)},
              "adapters": [{"path": _shown(p.spec.path), "role": p.spec.role, "scale": p.spec.scale,
                            "modules": p.modules, "roles": p.roles} for p in planned]}
    if grid:
        result["grid"] = {"rows": ["no content", *(s.label for s in contents)],
                          "cols": ["no style", *(s.label for s in styles)]}
    out.result(result)
    what = (f"{len(contents) + 1}x{len(styles) + 1} grid of {len(seed_list)} seed(s)" if grid
            else f"seed {seed_list[0]}")
    out.done(f"Wrote {_shown(target)} ({image.width}x{image.height}, {what}, "
             f"{sum(p.modules for p in planned)} modules fused from {len(planned)} adapter(s))")


def _seeds(text: Optional[str], seed: int, grid: bool) -> list[int]:
    from adapterctl.errors import UsageError
    from adapterctl.textsafe import clip

    if text is None:
        if not 0 <= seed <= _SEED_MAX:
            raise UsageError(f"--seed {seed} must be between 0 and 2^63-1")
        return [seed]
    if not grid:
        raise UsageError("--seeds is for --grid", hint="one image takes --seed N")
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--seeds '{clip(text, 100)}' is not a list of integers", hint="e.g. --seeds 0,1,2") from None
    if not values or len(values) > MAX_SEEDS or any(not 0 <= v <= _SEED_MAX for v in values):
        raise UsageError(f"--seeds takes 1 to {MAX_SEEDS} integers from 0 to 2^63-1, got '{clip(text, 100)}'")
    return values


def _grid_axes(specs):
    from adapterctl.errors import UsageError
    from adapterctl.textsafe import clip

    contents = [s for s in specs if s.role == "content"]
    styles = [s for s in specs if s.role == "style"]
    others = [s for s in specs if s.role not in ("content", "style")]
    if others:
        raise UsageError(f"--grid puts each adapter on the content or the style axis; "
                         f"'{clip(str(others[0].path), 120)}' has role {others[0].role or 'none'}",
                         hint="pass FILE:content or FILE:style (one file may be given as both)")
    if not specs:
        raise UsageError("--grid needs adapters", hint="--adapter FILE:content and/or --adapter FILE:style")
    return contents, styles


def _sample(model, settings, specs, contents, styles, seeds, grid, status):
    from adapterctl.torch.apply import fuse
    from adapterctl.torch.generate import grid as draw_grid
    from adapterctl.torch.generate import render

    if grid:
        return draw_grid(model, settings.prompt, contents, styles, seeds, steps=settings.steps,
                         guidance=settings.guidance, width=settings.width, height=settings.height,
                         negative_prompt=settings.negative_prompt, progress=status)
    with fuse(model.pipe, model.arch, specs):
        return render(model, settings, seeds[0])


def _png(image, model, settings, specs, seeds) -> bytes:
    """The PNG bytes, with the run's settings in a text chunk (file names only, never paths)."""
    import io
    import json

    from PIL.PngImagePlugin import PngInfo

    from adapterctl.version import __version__

    info = PngInfo()
    info.add_text("Software", f"adapterctl {__version__}")
    info.add_text("adapterctl", json.dumps({
        "prompt": settings.prompt, "negative_prompt": settings.negative_prompt, "steps": settings.steps,
        "guidance": settings.guidance if math.isfinite(settings.guidance) else None, "seeds": seeds,
        "width": settings.width, "height": settings.height, "base": Path(model.name).name,
        "revision": model.revision, "adapters": [s.label for s in specs]}, ensure_ascii=True))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _write(target: Path, data: bytes, *, force: bool, inputs: tuple[Path, ...]) -> None:
    from adapterctl.io.atomic import atomic_write

    with atomic_write(target, force=force, inputs=inputs) as fh:
        fh.write(data)


def _shown(path: Path) -> str:
    from adapterctl.textsafe import display_path

    return display_path(path)


class _status:
    """A transient spinner line on stderr (nothing with --json or --quiet, or off a terminal);
    calling it updates the text."""

    def __init__(self, out, text: str):
        self.live = None if out.json_mode or out.quiet else out.err.status(text)

    def __enter__(self):
        if self.live is not None:
            self.live.__enter__()
        return self

    def __call__(self, text: str) -> None:
        if self.live is not None:
            from adapterctl.cli.output import plain

            self.live.update(plain(text))

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)
