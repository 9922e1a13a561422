"""Sampling images with adapters fused into a loaded base, one at a time or as a labelled grid.

``generate`` fuses the adapters (``torch/apply.py``), samples one image with the diffusers
pipeline and restores the base weights. ``grid`` renders a content × style matrix across seeds
from the one loaded pipeline, restoring the weights between cells. Its layout, with w × h the
size of one sample, S seeds, R = 1 + contents rows and C = 1 + styles columns:

- row 0 is "no content", then one row per content adapter; column 0 is "no style", then one
  column per style adapter; so the top-left cell is the base model alone;
- each cell is a strip of S samples side by side, in seed order;
- a label margin of L = 192·u px on the left (the row's adapter: file stem, role and scale),
  a header of T = 40·u px on top (the column's), and a gap of G = 8·u px between cells, where
  u = max(1, min(w, h) // 256) so labels stay legible at 1024 px;
- the image is W = L + C·S·w + (C − 1)·G wide and H = T + R·h + (R − 1)·G high (``grid_size``).

Sampling is deterministic for a seed on one device and thread count: the same call gives the
same pixels. Library code: nothing is printed; ``progress`` receives one line per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from adapterctl.errors import UsageError
from adapterctl.torch.apply import AdapterSpec, fuse

MAX_SIDE = 4096
MAX_STEPS = 1000
MAX_GRID_PIXELS = 1 << 28  # ~800 MB of RGB: a typo in --seeds must not ask for more
Progress = Optional[Callable[[str], None]]


@dataclass(frozen=True)
class Settings:
    """What every sample of one run shares."""

    prompt: str
    steps: int = 30
    guidance: float = 5.0
    width: Optional[int] = None  # None: the base's native resolution
    height: Optional[int] = None
    negative_prompt: Optional[str] = None


def check_settings(settings: Settings, factor: int = 8) -> None:
    """Refuse sizes the VAE cannot decode (a multiple of its ``factor``), absurd sizes and step
    counts, before anything is loaded or sampled."""
    for name, value in (("width", settings.width), ("height", settings.height)):
        if value is None:
            continue
        if not 0 < value <= MAX_SIDE or value % factor:
            raise UsageError(f"--{name} {value} must be a positive multiple of {factor} up to {MAX_SIDE}",
                             hint=f"the VAE works in {factor}-pixel cells; e.g. {max(factor, value // factor * factor)}")
    if not 1 <= settings.steps <= MAX_STEPS:
        raise UsageError(f"--steps {settings.steps} must be between 1 and {MAX_STEPS}")
    if not math.isfinite(settings.guidance):
        raise UsageError(f"--guidance {settings.guidance} is not finite")


def resolved(base, settings: Settings) -> Settings:
    """``settings`` with the base's native size filled in and checked against its VAE factor."""
    from dataclasses import replace

    done = replace(settings, width=base.resolution if settings.width is None else settings.width,
                   height=base.resolution if settings.height is None else settings.height)
    check_settings(done, int(getattr(base.pipe, "vae_scale_factor", 8) or 8))
    return done


def render(base, settings: Settings, seed: int):
    """One sample from the pipeline as it is now (adapters fused or not): a PIL image."""
    pipe = base.pipe
    generator = torch.Generator(device=pipe.device).manual_seed(int(seed))
    with torch.inference_mode():
        out = pipe(prompt=settings.prompt, negative_prompt=settings.negative_prompt,
                   num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                   width=settings.width, height=settings.height, generator=generator)
    return out.images[0]


def generate(base, prompt: str, specs: Sequence[AdapterSpec] = (), *, seed: int = 0, steps: int = 30,
             guidance: float = 5.0, width: Optional[int] = None, height: Optional[int] = None,
             negative_prompt: Optional[str] = None):
    """Fuse ``specs`` into ``base``, sample one image, restore the base weights; a PIL image."""
    settings = resolved(base, Settings(prompt, steps, guidance, width, height, negative_prompt))
    with fuse(base.pipe, base.arch, specs):
        return render(base, settings, seed)


