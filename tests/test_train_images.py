"""Training photos from hostile or odd files: adapterctl.torch.images.

Every refusal must be the right typed error with a one-line message, returned promptly; every
accepted file must come back as 8-bit RGB with one note per conversion that changed its pixels.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from adapterctl.errors import InputNotFound, InvalidFile, UsageError
from adapterctl.torch import images
from adapterctl.torch.images import LoadedImage, load_image, prepare


def _png(width, height, depth, colour_type, rows: bytes | None = None) -> bytes:
    """A PNG written by hand: Pillow cannot write 16-bit RGB or lie about its size."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows or b"\x00" * 16))
            + chunk(b"IEND", b""))


def _save(tmp_path, image: Image.Image, name: str, **kw):
    path = tmp_path / name
    image.save(path, **kw)
    return path


def _refused(path, cls=InvalidFile):
    with pytest.raises(cls) as info:
        load_image(path)
    assert type(info.value) is cls
    assert "\n" not in str(info.value) and "\r" not in str(info.value)
    assert info.value.path == str(path)
    return info.value.message


def _noise(width, height, channels=3, seed=0):
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# -- accepted files ---------------------------------------------------------------------------

def test_plain_rgb_png(tmp_path):
    pixels = _noise(80, 70)
    path = _save(tmp_path, Image.fromarray(pixels), "ok.png")
    loaded = load_image(str(path))
    assert loaded.image.mode == "RGB" and loaded.notes == ()
    assert loaded.original_size == (70, 80)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert np.array_equal(np.asarray(loaded.image), pixels)


def test_cmyk_jpeg(tmp_path):
    path = _save(tmp_path, Image.new("CMYK", (80, 80), (0, 255, 0, 0)), "cmyk.jpg", quality=95)
    loaded = load_image(path)
    assert loaded.image.mode == "RGB" and loaded.notes == ("converted CMYK to RGB",)
    assert np.allclose(loaded.image.getpixel((40, 40)), (255, 0, 255), atol=3)


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    values = np.zeros((64, 64), dtype=np.uint16)
    values[0, 0], values[0, 1], values[0, 2], values[0, 3] = 65535, 128 * 257, 300, 1000
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    loaded = load_image(_save(tmp_path, image, "gray16.png"))
    assert loaded.image.mode == "RGB"
    assert loaded.notes == ("reduced 16-bit samples to 8-bit", "grayscale image repeated into three channels")
    row = np.asarray(loaded.image)[0, :5, 0].tolist()
    assert row == [255, 128, 1, 4, 0]  # round(v * 255 / 65535)


def test_hand_made_16bit_rgb_png(tmp_path):
    samples = (np.arange(64 * 64 * 3).reshape(64, 64, 3) * 5).astype(">u2")
    rows = b"".join(b"\x00" + samples[y].tobytes() for y in range(64))
    path = tmp_path / "rgb48.png"
    path.write_bytes(_png(64, 64, 16, 2, rows))
    loaded = load_image(path)
    assert loaded.image.mode == "RGB" and loaded.notes == ("reduced 16-bit samples to 8-bit",)
    got = np.asarray(loaded.image).astype(int)
    assert np.abs(got - samples.astype(int) / 257).max() <= 1  # Pillow keeps the high byte


def test_palette_png_with_transparency(tmp_path):
    image = Image.new("P", (64, 64), 1)
    image.putpalette([0, 0, 0] + [0, 0, 255] * 255)
    image.paste(0, (0, 0, 32, 64))  # left half: index 0, declared transparent
    loaded = load_image(_save(tmp_path, image, "pal.png", transparency=0))
    assert loaded.notes == ("expanded the palette to RGB", "flattened the alpha channel onto white")
    assert loaded.image.getpixel((5, 5)) == (255, 255, 255)
    assert loaded.image.getpixel((50, 5)) == (0, 0, 255)


