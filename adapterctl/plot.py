"""Per-block heatmaps as PNG, for people who would rather look than read a table of numbers.

A grid of blocks x metrics shows at a glance which blocks carry the interference or the energy;
the numbers are still printed in every cell for those who want them. Pillow is an optional
dependency (``adapterctl[plot]``): it is imported only when a plot is asked for.
"""

from __future__ import annotations

import math

from adapterctl.errors import UsageError
from adapterctl.textsafe import clip

MAX_ROWS = 200  # a file may claim any number of blocks; the image (and its cost) stays bounded
_PAD = 6
_NA_GREY = (190, 190, 190)  # no viridis colour is this neutral, so a missing value cannot pass for a low one
# Viridis anchors: perceptually ordered and readable in greyscale and by most colour-blind viewers.
_RAMP = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


def _colour(t: float) -> tuple[int, int, int]:
    """Colour for ``t`` in [0, 1], interpolated linearly between the ramp's anchors."""
    t = min(1.0, max(0.0, t)) * (len(_RAMP) - 1)
    i = min(int(t), len(_RAMP) - 2)
    f = t - i
    a, b = _RAMP[i], _RAMP[i + 1]
    return tuple(round(p + (q - p) * f) for p, q in zip(a, b))  # type: ignore[return-value]


def _number(value) -> float | None:
    # Values may come from a file: anything that is not a number is shown as missing, not raised on.
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _cell_text(v: float | None) -> str:
    if v is None or math.isnan(v):
        return "n/a"
    # A huge value written with %.3f would be hundreds of digits wide; keep the column narrow.
    return f"{v:.3f}" if math.isinf(v) or abs(v) < 1e6 else f"{v:.3e}"


def _load_font(ImageFont):
    try:
        return ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1: only the small bitmap font, no size
        return ImageFont.load_default()


def block_heatmap_png(rows: list[dict], metrics: list[tuple[str, str]], *, title: str) -> bytes:
    """A PNG heatmap: one row per block (in the given order), one column per metric.

    Each column is coloured on its own scale, from its smallest to its largest finite value;
    missing values (None, NaN, non-numbers) are grey and read "n/a"; infinities are grey too.
    """
    try:
        from io import BytesIO

        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise UsageError("--plot needs Pillow", hint="pip install 'adapterctl[plot]'") from None

    font = _load_font(ImageFont)
    bitmap = not isinstance(font, ImageFont.FreeTypeFont)

    def text(s: str) -> str:
        # The bitmap fallback font encodes as Latin-1 and raises on anything else ('…' included).
        return s.encode("latin-1", "replace").decode("latin-1") if bitmap else s

    shown = rows[:MAX_ROWS]
    labels = [text(clip(str(r.get("block", "")), 48)) for r in shown]
    if len(rows) > MAX_ROWS:
        labels.append(text(f"… {len(rows) - MAX_ROWS} more"))
    heads = [text(clip(str(label), 48)) for _, label in metrics]
    values = [[_number(r.get(key)) for key, _ in metrics] for r in shown]
    cells = [[_cell_text(v) for v in row] for row in values]
    title = text(clip(str(title), 120))

    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(s: str) -> tuple[int, int]:
        # Measured from the drawing origin, not the ink: text is drawn at the origin, and the
        # ascender offset above the ink would otherwise push descenders out of their cell.
        _, _, right, bottom = measure.textbbox((0, 0), s, font=font)
        return right, bottom

    line_h = max(size(s)[1] for s in ["Ag|", title, *labels, *heads]) + 2 * _PAD
    label_w = max([size(s)[0] for s in labels] + [0]) + 2 * _PAD
    col_w = [
        max([size(h)[0]] + [size(row[j])[0] for row in cells]) + 2 * _PAD for j, h in enumerate(heads)
    ]
    grid_w = label_w + sum(col_w)
    width = max(grid_w, size(title)[0] + 2 * _PAD) + 2 * _PAD
    height = line_h * (2 + len(labels)) + 2 * _PAD  # title, column heads, one line per row

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((_PAD * 2, _PAD * 2), title, fill="black", font=font)
    top = _PAD + 2 * line_h
    x = _PAD + label_w
    for j, head in enumerate(heads):
        draw.text((x + _PAD, _PAD + line_h + _PAD), head, fill="black", font=font)
        finite = [row[j] for row in values if row[j] is not None and math.isfinite(row[j])]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
        for i, row in enumerate(values):
            v = row[j]
            if v is None or not math.isfinite(v):
                fill = _NA_GREY
            else:  # an all-equal column has no scale: the middle colour says "no contrast here"
                fill = _colour((v - lo) / (hi - lo) if hi > lo else 0.5)
            y = top + i * line_h
            draw.rectangle([x, y, x + col_w[j] - 1, y + line_h - 1], fill=fill)
            # Dark text on light cells, light on dark: the number must stay readable on any colour.
            luma = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
            draw.text((x + _PAD, y + _PAD), cells[i][j], fill="black" if luma > 128 else "white", font=font)
        x += col_w[j]
    for i, label in enumerate(labels):
        draw.text((_PAD * 2, top + i * line_h + _PAD), label, fill="black", font=font)

    out = BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()