def grid_unit(width: int, height: int) -> int:
    return max(1, min(width, height) // 256)


def grid_size(width: int, height: int, rows: int, cols: int, seeds: int) -> tuple[int, int]:
    """(W, H) of a grid of ``rows`` × ``cols`` cells of ``seeds`` samples of width × height each."""
    u = grid_unit(width, height)
    label, header, gap = 192 * u, 40 * u, 8 * u
    return label + cols * seeds * width + (cols - 1) * gap, header + rows * height + (rows - 1) * gap


def grid(base, prompt: str, contents: Sequence[AdapterSpec], styles: Sequence[AdapterSpec], seeds: Sequence[int],
         *, steps: int = 30, guidance: float = 5.0, width: Optional[int] = None, height: Optional[int] = None,
         negative_prompt: Optional[str] = None, progress: Progress = None):
    """The content × style matrix described in the module docstring, as one PIL image."""
    from PIL import Image, ImageDraw

    from adapterctl.torch.apply import plan

    settings = resolved(base, Settings(prompt, steps, guidance, width, height, negative_prompt))
    if not seeds:
        raise UsageError("a grid needs at least one seed")
    w, h = settings.width, settings.height
    rows, cols = [None, *contents], [None, *styles]
    size = grid_size(w, h, len(rows), len(cols), len(seeds))
    if size[0] * size[1] > MAX_GRID_PIXELS:
        raise UsageError(f"the grid would be {size[0]}x{size[1]} pixels", hint="fewer seeds, adapters or pixels")
    plan(base.arch, [*contents, *styles])  # every refusal before the first sample
    u = grid_unit(w, h)
    canvas = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(12 * u)
    label, header, gap = 192 * u, 40 * u, 8 * u
    total, done = len(rows) * len(cols) * len(seeds), 0
    _text(draw, (4 * u, 4 * u), ["seeds " + ", ".join(map(str, seeds))], font, label - 8 * u, u)
    for c, style in enumerate(cols):
        _text(draw, (label + c * (len(seeds) * w + gap) + 4 * u, 4 * u), _lines(style, "no style"), font,
              len(seeds) * w - 8 * u, u)
    for r, content in enumerate(rows):
        top = header + r * (h + gap)
        _text(draw, (4 * u, top + 4 * u), _lines(content, "no content"), font, label - 8 * u, u)
        for c, style in enumerate(cols):
            left = label + c * (len(seeds) * w + gap)
            with fuse(base.pipe, base.arch, [s for s in (content, style) if s is not None]):
                for i, seed in enumerate(seeds):
                    done += 1
                    if progress is not None:
                        progress(f"sample {done}/{total}: {_name(content, 'no content')} x "
                                 f"{_name(style, 'no style')}, seed {seed}")
                    canvas.paste(render(base, settings, seed).convert("RGB"), (left + i * w, top))
    return canvas


def _name(spec: Optional[AdapterSpec], none: str) -> str:
    return none if spec is None else spec.label


def _lines(spec: Optional[AdapterSpec], none: str) -> list[str]:
    if spec is None:
        return [none]
    return [spec.path.stem, f"{spec.role or 'all'}, scale {spec.scale:g}"]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font where Pillow has FreeType
    except (TypeError, OSError):
        return ImageFont.load_default()


def _text(draw, xy: tuple[int, int], lines: list[str], font, max_width: int, u: int) -> None:
    """Draw ``lines`` from ``xy`` down, each cut to ``max_width`` px (file names are untrusted and
    may be long; control characters are shown escaped)."""
    from adapterctl.textsafe import clip

    x, y = xy
    for line in lines:
        draw.text((x, y), _fit(draw, clip(line, 200), font, max_width), fill="black", font=font)
        y += 15 * u


def _fit(draw, text: str, font, max_width: int) -> str:
    if draw.textlength(text, font=font) <= max_width:
        return text
    while text and draw.textlength(text + "...", font=font) > max_width:
        text = text[:-1]
    return text + "..."
