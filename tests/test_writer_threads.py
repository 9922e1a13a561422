"""The writer's hash threads and early writeback: same digests as a serial pass, errors never lost."""

from __future__ import annotations

import errno
import hashlib
import os
import threading

import pytest

from adapterctl.io import workers, writer
from adapterctl.io.safetensors_file import SafetensorsFile
from adapterctl.io.writer import OutTensor, write_safetensors


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
