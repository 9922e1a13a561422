"""The writer's hash threads and early writeback: same digests as a serial pass, errors never lost."""

from __future__ import annotations

import errno
import hashlib
import os
import threading

import pytest

from adapterctl.io import workers, writer
from adapterctl.io.safetensors_file import SafetensorsFile
from adapterctl.io.writer import HashSlots, OutTensor, write_safetensors


@pytest.fixture
def small_chunks(monkeypatch):
    # Tiny chunk / queue / writeback sizes so a small file runs every path: many chunks per
    # tensor, a full queue (back-pressure), several background fdatasync calls.
    monkeypatch.setattr(writer, "CHUNK", 4096)
    monkeypatch.setattr(workers, "QUEUE_ITEMS", 2)
    monkeypatch.setattr(writer, "WRITEBACK_EVERY", 64 * 1024)


def _source(path, n=24, size=40_000):
    tensors = [OutTensor.from_bytes(f"t{i:02d}", "U8", (size + i,), os.urandom(size + i)) for i in range(n)]
    write_safetensors(path, tensors, {})
    return SafetensorsFile(path)


def _data(path) -> bytes:
    with SafetensorsFile(path) as st:
        return st.read_range(st.data_start, st.size - st.data_start)


@pytest.mark.parametrize("order", ["in-order", "dropped", "reordered", "whole"])
def test_digests_equal_a_serial_hash(tmp_path, small_chunks, order):
    src = _source(tmp_path / "src.safetensors")
    names = sorted(src.tensors, key=lambda k: src.tensors[k].start)
    if order == "dropped":
        names = names[::3]
    elif order == "reordered":
        names = names[::-1]
    out = [OutTensor.copy(src, n, f"x.{n}") for n in names]
    if order != "whole":  # "whole" renames only, so one hash serves output and source
        out.insert(1, OutTensor.from_bytes("alpha", "F16", (), b"\x00\x3c"))  # an in-memory tensor among copies
    threads_before = threading.active_count()
    result = write_safetensors(tmp_path / "out.safetensors", out, {}, source=src, durable=True)
    assert threading.active_count() == threads_before, "a worker thread outlived the write"
    assert result.sha256 == hashlib.sha256(_data(tmp_path / "out.safetensors")).hexdigest()
    assert result.source_sha256 == hashlib.sha256(_data(tmp_path / "src.safetensors")).hexdigest()
    with SafetensorsFile(tmp_path / "out.safetensors") as st:
        for n in names:
            assert st.read(f"x.{n}") == src.read(n)
    src.close()


def test_writeback_error_is_raised_not_swallowed(tmp_path, small_chunks, monkeypatch):
    # The kernel reports a writeback error to one sync caller only; the background one must pass it on.
    src = _source(tmp_path / "src.safetensors")

    def failing_fdatasync(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(writer.os, "fdatasync", failing_fdatasync)
    out = [OutTensor.copy(src, n) for n in src.tensors]
    with pytest.raises(OSError, match="I/O error"):
        write_safetensors(tmp_path / "out.safetensors", out, {}, source=src, durable=True)
    assert not (tmp_path / "out.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src.safetensors"], "a temp file was left"
    src.close()


def test_durable_write_fsyncs_file_and_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    src = _source(tmp_path / "src.safetensors")
    synced.clear()
    write_safetensors(tmp_path / "plain.safetensors", [OutTensor.copy(src, n) for n in src.tensors], {})
    assert synced == []  # like cp: atomic for other processes, no fsync
    write_safetensors(tmp_path / "durable.safetensors", [OutTensor.copy(src, n) for n in src.tensors], {},
                      durable=True)
    # The file is synced while still unnamed (O_TMPFILE: '<dir>/#<inode> (deleted)', or a hidden
    # temp name where O_TMPFILE is missing), then the directory after the name is linked in.
    assert len(synced) == 2 and synced[1] == str(tmp_path), synced
    assert synced[0].endswith((".adapterctl-tmp", " (deleted)")) and synced[0].startswith(str(tmp_path)), synced
    src.close()


@pytest.mark.parametrize("interleave", ["in-order", "one-reordered"])
def test_several_sources_hashed_in_the_same_pass(tmp_path, small_chunks, interleave):
    """A derived adapter may draw tensors from several files: each source's provenance hash
    covers its whole data region, whichever of its tensors are kept, in whatever order."""
    a = _source(tmp_path / "a.safetensors", n=9)
    b = _source(tmp_path / "b.safetensors", n=7, size=30_000)
    names_a = sorted(a.tensors, key=lambda k: a.tensors[k].start)[::2]
    names_b = sorted(b.tensors, key=lambda k: b.tensors[k].start)[1::2]
    if interleave == "one-reordered":
        names_b = names_b[::-1]
    out = []
    for i in range(max(len(names_a), len(names_b))):
        out += [OutTensor.copy(a, names_a[i], f"a.{names_a[i]}")] if i < len(names_a) else []
        out += [OutTensor.copy(b, names_b[i], f"b.{names_b[i]}")] if i < len(names_b) else []
    slots = HashSlots.new(sources=2)
    meta = {"first": slots.source, "second": slots.more_sources[0], "out": slots.out_hex}
    result = write_safetensors(tmp_path / "out.safetensors", out, meta, sources=[a, b], slots=slots)
    want = (hashlib.sha256(_data(tmp_path / "a.safetensors")).hexdigest(),
            hashlib.sha256(_data(tmp_path / "b.safetensors")).hexdigest())
    assert result.source_sha256s == want and result.source_sha256 == want[0]
    with SafetensorsFile(tmp_path / "out.safetensors") as st:
        assert st.metadata == {"first": want[0], "second": want[1], "out": result.sha256}
        assert all(st.read(t.name) == t.source.read(t.name.split(".", 1)[1]) for t in out)
    a.close()
    b.close()


def test_lazy_tensors_are_computed_in_order_and_checked(tmp_path):
    """A computed tensor's producer runs only when the writer reaches it, once; a producer that
    returns the wrong number of bytes fails the write and leaves nothing behind."""
    calls = []

    def producer(i):
        def make():
            calls.append(i)
            return bytes([i]) * 16
        return make

    out = [OutTensor.lazy(f"t{i}", "U8", (16,), producer(i)) for i in range(5)]
    assert calls == []  # planning computes nothing
    write_safetensors(tmp_path / "lazy.safetensors", out, {})
    assert calls == [0, 1, 2, 3, 4]
    with SafetensorsFile(tmp_path / "lazy.safetensors") as st:
        assert [st.read(f"t{i}") for i in range(5)] == [bytes([i]) * 16 for i in range(5)]
    bad = [OutTensor.lazy("short", "F32", (4,), lambda: b"\0" * 15)]
    with pytest.raises(ValueError, match="producer gave 15 bytes"):
        write_safetensors(tmp_path / "bad.safetensors", bad, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lazy.safetensors"]


def test_nonfinite_computed_tensor_is_refused_when_checked(tmp_path):
    nan = b"\x00\x7e"  # F16 NaN
    out = [OutTensor.lazy("x", "F16", (2,), lambda: nan * 2)]
    write_safetensors(tmp_path / "unchecked.safetensors", out, {})  # a plain safetensors write allows it
    with pytest.raises(Exception, match="NaN/Inf"):
        write_safetensors(tmp_path / "checked.safetensors", out, {}, check_finite=True)
    assert not (tmp_path / "checked.safetensors").exists()
