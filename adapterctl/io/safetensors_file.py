"""A validating, lazy reader for safetensors files.

The header is checked completely before anything else trusts it (the gguf-py habit): size cap,
JSON shape, known dtypes, sizes that match shapes, offsets inside the file, no overlaps and no gaps.
Tensor bytes are only read when asked for, with ``os.pread`` on one descriptor, so opening a
500 MB file costs one small read.
"""

from __future__ import annotations

import math
import operator
import os
import stat
from pathlib import Path
from typing import NamedTuple

from adapterctl.errors import InputNotFound, InvalidFile, UnsafeFile
from adapterctl.io import safe_json
from adapterctl.textsafe import clip as _clip

# safetensors' own reader (0.8) refuses headers above 100,000,000 bytes (decimal, not MiB); we
# use the same cap so that whatever we accept, every other loader accepts too.
HEADER_CAP = 100_000_000

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}

_U64 = (1 << 64) - 1  # shapes and offsets are usize in the Rust loader
_BY_OFFSETS = operator.itemgetter(3, 4)  # TensorInfo (start, end)

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}


class TensorInfo(NamedTuple):
    # A named tuple, not a frozen dataclass: made for every tensor of every file read, and a
    # tuple is built in C (`ls` over a library creates hundreds of thousands of them).
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # offsets relative to the start of the data region
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _looks_like_pickle(head: bytes, size: int) -> bool:
    # torch.save writes a zip archive; older torch and plain pickle start with PROTO (0x80, 2..5).
    if head.startswith(b"PK\x03\x04"):
        return True
    if not (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return False
    # A valid header length can start with the same two bytes (640, 896, 1152 or 1408 bytes, +k*65536),
    # so a file whose length field fits and whose header then opens with '{' is safetensors, not pickle.
    header_len = int.from_bytes(head[:8], "little")
    return not (len(head) >= 9 and 8 + header_len <= size and head[8:9] == b"{")


def check_input_path(path: Path, *, expected: str = "a .safetensors file",
                     dir_hint: str | None = "for a peft adapter directory, pass the directory to a command that "
                                            "reads adapters") -> os.stat_result:
    """stat ``path`` and refuse, in one line, anything but a regular file (a FIFO or a device would
    block or never end)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputNotFound("no such file", path=str(path)) from None
    except PermissionError:
        raise InputNotFound("permission denied", path=str(path)) from None
    except OSError as exc:
        raise InputNotFound(f"cannot stat: {exc.strerror}", path=str(path)) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputNotFound(f"is a directory, expected {expected}", path=str(path), hint=dir_hint)
    if not stat.S_ISREG(st.st_mode):
        raise InputNotFound("not a regular file", path=str(path))
    return st


class SafetensorsFile:
    """An open, validated safetensors file. Use as a context manager or call ``close()``."""

    def __init__(self, path: str | os.PathLike, *, fd: int | None = None):
        """Open ``path``; or, with ``fd``, read that open file (a duplicate of the descriptor is
        kept) and use ``path`` only in messages: how a writer reads back its unnamed output."""
        self.path = Path(path)
        if fd is not None:
            self._fd = os.dup(fd)
            st = os.fstat(self._fd)
        else:
            st = check_input_path(self.path)
            if self.path.suffix.lower() in PICKLE_SUFFIXES:
                raise UnsafeFile(f"'{_clip(self.path.suffix, 20)}' files are pickles; adapterctl never unpickles",
                                 path=str(self.path),
                                 hint="convert it to .safetensors in an environment you trust")
            try:
                # O_NONBLOCK: a FIFO swapped in after the stat above must not block the open.
                self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            except PermissionError:
                raise InputNotFound("permission denied", path=str(self.path)) from None
            except OSError as exc:
                raise InputNotFound(f"cannot open: {exc.strerror}", path=str(self.path)) from None
            st = os.fstat(self._fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(self._fd)
                raise InputNotFound("not a regular file", path=str(self.path))
        try:
            self.size = st.st_size
            self._mtime_ns = st.st_mtime_ns
            self.header_len, self.metadata, self.tensors = self._parse()
        except BaseException:
            os.close(self._fd)
            raise

    # -- parsing -------------------------------------------------------------------------
    def _fail(self, message: str, **kw) -> InvalidFile:
        return InvalidFile(message, path=str(self.path), **kw)

    def _parse(self):
        if self.size == 0:
            raise self._fail("empty file (0 bytes)")
        head = os.pread(self._fd, 9, 0)
        if _looks_like_pickle(head, self.size):
            raise UnsafeFile("this is a pickle (torch.save/zip) file, not safetensors; adapterctl never unpickles",
                             path=str(self.path), hint="convert it to .safetensors in an environment you trust")
        if len(head) < 8:
            raise self._fail(f"truncated: {self.size} bytes is shorter than the 8-byte header length")
        header_len = int.from_bytes(head[:8], "little")
        if header_len > HEADER_CAP:
            raise self._fail(f"header length {header_len} exceeds the {HEADER_CAP}-byte cap")
        if 8 + header_len > self.size:
            raise self._fail(f"header length {header_len} is larger than the file ({self.size} bytes)")
        raw = os.pread(self._fd, header_len, 8)
        if len(raw) != header_len:
            raise self._fail("file shrank while reading its header")
        try:
            header = safe_json.loads(raw)
        except safe_json.JsonRejected as exc:
            raise self._fail(f"header is not valid JSON: {exc}") from None
        if not isinstance(header, dict):
            raise self._fail("header is not a JSON object")
        metadata = header.pop("__metadata__", None)
        if metadata is None:  # serde's Option: safetensors reads null as "no metadata"
            metadata = {}
        if not isinstance(metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise self._fail("__metadata__ must map strings to strings")
        data_len = self.size - 8 - header_len
        tensors = [self._tensor(name, spec) for name, spec in header.items()]
        tensors.sort(key=_BY_OFFSETS)
        cursor = 0
        for t in tensors:
            if t.end > data_len:
                raise self._fail(f"tensor '{_clip(t.name)}' ends at byte {t.end} but the data region has "
                                 f"{data_len} bytes (file truncated or offsets out of range)")
            if t.start < cursor:
                raise self._fail(f"tensor '{_clip(t.name)}' overlaps the tensor before it")
            if t.start > cursor:
                raise self._fail(f"gap of {t.start - cursor} bytes before tensor '{_clip(t.name)}'")
            cursor = t.end
        if cursor != data_len:
            raise self._fail(f"{data_len - cursor} trailing bytes after the last tensor")
        return header_len, dict(metadata), {t.name: t for t in tensors}

    def _tensor(self, name: str, spec) -> TensorInfo:
        # Plain loops and exact type checks: this runs for every tensor of every file `ls` reads.
        if type(spec) is not dict:
            raise self._fail(f"tensor '{_clip(name)}' entry is not an object")
        dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
        size = DTYPE_SIZES.get(dtype) if type(dtype) is str else None
        if size is None:
            raise self._fail(f"tensor '{_clip(name)}' has unknown dtype {_clip(repr(dtype))}")
        if type(shape) is not list:
            raise self._fail(f"tensor '{_clip(name)}' has an invalid shape")
        for dim in shape:
            if type(dim) is not int or not 0 <= dim <= _U64:
                raise self._fail(f"tensor '{_clip(name)}' has an invalid shape")
        if type(offsets) is not list or len(offsets) != 2:
            raise self._fail(f"tensor '{_clip(name)}' has invalid data_offsets")
        start, end = offsets
        if type(start) is not int or type(end) is not int or not 0 <= start <= end <= _U64:
            raise self._fail(f"tensor '{_clip(name)}' has invalid data_offsets")
        # safetensors multiplies in usize with overflow checks, left to right: so do we.
        expected = size
        for dim in shape:
            expected *= dim
            if expected > _U64:
                raise self._fail(f"tensor '{_clip(name)}' shape {_clip(repr(shape), 80)} overflows 64 bits")
        if end - start != expected:
            raise self._fail(f"tensor '{_clip(name)}' shape {shape} {dtype} needs {expected} bytes "
                             f"but its offsets span {end - start}")
        return TensorInfo(name, dtype, tuple(shape), start, end)

    # -- access --------------------------------------------------------------------------
    @property
    def data_start(self) -> int:
        return 8 + self.header_len

    def read(self, name: str) -> bytes:
        info = self.tensors[name]
        data = os.pread(self._fd, info.nbytes, self.data_start + info.start)
        if len(data) != info.nbytes:
            raise self._fail(f"file shrank while reading tensor '{_clip(name)}'")
        return data

    def read_range(self, start: int, length: int) -> bytes:
        return os.pread(self._fd, length, start)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
