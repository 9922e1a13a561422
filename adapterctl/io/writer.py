"""Streaming safetensors writer.

Tensors come either as byte ranges of an open source file (copied in bounded chunks, never
loaded whole) or as in-memory bytes. The header is written first with fixed-width placeholders
for hashes (random tokens, see HashSlots); one sequential pass over the source then feeds the
output hash, the source hash and the NaN/Inf check, and the placeholders are patched in place.
Producing ``modelspec.hash_sha256`` and the provenance hash of the input therefore costs no
second read, and an output that ``validate`` would fail is refused before it gets its name.

Both hashes run in worker threads (hashlib releases the GIL on large updates), so on two or
more cores they overlap each other and the copy loop. With ``durable=True`` a large output is
also handed to the disk while it is being written (periodic ``fdatasync`` in the background), so
the ``fsync`` before the atomic rename has little left to wait for (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from adapterctl.errors import InvalidFile, UnsupportedConversion
from adapterctl.io.atomic import atomic_write
from adapterctl.io.safetensors_file import DTYPE_SIZES, HEADER_CAP, SafetensorsFile
from adapterctl.io.workers import Sha256Worker
from adapterctl.textsafe import clip

CHUNK = 1024 * 1024  # per read; a tensor of an SDXL LoRA is at most ~1.5 MB
WRITEBACK_EVERY = 64 * 1024 * 1024  # start disk writeback after this many new output bytes


@dataclass(frozen=True)
class HashSlots:
    """Placeholders for hashes known only after the data is written, patched in place.

    Each is a fresh random hex string as wide as the value that replaces it, so the header keeps
    its length, and no file content can contain one by accident or design (a fixed marker text
    in a user's metadata value used to be replaced with a hash).
    """

    out_0x: str  # "0x" + sha256 of the output data region (ModelSpec)
    out_hex: str  # bare hex of the same (kohya's sshs_model_hash)
    source: str  # sha256 of the source file's data region (provenance)

    @classmethod
    def new(cls) -> "HashSlots":
        return cls("0x" + secrets.token_hex(32), secrets.token_hex(32), secrets.token_hex(32))


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
                      inputs: tuple[Path, ...] = (), durable: bool = False, slots: HashSlots | None = None,
                      verify: Callable[[int], None] | None = None, check_finite: bool = False) -> WriteResult:
    """Write atomically. With ``source``, its whole data region is hashed in the same pass.

    Occurrences of ``slots``' placeholders in metadata values become the hashes. ``verify(fd)``
    reads the finished file back before it gets its name (see io/atomic.py). ``check_finite``
    refuses (InvalidFile) an output whose float tensors hold NaN or Inf, checked during the copy.
    """
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names in output")
    header_bytes, patches = _header(tensors, metadata, slots)
    if len(header_bytes) > HEADER_CAP:
        raise UnsupportedConversion(f"the output header would be {len(header_bytes):,} bytes, over the "
                                    f"{HEADER_CAP:,}-byte cap of safetensors readers",
                                    hint="--strip-metadata drops the foreign metadata")
    with atomic_write(path, force=force, inputs=inputs, durable=durable, verify=verify) as fh:
        fh.write(len(header_bytes).to_bytes(8, "little"))
        fh.write(header_bytes)
        # When the output's data region is the source's, byte for byte, one hash serves both.
        same_data = source is not None and _is_whole_source(tensors, source)
        copier = _Copier(fh, None if same_data else source, durable=durable, check_finite=check_finite)
        try:
            for t in tensors:
                copier.emit(t)
            out_hex, src_hex = copier.finish()
            if same_data:
                src_hex = out_hex
        finally:
            copier.close()  # no worker thread outlives the write, whatever happened
        if patches:
            hexes = {slots.out_0x: "0x" + out_hex, slots.out_hex: out_hex, slots.source: src_hex or "0" * 64}
            for offset, token in patches:
                fh.seek(8 + offset)
                fh.write(hexes[token].encode("ascii"))
            fh.seek(0, os.SEEK_END)
    return WriteResult(out_hex, src_hex, 8 + len(header_bytes) + sum(t.nbytes for t in tensors))


def _is_whole_source(tensors: list[OutTensor], source: SafetensorsFile) -> bool:
    cursor = 0
    for t in tensors:
        if t.source is not source or t.start != cursor:
            return False
        cursor = t.end
    return cursor == source.size - source.data_start


class _EarlyWriteback:
    """Calls ``fdatasync`` from a background thread every WRITEBACK_EVERY bytes written.

    The page cache would otherwise hold the whole output until the final fsync, which then
    waits for all of it; this way the disk works while the copy and the hashes go on. The
    kernel reports a writeback error to one sync caller only, so an error met here is kept
    and raised by ``close()`` - it can never be swallowed.
    """

    def __init__(self, fd: int, *, enabled: bool = True):
        self._fd = fd
        self._enabled = enabled
        self._unsynced = 0
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stop = False
        self._error: OSError | None = None

    def wrote(self, n: int) -> None:
        if not self._enabled:  # without a final fsync, early writeback would only cost time
            return
        self._unsynced += n
        if self._unsynced >= WRITEBACK_EVERY:
            self._unsynced = 0
            if self._thread is None:  # started lazily: small files never get a thread
                self._thread = threading.Thread(target=self._run, name="adapterctl-writeback", daemon=True)
                self._thread.start()
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                self._error = exc
                return

    def close(self) -> None:
        if self._thread is not None:
            self._stop = True
            self._wake.set()
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


class _Copier:
    """Copies tensors; keeps a cursor over the hashed source so each source byte is read once."""

    def __init__(self, fh, source, *, durable: bool, check_finite: bool):
        self.fh, self.source = fh, source
        self.out_hash = Sha256Worker()
        self.src_hash = Sha256Worker() if source is not None else None
        self.finite = _finite_check() if check_finite else None
        self._workers = [self.out_hash] + ([self.src_hash] if self.src_hash else [])
        self.writeback = _EarlyWriteback(fh.fileno(), enabled=durable)
        self.cursor = 0  # source bytes hashed so far
        self.out_of_order = False
        self.data_len = source.size - source.data_start if source is not None else 0

    def emit(self, t: OutTensor) -> None:
        if t.data is not None:
            data = bytes(t.data)  # an immutable copy for the hash thread (these are small)
            self.fh.write(data)
            self.out_hash.update(data)
            if self.finite is not None:
                self.finite.update(t.name, t.dtype, data)
            self.writeback.wrote(len(data))
            return
        in_order = self.source is not None and t.source is self.source and t.start >= self.cursor
        if t.source is self.source and not in_order:
            self.out_of_order = True
        if in_order:
            self._hash_source(self.cursor, t.start)  # skipped (dropped) bytes still count for the source hash
        self._pump(t.source, t.start, t.end, write=t, source_too=in_order)
        if in_order:
            self.cursor = t.end

    def finish(self) -> tuple[str, str | None]:
        """Hex digests of the output data and of the source data region (None without a source)."""
        if self.source is not None:
            if self.out_of_order:  # rare: tensors were reordered, so hash the source in a pass of its own
                self.cursor, self.out_of_order = 0, False
                self.src_hash = Sha256Worker()
                self._workers.append(self.src_hash)
            if self.cursor < self.data_len:
                self._hash_source(self.cursor, self.data_len)
        self.writeback.close()
        bad = self.finite.bad if self.finite is not None else {}
        if bad:
            name, count = next(iter(bad.items()))
            raise InvalidFile(f"tensor '{clip(name, 120)}' holds {count} NaN/Inf values"
                              + (f" ({len(bad) - 1} more tensors too)" if len(bad) > 1 else "")
                              + "; refusing to write an adapter that validate would fail",
                              hint="the source file is damaged: make it again from its source")
        return self.out_hash.hexdigest(), self.src_hash.hexdigest() if self.src_hash else None

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
        try:
            self.writeback.close()
        except OSError:
            pass  # only reached on an error path, which is already raising

    def _hash_source(self, start: int, end: int) -> None:
        if self.source is not None and end > start:
            self._pump(self.source, start, end, write=None, source_too=True)

    def _pump(self, src: SafetensorsFile, start: int, end: int, *, write: OutTensor | None,
              source_too: bool) -> None:
        """Copy source bytes [start, end) to the output when ``write`` (the tensor they belong
        to) is given; feed them to the source hash when ``source_too``."""
        fd, pos, remaining = src.fileno(), src.data_start + start, end - start
        while remaining:
            chunk = os.pread(fd, min(CHUNK, remaining), pos)  # fresh bytes: the hash threads may hold the last
            n = len(chunk)
            if n <= 0:
                raise OSError("source file shrank while copying")
            if write is not None:  # CHUNK is a multiple of 8, so chunks split no element
                self.fh.write(chunk)
                self.out_hash.update(chunk)
                if self.finite is not None:
                    self.finite.update(write.name, write.dtype, chunk)
                self.writeback.wrote(n)
            if source_too and not self.out_of_order:
                self.src_hash.update(chunk)
            pos += n
            remaining -= n


def _finite_check():
    from adapterctl.io.arrays import FiniteCheck  # numpy: imported only by writes that check

    return FiniteCheck()


def _header(tensors: list[OutTensor], metadata: dict[str, str],
            slots: HashSlots | None) -> tuple[bytes, list[tuple[int, str]]]:
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8-byte alignment
    patches = []
    for token in (slots.out_0x, slots.out_hex, slots.source) if slots else ():
        needle, at = token.encode("ascii"), 0
        while (at := raw.find(needle, at)) >= 0:
            patches.append((at, token))
            at += len(needle)
    return raw, patches
