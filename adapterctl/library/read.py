"""Reading every adapter of a library: header only, in parallel, in stable path order.

A file without an adapterctl manifest is summarised from its header by ``header.summarize``;
a file with one is opened by ``Adapter.open``, which checks the manifest against the tensors.
Both make the checks every command makes (tests compare them), so a file that ``ls`` calls ok
is one ``inspect`` reads, and an invalid one carries the same one-line reason.

Parallelism, measured (bench/bench_ls.py, docs/benchmarks.md "Listing a library"): reading a
header is pure-Python parsing (JSON, key patterns) that holds the GIL, so threads gain little on
it, while a pool of forked processes divides it by the number of cores. Hashing releases the GIL
and runs in either. So the default is a fork pool when forking is safe (Linux/macOS ``fork``
start method, this process has no other thread, enough files to pay for the pool), else threads.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from adapterctl.errors import AdapterError, InputNotFound
from adapterctl.layouts.peft_dir import CONFIG_NAME, WEIGHTS_NAME
from adapterctl.library.scan import Candidate
from adapterctl.textsafe import clip

CHUNK = 1 << 20  # sha256 reads 1 MiB at a time: bounded memory whatever the file's size
MIN_FOR_PROCESSES = 32  # below this, starting the pool costs more than it saves


@dataclass
class Row:
    """What the library knows about one adapter (plain values: rows cross process boundaries)."""

    rel: str
    kind: str  # "file" | "peft"
    size: Optional[int] = None
    status: str = "ok"  # "ok" | "invalid"
    reason: Optional[str] = None
    architecture: Optional[str] = None
    layout: Optional[str] = None
    method: Optional[str] = None
    roles: dict[str, int] = field(default_factory=dict)
    modules: int = 0
    rank_min: Optional[int] = None
    rank_max: Optional[int] = None
    sha256: Optional[str] = None
    manifest_sha256: Optional[str] = None
    origin: Optional[dict] = None

    @property
    def rank(self) -> Optional[str]:
        """'64', or '4-64' when the branches differ."""
        if self.rank_min is None:
            return None
        return str(self.rank_min) if self.rank_min == self.rank_max else f"{self.rank_min}-{self.rank_max}"


def sha256_file(path: str | os.PathLike) -> tuple[str, int]:
    """(hex digest, size) of a regular file, read in 1 MiB chunks. Never blocks on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InputNotFound("no such file", path=str(path)) from None
    except OSError as exc:
        raise InputNotFound(f"cannot open: {exc.strerror}", path=str(path)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # before open(): it refuses a directory with its own error
        os.close(fd)
        raise InputNotFound("not a regular file", path=str(path))
    with open(fd, "rb", buffering=0) as fh:
        digest, size = hashlib.sha256(), 0
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            digest.update(view[:n])  # hashlib releases the GIL for buffers this size
            size += n
    return digest.hexdigest(), size


def peft_digest(config_hex: str, weights_hex: str) -> str:
    """A peft directory's sha256: over both files' digests, named (the lock format's rule)."""
    text = f"{CONFIG_NAME}\0{config_hex}\n{WEIGHTS_NAME}\0{weights_hex}"
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _content(c: Candidate, sha256: bool) -> tuple[Optional[str], int]:
    if c.kind == "file":
        if sha256:
            return sha256_file(c.path)
        return None, _size(c.path)
    parts = [c.path / CONFIG_NAME, c.path / WEIGHTS_NAME]
    if not sha256:
        return None, sum(_size(p) for p in parts)
    (h1, s1), (h2, s2) = (sha256_file(p) for p in parts)
    return peft_digest(h1, h2), s1 + s2


def _size(path) -> int:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputNotFound(f"cannot stat: {exc.strerror}", path=str(path)) from None
    if not stat.S_ISREG(st.st_mode):
        raise InputNotFound("not a regular file", path=str(path))
    return st.st_size


def read_one(c: Candidate, sha256: bool = False) -> Row:
    """One adapter's row; never raises for a bad file (it becomes an invalid row with the reason).

    Header only unless ``sha256``: a file without a stored manifest is summarised by
    ``header.summarize`` (the same checks as ``Adapter.open``, no alpha value read); a file with
    one, or any file when hashing (the lock records the manifest's digest), is opened in full."""
    row = Row(rel=c.rel, kind=c.kind)
    try:
        row.sha256, row.size = _content(c, sha256)
        summary, manifest = read_summary(c.path, full=sha256)
        row.architecture, row.layout, row.method = summary.architecture, summary.layout, summary.method
        row.roles, row.modules = summary.roles, summary.modules
        row.rank_min, row.rank_max = summary.rank_min, summary.rank_max
        if manifest is not None:
            row.manifest_sha256 = hashlib.sha256(manifest.to_json().encode("utf-8")).hexdigest()
    except AdapterError as exc:
        _invalid(row, f"{exc.message} [{exc.code}]")
    except Exception as exc:  # noqa: BLE001 - a bug must not hide the verdict on the other files
        _invalid(row, f"internal error ({type(exc).__name__}: {clip(str(exc), 200)}); please report it")
    return row


def read_summary(path: Path, *, full: bool):
    """(Summary, manifest) of one adapter path. From the header alone when the file stores no
    manifest and ``full`` is false (the manifest is None then); else opened in full."""
    from adapterctl.adapter import Adapter
    from adapterctl.header import Summary, open_source, summarize

    st, peft_config = open_source(path)
    try:
        summary = None if full else summarize(path, st, peft_config)
    except BaseException:
        st.close()
        raise
    if summary is not None:
        st.close()
        return summary, None
    with Adapter.from_file(path, st, peft_config=peft_config) as adapter:
        return Summary.of(adapter.arch, adapter.manifest), adapter.manifest


def _invalid(row: Row, reason: str) -> None:
    row.status, row.reason = "invalid", clip(reason, 600)
    row.architecture = row.layout = row.method = row.manifest_sha256 = None
    row.roles, row.modules, row.rank_min, row.rank_max = {}, 0, None, None


def _read_packed(args: tuple[Candidate, bool]) -> Row:
    return read_one(*args)


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def choose_mode(n: int, jobs: int) -> str:
    """'process' when a fork pool is safe and worth it, else 'thread' (or 'serial' for one job)."""
    import multiprocessing

    if jobs <= 1 or n <= 1:
        return "serial"
    if (n >= MIN_FOR_PROCESSES and "fork" in multiprocessing.get_all_start_methods()
            and threading.active_count() == 1):  # forking a threaded process can deadlock the child
        return "process"
    return "thread"


def read_rows(candidates: Sequence[Candidate], *, sha256: bool = False, jobs: Optional[int] = None,
              mode: Optional[str] = None) -> list[Row]:
    """Rows for ``candidates``, in their order. ``mode``: 'process', 'thread' or 'serial'
    (default: ``choose_mode``); ``jobs``: workers (default: the CPUs this process may use)."""
    jobs = jobs or default_jobs()
    mode = mode or choose_mode(len(candidates), jobs)
    work = [(c, sha256) for c in candidates]
    if mode == "serial":
        return [_read_packed(w) for w in work]
    # Small chunks: a file takes a few ms, so 16 files keep the last worker's tail short, and the
    # per-chunk cost (pickling a few paths and rows) stays far below the work.
    chunk = max(1, min(16, len(work) // (jobs * 8)))
    if mode == "thread":
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(jobs) as pool:
            return list(pool.map(_read_packed, work))
    if mode != "process":
        raise ValueError(f"unknown mode {mode!r}")
    return _in_processes(work, jobs, chunk)


def _in_processes(work: list, jobs: int, chunk: int) -> list[Row]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # The first file is read here, before the fork: the imports, the architecture map and the
    # readers' caches are then built once and inherited, not rebuilt in every worker.
    rows: list[Row] = [_read_packed(work[0])]
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"), initializer=_child_signals)
    finished = False
    try:
        for row in pool.map(_read_packed, work[1:], chunksize=chunk):
            rows.append(row)
        finished = True
    except BrokenProcessPool:
        # A worker died (killed, out of memory): finish here, in order, rather than fail the listing.
        rows.extend(_read_packed(w) for w in work[len(rows):])
    finally:
        # Interrupted or broken: drop the queued work; the workers end with the parent.
        pool.shutdown(wait=finished, cancel_futures=not finished)
    return rows


def _child_signals() -> None:
    # The CLI turns SIGINT/SIGTERM/SIGHUP into an exception that unwinds and cleans up; a worker
    # has nothing to clean up, so it simply ends (the parent unwinds and reports the signal).
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def total_size(rows: Iterable[Row]) -> int:
    return sum(r.size or 0 for r in rows)
