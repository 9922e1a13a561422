"""Streaming safetensors writer.

Tensors come as byte ranges of open source files (copied in bounded chunks, never loaded
whole), as in-memory bytes, or from a lazy producer that computes one tensor when the writer
reaches it (peak memory: one tensor, not the file). The header is written first with fixed-width
placeholders for hashes (random tokens, see HashSlots); one sequential pass then feeds the output
hash, each source's hash and the NaN/Inf check, and the placeholders are patched in place.
Producing ``modelspec.hash_sha256`` and the provenance hash of every input therefore costs no
second read, and an output that ``validate`` would fail is refused before it gets its name.

The hashes run in worker threads (hashlib releases the GIL on large updates), so on two or
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
from typing import Callable, Sequence

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
    source: str  # sha256 of the (first) source file's data region (provenance)
    more_sources: tuple[str, ...] = ()  # the same for sources 2, 3, ... of a multi-source write

    @classmethod
    def new(cls, sources: int = 1) -> "HashSlots":
        extra = tuple(secrets.token_hex(32) for _ in range(max(sources - 1, 0)))
        return cls("0x" + secrets.token_hex(32), secrets.token_hex(32), secrets.token_hex(32), extra)

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.source,) + self.more_sources

    def tokens(self) -> tuple[str, ...]:
        return (self.out_0x, self.out_hex) + self.sources


@dataclass(frozen=True, slots=True)
class OutTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    source: SafetensorsFile | None = None  # copy bytes [start, end) of the source data region
    start: int = 0
    end: int = 0
    data: bytes | None = None  # or write these bytes
    producer: Callable[[], bytes] | None = None  # or compute them when written, then drop them

    @property
    def nbytes(self) -> int:
        if self.producer is not None:
            return math.prod(self.shape) * DTYPE_SIZES[self.dtype]
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

    @classmethod
    def lazy(cls, name: str, dtype: str, shape, producer: Callable[[], bytes]) -> "OutTensor":
        """A computed tensor: ``producer()`` runs when the writer reaches it, and its bytes are
        written and released before the next tensor, so peak memory is one tensor, not the file."""
        return cls(name, dtype, tuple(shape), producer=producer)

    def renamed(self, name: str) -> "OutTensor":
        return OutTensor(name, self.dtype, self.shape, self.source, self.start, self.end, self.data, self.producer)


@dataclass(frozen=True)
class WriteResult:
    sha256: str  # output data region
    source_sha256: str | None  # the first source's (None without sources)
    nbytes: int
    source_sha256s: tuple[str, ...] = ()  # every source's, in the order given


def write_safetensors(path: str | os.PathLike, tensors: list[OutTensor], metadata: dict[str, str], *,
                      source: SafetensorsFile | None = None, sources: Sequence[SafetensorsFile] = (),
                      force: bool = False, inputs: tuple[Path, ...] = (), durable: bool = False,
                      slots: HashSlots | None = None, verify: Callable[[int], None] | None = None,
                      check_finite: bool = False) -> WriteResult:
    """Write atomically. Each of ``sources`` (or the one ``source``) has its whole data region
    hashed in the same pass as the copy: bytes are read once, whichever tensors are kept.

    Occurrences of ``slots``' placeholders in metadata values become the hashes. ``verify(fd)``
    reads the finished file back before it gets its name (see io/atomic.py). ``check_finite``
    refuses (InvalidFile) an output whose float tensors hold NaN or Inf, checked during the copy.
    """
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names in output")
    sources = list(dict.fromkeys(([source] if source is not None else []) + list(sources)))
    header_bytes, patches = _header(tensors, metadata, slots)
    if len(header_bytes) > HEADER_CAP:
        raise UnsupportedConversion(f"the output header would be {len(header_bytes):,} bytes, over the "
                                    f"{HEADER_CAP:,}-byte cap of safetensors readers",
                                    hint="--strip-metadata drops the foreign metadata")
    with atomic_write(path, force=force, inputs=inputs, durable=durable, verify=verify) as fh:
        fh.write(len(header_bytes).to_bytes(8, "little"))
        fh.write(header_bytes)
        # When the output's data region is the one source's, byte for byte, one hash serves both.
        same_data = len(sources) == 1 and _is_whole_source(tensors, sources[0])
        copier = _Copier(fh, [] if same_data else sources, durable=durable, check_finite=check_finite)
        try:
            for t in tensors:
                copier.emit(t)
            out_hex, src_hexes = copier.finish()
            if same_data:
                src_hexes = [out_hex]
        finally:
            copier.close()  # no worker thread outlives the write, whatever happened
        if patches:
            hexes = {slots.out_0x: "0x" + out_hex, slots.out_hex: out_hex}
            hexes.update({token: src_hexes[i] if i < len(src_hexes) else "0" * 64
                          for i, token in enumerate(slots.sources)})
            for offset, token in patches:
                fh.seek(8 + offset)
                fh.write(hexes[token].encode("ascii"))
            fh.seek(0, os.SEEK_END)
    return WriteResult(out_hex, src_hexes[0] if src_hexes else None,
                       8 + len(header_bytes) + sum(t.nbytes for t in tensors), tuple(src_hexes))


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


class _SourceHash:
    """One source's sha256, fed by the copy while that source's tensors arrive in file order;
    skipped (dropped) ranges are read and hashed in between, so each byte is read once."""

    def __init__(self, src: SafetensorsFile):
        self.src, self.worker, self.cursor, self.in_order = src, Sha256Worker(), 0, True
        self.data_len = src.size - src.data_start


class _Copier:
    """Copies or computes tensors in order; hashes the output, and every source in the same pass."""

    def __init__(self, fh, sources: Sequence[SafetensorsFile], *, durable: bool, check_finite: bool):
        self.fh = fh
        self.out_hash = Sha256Worker()
        self.hashes = {id(src): _SourceHash(src) for src in sources}
        self.finite = _finite_check() if check_finite else None
        self._workers = [self.out_hash] + [h.worker for h in self.hashes.values()]
        self.writeback = _EarlyWriteback(fh.fileno(), enabled=durable)

    def emit(self, t: OutTensor) -> None:
        if t.producer is not None or t.data is not None:
            data = bytes(t.producer() if t.producer is not None else t.data)  # immutable, for the hash thread
            if len(data) != t.nbytes:
                raise ValueError(f"{t.name}: producer gave {len(data)} bytes for {t.dtype}{list(t.shape)}")
            self._write(t, data)
            return
        h = self.hashes.get(id(t.source))
        in_order = h is not None and h.in_order and t.start >= h.cursor
        if h is not None and not in_order:
            h.in_order = False  # rare: tensors reordered; this source gets a pass of its own in finish()
        if in_order:
            self._pump(h.src, h.cursor, t.start, write=None, hash_into=h)
        self._pump(t.source, t.start, t.end, write=t, hash_into=h if in_order else None)
        if in_order:
            h.cursor = t.end

    def finish(self) -> tuple[str, list[str]]:
        """Hex digests of the output data and of each source's data region, in source order."""
        for h in self.hashes.values():
            if not h.in_order:
                h.worker, h.cursor, h.in_order = Sha256Worker(), 0, True
                self._workers.append(h.worker)
            self._pump(h.src, h.cursor, h.data_len, write=None, hash_into=h)
        self.writeback.close()
        bad = self.finite.bad if self.finite is not None else {}
        if bad:
            name, count = next(iter(bad.items()))
            raise InvalidFile(f"tensor '{clip(name, 120)}' holds {count} NaN/Inf values"
                              + (f" ({len(bad) - 1} more tensors too)" if len(bad) > 1 else "")
                              + "; refusing to write an adapter that validate would fail",
                              hint="the source file is damaged: make it again from its source")
        return self.out_hash.hexdigest(), [h.worker.hexdigest() for h in self.hashes.values()]

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
        try:
            self.writeback.close()
        except OSError:
            pass  # only reached on an error path, which is already raising

    def _write(self, t: OutTensor, data: bytes) -> None:
        self.fh.write(data)
        self.out_hash.update(data)
        if self.finite is not None:
            self.finite.update(t.name, t.dtype, data)
        self.writeback.wrote(len(data))

    def _pump(self, src: SafetensorsFile, start: int, end: int, *, write: OutTensor | None,
              hash_into: _SourceHash | None) -> None:
        """Copy source bytes [start, end) to the output when ``write`` (the tensor they belong
        to) is given; feed them to that source's hash when ``hash_into``."""
        fd, pos, remaining = src.fileno(), src.data_start + start, end - start
        while remaining > 0:
            chunk = os.pread(fd, min(CHUNK, remaining), pos)  # fresh bytes: the hash threads may hold the last
            n = len(chunk)
            if n <= 0:
                raise OSError("source file shrank while copying")
            if write is not None:  # CHUNK is a multiple of 8, so chunks split no element
                self._write(write, chunk)
            if hash_into is not None:
                hash_into.worker.update(chunk)
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
    for token in slots.tokens() if slots else ():
        needle, at = token.encode("ascii"), 0
        while (at := raw.find(needle, at)) >= 0:
            patches.append((at, token))
            at += len(needle)
    return raw, patches
