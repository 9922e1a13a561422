"""Streaming safetensors writer.

Tensors come either as byte ranges of an open source file (copied in bounded chunks, never
loaded whole) or as in-memory bytes. The header is written first with fixed-width placeholders
for hashes; one sequential pass over the source then feeds both the output hash and the source
hash, and the placeholders are patched in place. Producing ``modelspec.hash_sha256`` and the
provenance hash of the input therefore costs no second read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from adapterctl.io.atomic import atomic_write
from adapterctl.io.safetensors_file import DTYPE_SIZES, SafetensorsFile

CHUNK = 8 * 1024 * 1024

# Metadata values may contain these markers; they are replaced after the data is written.
HASH_0X = "@@sha256-0x@@"  # "0x" + sha256 of the output data region (ModelSpec)
HASH_HEX = "@@sha256-hex@@"  # bare hex of the same (kohya's sshs_model_hash)
SOURCE_HASH = "@@source-sha256@@"  # sha256 of the source file's data region
_MARKERS = {HASH_0X: 66, HASH_HEX: 64, SOURCE_HASH: 64}


@dataclass(frozen=True, slots=True)
class OutTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    source: SafetensorsFile | None = None  # copy bytes [start, end) of the source data region
    start: int = 0
    end: int = 0
    data: bytes | None = None  # or write these bytes

    @property
    def nbytes(self) -> int:
        return len(self.data) if self.data is not None else self.end - self.start

    @classmethod
    def copy(cls, src: SafetensorsFile, src_name: str, new_name: str | None = None) -> "OutTensor":
        info = src.tensors[src_name]
        return cls(new_name or src_name, info.dtype, info.shape, src, info.start, info.end)

    @classmethod
    def from_bytes(cls, name: str, dtype: str, shape, data: bytes) -> "OutTensor":
        if len(data) != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise ValueError(f"{name}: {len(data)} bytes do not match {dtype}{list(shape)}")
        return cls(name, dtype, tuple(shape), data=data)

    def renamed(self, name: str) -> "OutTensor":
        return OutTensor(name, self.dtype, self.shape, self.source, self.start, self.end, self.data)


@dataclass(frozen=True)
class WriteResult:
    sha256: str  # output data region
    source_sha256: str | None
    nbytes: int


def write_safetensors(path: str | os.PathLike, tensors: list[OutTensor], metadata: dict[str, str], *,
                      source: SafetensorsFile | None = None, force: bool = False,
                      inputs: tuple[Path, ...] = ()) -> WriteResult:
    """Write atomically. With ``source``, its whole data region is hashed in the same pass."""
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names in output")
    header_bytes, patches = _header(tensors, metadata)
    out_hash = hashlib.sha256()
    with atomic_write(path, force=force, inputs=inputs) as fh:
        fh.write(len(header_bytes).to_bytes(8, "little"))
        fh.write(header_bytes)
        copier = _Copier(fh, out_hash, source, hashlib.sha256() if source is not None else None)
        for t in tensors:
            copier.emit(t)
        copier.finish()
        src_hash = copier.src_hash
        hexes = {HASH_0X: "0x" + out_hash.hexdigest(), HASH_HEX: out_hash.hexdigest(),
                 SOURCE_HASH: src_hash.hexdigest() if src_hash else "0" * 64}
        for offset, marker in patches:
            fh.seek(8 + offset)
            fh.write(hexes[marker].encode("ascii"))
    return WriteResult(out_hash.hexdigest(), src_hash.hexdigest() if src_hash else None,
                       8 + len(header_bytes) + sum(t.nbytes for t in tensors))


class _Copier:
    """Copies tensors; keeps a cursor over the hashed source so each source byte is read once."""

    def __init__(self, fh, out_hash, source, src_hash):
        self.fh, self.out_hash, self.source, self.src_hash = fh, out_hash, source, src_hash
        self.cursor = 0  # source bytes hashed so far
        self.out_of_order = False
        self.view = memoryview(bytearray(CHUNK))
        self.data_len = source.size - source.data_start if source is not None else 0

    def emit(self, t: OutTensor) -> None:
        if t.data is not None:
            self.fh.write(t.data)
            self.out_hash.update(t.data)
            return
        in_order = self.source is not None and t.source is self.source and t.start >= self.cursor
        if t.source is self.source and not in_order:
            self.out_of_order = True
        if in_order:
            self._hash_source(self.cursor, t.start)  # skipped (dropped) bytes still count for the source hash
        self._pump(t.source, t.start, t.end, write=True, source_too=in_order)
        if in_order:
            self.cursor = t.end

    def finish(self) -> None:
        if self.source is None:
            return
        if self.out_of_order:  # rare: tensors were reordered, so hash the source in a pass of its own
            self.cursor, self.out_of_order = 0, False
            self.src_hash = hashlib.sha256()
        if self.cursor < self.data_len:
            self._hash_source(self.cursor, self.data_len)

    def _hash_source(self, start: int, end: int) -> None:
        if self.source is not None and end > start:
            self._pump(self.source, start, end, write=False, source_too=True)

    def _pump(self, src: SafetensorsFile, start: int, end: int, *, write: bool, source_too: bool) -> None:
        fd, pos, remaining = src.fileno(), src.data_start + start, end - start
        while remaining:
            n = os.preadv(fd, [self.view[: min(CHUNK, remaining)]], pos)
            if n <= 0:
                raise OSError("source file shrank while copying")
            chunk = self.view[:n]
            if write:
                self.fh.write(chunk)
                self.out_hash.update(chunk)
            if source_too and not self.out_of_order:
                self.src_hash.update(chunk)
            pos += n
            remaining -= n


def _header(tensors: list[OutTensor], metadata: dict[str, str]) -> tuple[bytes, list[tuple[int, str]]]:
    tokens: dict[str, str] = {}
    meta = {}
    for key, value in metadata.items():
        for marker, width in _MARKERS.items():
            if marker in value:
                token = tokens.setdefault(marker, secrets.token_hex(width // 2 + 1)[:width])
                value = value.replace(marker, token)
        meta[key] = value
    header: dict = {"__metadata__": meta} if meta else {}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8-byte alignment
    patches = []
    for marker, token in tokens.items():
        needle, at = token.encode("ascii"), 0
        while (at := raw.find(needle, at)) >= 0:
            patches.append((at, marker))
            at += len(needle)
    return raw, patches