def test_rgba_is_composited_onto_white(tmp_path):
    pixels = np.zeros((64, 64, 4), dtype=np.uint8)
    pixels[..., :3] = (10, 200, 30)
    pixels[:, :20, 3] = 0  # transparent: must become white whatever its colour
    pixels[:, 20:40, 3] = 255
    pixels[:, 40:, :3], pixels[:, 40:, 3] = 0, 128
    loaded = load_image(_save(tmp_path, Image.fromarray(pixels, "RGBA"), "rgba.png"))
    assert loaded.image.mode == "RGB" and loaded.notes == ("flattened the alpha channel onto white",)
    out = np.asarray(loaded.image)
    assert (out[:, :20] == 255).all()
    assert (out[:, 20:40] == (10, 200, 30)).all()
    assert np.abs(out[:, 40:].astype(int) - 127).max() <= 1  # black at alpha 128 over white


def test_opaque_alpha_is_dropped_without_a_note(tmp_path):
    pixels = _noise(64, 64, 4)
    pixels[..., 3] = 255
    loaded = load_image(_save(tmp_path, Image.fromarray(pixels, "RGBA"), "opaque.png"))
    assert loaded.notes == ()
    assert np.array_equal(np.asarray(loaded.image), pixels[..., :3])


def test_la_png(tmp_path):
    pixels = np.zeros((64, 64, 2), dtype=np.uint8)
    pixels[..., 0] = 60
    pixels[:32, :, 1] = 255
    loaded = load_image(_save(tmp_path, Image.fromarray(pixels, "LA"), "la.png"))
    assert loaded.notes == ("grayscale image repeated into three channels", "flattened the alpha channel onto white")
    assert loaded.image.getpixel((0, 0)) == (60, 60, 60)
    assert loaded.image.getpixel((0, 63)) == (255, 255, 255)


def test_float_tiff_is_clipped(tmp_path):
    values = np.full((64, 64), 100.4, dtype=np.float32)
    values[0, 0], values[0, 1], values[0, 2] = 300.0, -5.0, np.nan
    loaded = load_image(_save(tmp_path, Image.fromarray(values, "F"), "float.tif"))
    assert loaded.notes[0].startswith("clipped 32-bit float samples")
    assert np.asarray(loaded.image)[0, :4, 0].tolist() == [255, 0, 0, 100]


