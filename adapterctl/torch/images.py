"""Training photos for ``adapterctl train``: read safely from untrusted files, then cropped for the model.

A photo is as hostile as any other input: it may be a directory or a FIFO, a decompression bomb,
truncated, a format whose decoder shells out (EPS runs Ghostscript), or a mode the model cannot take
(CMYK, 16-bit, palette, alpha). ``load_image`` turns every such file into one typed, one-line error,
or into an 8-bit RGB image plus one note per conversion it made, so the CLI can say what changed.
Pillow and numpy only; torch is imported inside ``to_tensor`` alone.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from adapterctl.errors import AdapterError, InputNotFound, InvalidFile, UsageError
from adapterctl.io.safetensors_file import check_input_path
from adapterctl.textsafe import clip

if TYPE_CHECKING:
    import torch

MIN_SIDE = 64
MAX_PIXELS = 64 * 1024 * 1024  # decompression-bomb bound; larger declared sizes are refused before decoding
MAX_FILE_BYTES = 256 * 1024 * 1024  # no photo is this large; refused before reading it into memory
MAX_RESOLUTION = 8192  # prepare() allocates resolution**2 pixels: a typo must not ask for gigabytes

# Only formats photos come in. Everything else Pillow knows is refused as "not an image": EPS would
# run Ghostscript on the file, and rarely used decoders (FITS, PSD, SPIDER...) are attack surface.
_FORMATS = tuple(f for f in ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
                 if f in Image.registered_extensions().values())  # AVIF only where Pillow was built with it
_FORMAT_HINT = "training images must be PNG, JPEG, WebP, GIF, BMP, TIFF or AVIF"
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_NOTE_16BIT = "reduced 16-bit samples to 8-bit"
_NOTE_GREY = "grayscale image repeated into three channels"
_NOTE_ALPHA = "flattened the alpha channel onto white"


@dataclass(frozen=True)
class LoadedImage:
    path: Path
    image: "Image.Image"  # RGB, 8-bit, decoded at its original size (after EXIF orientation)
    sha256: str  # of the file's bytes exactly as read and decoded
    original_size: tuple[int, int]  # (height, width), as SDXL's micro-conditioning wants it
    notes: tuple[str, ...]  # one line per conversion made


def load_image(path: str | os.PathLike) -> LoadedImage:
    """Read, hash and fully decode ``path``; raise ``InputNotFound`` or ``InvalidFile`` (one line)."""
    if not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"an image path must be a str or a path, not {type(path).__name__}")
    path = Path(path)
    data = _read(path)
    sha = hashlib.sha256(data).hexdigest()
    notes: list[str] = []
    try:
        image = _decode(data, path, notes)
    except AdapterError:
        raise
    except UnidentifiedImageError:
        raise InvalidFile("not an image Pillow can read (cannot identify image file)", path=str(path),
                          hint=_FORMAT_HINT) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidFile(f"refused as a possible decompression bomb ({clip(str(exc))})", path=str(path)) from None
    except Exception as exc:  # noqa: BLE001 - see below
        # Decoders fed hostile bytes raise more than OSError/SyntaxError/ValueError (struct.error,
        # IndexError, KeyError, ZeroDivisionError...); all mean the same thing here: a corrupt file.
        detail = clip(str(exc)) or type(exc).__name__
        raise InvalidFile(f"truncated or corrupt image ({detail})", path=str(path)) from None
    width, height = image.size
    return LoadedImage(path=path, image=image, sha256=sha, original_size=(height, width), notes=tuple(notes))


def _read(path: Path) -> bytes:
    """The file's bytes, read once; only a regular file, and only up to MAX_FILE_BYTES."""
    check_input_path(path, expected="an image file", dir_hint=None)
    try:
        # O_NONBLOCK: a FIFO swapped in after the stat above must not hang the open.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except PermissionError:
        raise InputNotFound("permission denied", path=str(path)) from None
    except OSError as exc:
        raise InputNotFound(f"cannot open: {exc.strerror}", path=str(path)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputNotFound("not a regular file", path=str(path))
        if st.st_size > MAX_FILE_BYTES:
            raise InvalidFile(f"file is {st.st_size} bytes; images larger than {MAX_FILE_BYTES} bytes are refused",
                              path=str(path))
        if st.st_size == 0:
            raise InvalidFile("empty file (0 bytes)", path=str(path))
        chunks, total = [], 0
        while chunk := os.read(fd, st.st_size + 1 - total):  # one spare byte shows a file that grew
            chunks.append(chunk)
            total += len(chunk)
            if total > st.st_size:
                raise InvalidFile("file changed while it was being read", path=str(path))
    except OSError as exc:
        raise InputNotFound(f"cannot read: {exc.strerror}", path=str(path)) from None
    finally:
        os.close(fd)
    return b"".join(chunks)  # a single chunk (the usual case) is returned without a copy


def _decode(data: bytes, path: Path, notes: list[str]) -> Image.Image:
    with warnings.catch_warnings():
        # Pillow warns (not raises) between its own limit and twice it; a library must not print.
        # Image.MAX_IMAGE_PIXELS is left alone: it is process-wide, and our own check below is stricter.
        # (catch_warnings is process-wide too before Python 3.14: load from one thread, or in processes.)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data), formats=_FORMATS)
        _check_size(img, path)  # open() parsed only the header: nothing is allocated yet
        if getattr(img, "is_animated", False):
            notes.append("used the first frame of an animated or multi-frame image")
        sixteen_in_file = data.startswith(_PNG_SIGNATURE) and data[12:16] == b"IHDR" and data[24:25] == b"\x10"
        img.load()  # decode everything now, inside the try, so a truncated file fails here
        _check_size(img, path)  # a few decoders settle the size only on load
        orientation = img.getexif().get(0x0112)  # EXIF Orientation
        img = ImageOps.exif_transpose(img)  # returns a copy: the decoder and its buffer are released
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            notes.append(f"rotated/mirrored upright as the EXIF orientation tag ({orientation}) says")
    # Pillow reduces 16-bit RGB/RGBA/LA PNGs to 8 bits itself (keeping the high byte); say so.
    if sixteen_in_file and img.mode not in _SIXTEEN_BIT:
        notes.append(_NOTE_16BIT)
    return _to_rgb(img, path, notes)


def _check_size(img: Image.Image, path: Path) -> None:
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise InvalidFile(f"image declares {width}x{height} px, more than the {MAX_PIXELS}-pixel limit "
                          "(possible decompression bomb)", path=str(path))
    if min(width, height) < MIN_SIDE:
        raise InvalidFile(f"image is {width}x{height} px; training needs at least {MIN_SIDE} px on each side",
                          path=str(path))


def _to_rgb(img: Image.Image, path: Path, notes: list[str]) -> Image.Image:
    """8-bit RGB, noting every conversion that changes what the pixels hold."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "CMYK":
        notes.append("converted CMYK to RGB")
        return img.convert("RGB")
    if mode in _SIXTEEN_BIT:
        # Pillow's own convert() clips 16-bit values at 255 (a white pixel would stay 255 of 65535,
        # nearly everything else would turn white): scale the range instead, 65535 -> 255, rounded.
        values = np.asarray(img).astype(np.int64)
        if mode == "I" and (values.min() < 0 or values.max() > 65535):
            notes.append("clipped 32-bit integer samples to the 16-bit range")
        values = (np.clip(values, 0, 65535) * 255 + 32767) // 65535
        notes.extend([_NOTE_16BIT, _NOTE_GREY])
        return Image.fromarray(values.astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        # Floats have no agreed range (0..1, 0..255, HDR); we take 0..255, as Pillow's own convert() does.
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
        notes.extend(["clipped 32-bit float samples to 0..255 and rounded them to 8-bit", _NOTE_GREY])
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("P", "PA"):
        notes.append("expanded the palette to RGB")
        if mode == "P" and not img.has_transparency_data:
            return img.convert("RGB")
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _ALPHA:
        rgba = img.convert("RGBA")  # also undoes premultiplied RGBa/La
        if mode in ("LA", "La"):
            notes.append(_NOTE_GREY)
        alpha = rgba.getchannel("A")
        if alpha.getextrema()[0] == 255:  # fully opaque: dropping alpha changes nothing
            return rgba.convert("RGB")
        notes.append(_NOTE_ALPHA)
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba.convert("RGB"), mask=alpha)  # out = rgb * a + white * (1 - a)
        return flat
    if mode in ("L", "1"):
        notes.append(_NOTE_GREY)
        return img.convert("RGB")
    try:  # RGBX, YCbCr, LAB, HSV...: whatever Pillow can convert
        converted = img.convert("RGB")
    except ValueError:
        raise InvalidFile(f"unsupported colour mode {clip(mode, 20)}", path=str(path)) from None
    notes.append(f"converted {clip(mode, 20)} to RGB")
    return converted


def prepare(img: LoadedImage, resolution: int, *, flip: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """Resize so the shorter side is ``resolution``, center-crop a square, optionally mirror.

    Returns a float32 array [3, resolution, resolution] in [-1, 1] and (crop_top, crop_left) in the
    resized image's pixels, as SDXL's crop micro-conditioning expects. With ``flip`` the offsets are
    those of the crop within the mirrored resized image.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not 1 <= resolution <= MAX_RESOLUTION:
        raise UsageError(f"resolution must be an integer from 1 to {MAX_RESOLUTION}, not {clip(repr(resolution), 40)}")
    image = img.image
    if image.mode != "RGB":
        raise UsageError(f"prepare() needs the RGB image load_image() returns, not mode {clip(image.mode, 20)}")
    width, height = image.size
    scale = resolution / min(width, height)
    new_w = resolution if width <= height else max(resolution, round(width * scale))
    new_h = resolution if height < width else max(resolution, round(height * scale))
    top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
    # Resample only the source region the crop keeps: resizing a 64 x 1,000,000 strip whole to a
    # 1024 short side would allocate 16 gigapixels. Pillow's filter still reads past the box edges,
    # so the result matches cropping a full resize (to within rounding).
    sx, sy = new_w / width, new_h / height
    box = (left / sx, top / sy, (left + resolution) / sx, (top + resolution) / sy)
    out = image.resize((resolution, resolution), Image.Resampling.LANCZOS, box=box)
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        left = new_w - resolution - left
    array = np.asarray(out, dtype=np.float32).transpose(2, 0, 1) / np.float32(127.5) - np.float32(1.0)
    return np.ascontiguousarray(array), (top, left)


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """A float32 torch tensor [1, 3, H, W] from prepare()'s [3, H, W] array."""
    import torch

    array = np.asarray(array)
    if array.ndim != 3 or array.shape[0] != 3:
        raise UsageError(f"expected an array of shape [3, H, W], got {list(array.shape)}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).unsqueeze(0)
