"""The per-block heatmap PNG: colours follow the values, hostile names and huge files stay bounded."""

import io
import math
import sys

import pytest

from adapterctl import plot
from adapterctl.errors import UsageError

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

METRICS = [("interference", "interference (merge)"), ("retained_energy", "retained energy")]


def _open(png: bytes) -> "Image.Image":
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG"
    return img.convert("RGB")


def _pixels(img, colour):
    """(count, mean y) of the pixels of exactly ``colour``."""
    w, h = img.size
    px = img.load()
    ys = [y for y in range(h) for x in range(w) if px[x, y] == colour]
    return len(ys), (sum(ys) / len(ys) if ys else math.nan)


def test_png_of_plausible_size_with_min_and_max_coloured_apart():
    rows = [
        {"block": "unet.down.0", "interference": 0.1, "retained_energy": 0.9},
        {"block": "unet.mid", "interference": 0.5, "retained_energy": 0.5},
        {"block": "unet.up.2", "interference": 0.9, "retained_energy": 0.1},
    ]
    img = _open(plot.block_heatmap_png(rows, METRICS, title="per-block interference"))
    w, h = img.size
    assert 100 < w < 1500 and 60 < h < 400

    low, high = plot._colour(0.0), plot._colour(1.0)
    assert low != high
    # Each extreme fills two whole cells (one per column), not a stray pixel.
    assert _pixels(img, low)[0] > 200 and _pixels(img, high)[0] > 200
    # With only the interference column, the minimum sits in the first row, the maximum in the last.
    img1 = _open(plot.block_heatmap_png(rows, METRICS[:1], title="t"))
    (n1_low, y1_low), (n1_high, y1_high) = _pixels(img1, low), _pixels(img1, high)
    assert n1_low > 100 and n1_high > 100 and y1_low < y1_high
    # No missing value, no grey cell (anti-aliased text may produce a few such pixels, not a cell).
    assert _pixels(img1, plot._NA_GREY)[0] < 50


def test_missing_values_are_grey_and_equal_columns_use_the_middle_colour():
    rows = [
        {"block": "a", "interference": None, "retained_energy": 0.3},
        {"block": "b", "interference": float("nan"), "retained_energy": 0.3},
        {"block": "c", "interference": 1.0, "retained_energy": 0.3},
    ]
    img = _open(plot.block_heatmap_png(rows, METRICS, title="t"))
    n_grey, y_grey = _pixels(img, plot._NA_GREY)
    assert n_grey > 400  # two whole cells
    # The constant column and the single finite interference value have no scale: every finite
    # cell takes the middle colour, none an end of the ramp.
    n_mid, y_mid = _pixels(img, plot._colour(0.5))
    assert n_mid > 800
    assert _pixels(img, plot._colour(0.0))[0] == 0 and _pixels(img, plot._colour(1.0))[0] == 0
    assert y_grey < y_mid  # the grey cells are the upper rows


@pytest.mark.parametrize(
    "name",
    ["evil\x1b[2J\x07name", "line1\nline2\r\n", "abc\u202etxt.exe", "\ud800lone", "x" * 500 + "\u202e" * 500],
)
def test_hostile_block_names_draw_and_are_clipped(name):
    rows = [{"block": name, "interference": 0.2, "retained_energy": 0.4}]
    img = _open(plot.block_heatmap_png(rows, METRICS, title=name))
    # clip(…, 48) bounds the label; 500 raw characters would be several thousand pixels wide.
    assert img.size[0] < 2000


def test_long_name_is_clipped_not_cut():
    short = _open(plot.block_heatmap_png([{"block": "b" * 10}], METRICS, title="t")).size[0]
    long = _open(plot.block_heatmap_png([{"block": "b" * 500}], METRICS, title="t")).size[0]
    # Wider than a short name (the label is sized from its text), yet bounded by the clip.
    assert short < long < 2000


def test_row_count_is_capped():
    def height(n):
        rows = [{"block": f"blk{i}", "interference": i / 7, "retained_energy": 1.0} for i in range(n)]
        return _open(plot.block_heatmap_png(rows, METRICS, title="t")).size[1]

    h201, h1000 = height(201), height(1000)
    assert h1000 <= h201
    assert h1000 > height(150)  # the cap keeps 200 rows, it does not drop them all


def test_non_numeric_values_do_not_raise():
    rows = [{"block": "a", "interference": "0.5x", "retained_energy": [1]}, {"block": 7}]
    img = _open(plot.block_heatmap_png(rows, METRICS, title="t"))
    assert _pixels(img, plot._NA_GREY)[0] > 800  # all four cells


def test_without_pillow_a_usage_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(UsageError) as info:
        plot.block_heatmap_png([{"block": "a", "interference": 1.0}], METRICS, title="t")
    assert "adapterctl[plot]" in (info.value.hint or "")
    assert "Pillow" in info.value.message


def test_ramp_is_ordered_and_continuous():
    # Lightness must rise steadily with the value, or the eye reads the wrong block as "more".
    def luma(c):
        return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]

    steps = [luma(plot._colour(i / 40)) for i in range(41)]
    assert all(a < b for a, b in zip(steps, steps[1:]))
    assert plot._colour(-3.0) == plot._colour(0.0) and plot._colour(7.0) == plot._colour(1.0)