def test_animated_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (64, 64), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = _save(tmp_path, frames[0], "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    loaded = load_image(path)
    assert "used the first frame of an animated or multi-frame image" in loaded.notes
    assert loaded.image.mode == "RGB" and loaded.image.getpixel((10, 10)) == (255, 0, 0)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    path = _save(tmp_path, Image.new("RGB", (120, 80), (0, 0, 0)), "rot.jpg", exif=exif)
    loaded = load_image(path)
    assert loaded.image.size == (80, 120) and loaded.original_size == (120, 80)
    assert any("EXIF orientation" in note for note in loaded.notes)


# -- refused files ----------------------------------------------------------------------------

def test_tiny_image(tmp_path):
    message = _refused(_save(tmp_path, Image.new("RGB", (40, 30)), "tiny.png"))
    assert message == "image is 40x30 px; training needs at least 64 px on each side"


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello\nthis is not a picture\n")
    assert _refused(path) == "not an image Pillow can read (cannot identify image file)"


def test_eps_is_not_handed_to_ghostscript(tmp_path):
    path = tmp_path / "evil.eps"
    path.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n")
    assert _refused(path).startswith("not an image")


def test_truncated_png(tmp_path):
    whole = io.BytesIO()
    Image.fromarray(_noise(200, 200)).save(whole, "PNG")
    path = tmp_path / "half.png"
    path.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    assert _refused(path).startswith("truncated or corrupt image (")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert _refused(path) == "empty file (0 bytes)"


def test_missing_file_and_directory(tmp_path):
    assert _refused(tmp_path / "nope.png", InputNotFound) == "no such file"
    assert "directory" in _refused(tmp_path, InputNotFound)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_returns_promptly(tmp_path):
    path = tmp_path / "pipe.png"
    os.mkfifo(path)

    def hung(*_):
        raise AssertionError("load_image blocked on a FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        assert _refused(path, InputNotFound) == "not a regular file"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_oversized_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as f:
        f.truncate(images.MAX_FILE_BYTES + 1)  # sparse: costs no disk
    start = time.perf_counter()
    assert "images larger than" in _refused(path)
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize("side", [8200, 10000, 100000])  # below, between and above Pillow's own limits
@pytest.mark.parametrize("pillow_limit", ["default", None])
def test_declared_size_bomb_is_refused_before_decoding(tmp_path, monkeypatch, side, pillow_limit):
    if pillow_limit is None:  # our bound must hold even where an application switched Pillow's off
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = tmp_path / "bomb.png"
    path.write_bytes(_png(side, side, 8, 2))
    start = time.perf_counter()
    message = _refused(path)
    assert time.perf_counter() - start < 2
    assert "decompression bomb" in message
    if pillow_limit is None or side == 8200:
        assert message == (f"image declares {side}x{side} px, more than the {images.MAX_PIXELS}-pixel limit "
                           "(possible decompression bomb)")


def test_bad_path_argument():
    with pytest.raises(UsageError):
        load_image(42)


# -- prepare / to_tensor ----------------------------------------------------------------------

def _loaded(pixels: np.ndarray) -> LoadedImage:
    image = Image.fromarray(pixels)
    return LoadedImage(path=None, image=image, sha256="", original_size=(image.height, image.width), notes=())


@pytest.mark.parametrize("width,height,top,left", [(100, 200, 32, 0), (300, 100, 0, 64), (64, 64, 0, 0)])
def test_prepare_shape_range_and_offsets(width, height, top, left):
    # Smooth content: at sharp edges Lanczos overshoots and Pillow clips that between its two 8-bit
    # passes, so there a crop-only resize may differ from a full one by up to ~20 levels.
    y, x = np.mgrid[0:height, 0:width]
    channels = [120 + 90 * np.sin(x / 7.0), 120 + 90 * np.cos(y / 5.0), 120 + 80 * np.sin((x + y) / 9.0)]
    pixels = np.stack(channels, axis=-1).astype(np.uint8)
    array, offsets = prepare(_loaded(pixels), 64)
    assert array.shape == (3, 64, 64) and array.dtype == np.float32 and array.flags.c_contiguous
    assert array.min() >= -1.0 and array.max() <= 1.0
    assert offsets == (top, left)
    # The same as resizing the whole image and cropping it, to within a level of rounding.
    scale = 64 / min(width, height)
    full = Image.fromarray(pixels).resize((round(width * scale), round(height * scale)), Image.Resampling.LANCZOS)
    expected = np.asarray(full.crop((left, top, left + 64, top + 64)), dtype=np.float32).transpose(2, 0, 1)
    assert np.abs((array + 1) * 127.5 - expected).max() <= 1.01


def test_prepare_extremes_map_to_minus_one_and_one():
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[:, 32:] = 255
    array, _ = prepare(_loaded(pixels), 64)
    assert array[:, :, 0].tolist() == [[-1.0] * 64] * 3 and array[:, :, -1].tolist() == [[1.0] * 64] * 3


def test_flip_mirrors_and_mirrors_the_offset():
    loaded = _loaded(_noise(165, 64))  # 101 spare columns: the centre crop is not symmetric
    plain, (top, left) = prepare(loaded, 64)
    flipped, (ftop, fleft) = prepare(loaded, 64, flip=True)
    assert np.array_equal(flipped, plain[:, :, ::-1])
    assert (top, left) == (0, 50) and (ftop, fleft) == (0, 51)


def test_prepare_resamples_only_the_crop():
    # Resized whole, this strip would be 1024 x 1.6 million pixels (about 5 GB).
    loaded = _loaded(np.zeros((100_000, 64, 3), dtype=np.uint8))
    start = time.perf_counter()
    array, offsets = prepare(loaded, 1024)
    assert array.shape == (3, 1024, 1024) and offsets == ((1_600_000 - 1024) // 2, 0)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("resolution", [0, -64, True, 2.5, "512", images.MAX_RESOLUTION + 1])
def test_prepare_rejects_bad_resolutions(resolution):
    with pytest.raises(UsageError) as info:
        prepare(_loaded(_noise(64, 64)), resolution)
    assert "\n" not in str(info.value)


def test_to_tensor():
    torch = pytest.importorskip("torch")
    array, _ = prepare(_loaded(_noise(90, 70)), 64)
    tensor = images.to_tensor(array)
    assert tensor.shape == (1, 3, 64, 64) and tensor.dtype == torch.float32
    assert np.array_equal(tensor[0].numpy(), array)
    with pytest.raises(UsageError):
        images.to_tensor(np.zeros((64, 64), dtype=np.float32))
