"""Atomic writes: a writer killed mid-write (SIGKILL, no cleanup possible) or failing mid-write
(an exception, cleanup expected) never leaves a partial file at the target path. On Linux the
file is written unnamed (O_TMPFILE), so even SIGKILL leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _cli_helpers import REPO, cli_env

from adapterctl.arch import load_arch, target_presets
from adapterctl.io.atomic import TMP_SUFFIX

BIG_RANK = 192  # 160 B-LoRA modules at rank 192 in F32: ~330 MB of factors


def _big_blora(path: Path) -> int:
    """A valid ~330 MB B-LoRA file in old diffusers naming, written in milliseconds: the data region is
    a sparse hole (zeros), so only the header is real I/O. Returns the data size."""
    arch = load_arch("sdxl")
    header, offset = {}, 0
    for name in target_presets("sdxl")["b-lora"].modules(arch):
        spec = arch.get(name)
        for part, shape in (("down", [BIG_RANK, spec.in_features]), ("up", [spec.out_features, BIG_RANK])):
            size = shape[0] * shape[1] * 4
            header[f"unet.{spec.path}.lora.{part}.weight"] = {"dtype": "F32", "shape": shape,
                                                             "data_offsets": [offset, offset + size]}
            offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little") + raw)
        fh.truncate(8 + len(raw) + offset)
    return offset


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big_blora.safetensors"
    data = _big_blora(path)
    assert data > 200e6
    return path


def _temp_entries(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if n.endswith(TMP_SUFFIX)]


def _temp_bytes(directory: Path, names: list[str]) -> int:
    total = 0
    for name in names:
        p = directory / name
        try:
            total += sum(f.stat().st_size for f in p.iterdir()) if p.is_dir() else p.stat().st_size
        except OSError:
            pass
    return total


def _open_outputs(pid: int, out_dir: Path) -> dict[str, int]:
    """Files the process holds open in out_dir, named or not, with their sizes. An O_TMPFILE
    output has no name: /proc shows it as '<dir>/#<inode> (deleted)'."""
    found = {}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith(str(out_dir) + os.sep):
                found[target] = os.stat(f"/proc/{pid}/fd/{fd}").st_size
        except OSError:
            continue
    return found


def _kill_when_temp_appears(argv: list[str], out_dir: Path, *, min_bytes: int = 0,
                            timeout: float = 60) -> tuple[int, list[str]]:
    """Start the CLI, SIGKILL it once it writes a temp file in out_dir (holding at least min_bytes);
    return (returncode, temps seen)."""
    proc = subprocess.Popen([sys.executable, "-m", "adapterctl.cli.main", *argv], env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            held = _open_outputs(proc.pid, out_dir)
            seen = _temp_entries(out_dir) + list(held)
            size = max([_temp_bytes(out_dir, _temp_entries(out_dir))] + list(held.values()))
            if seen and (not min_bytes or size >= min_bytes):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.0005)
        return proc.wait(timeout=timeout), seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _remove_temps(directory: Path) -> None:
    for name in _temp_entries(directory):  # ~330 MB each: do not leave them to pytest's retention
        p = directory / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def _assert_only_hidden_temps(directory: Path, keep: set[str]) -> list[str]:
    rest = sorted(set(os.listdir(directory)) - keep)
    assert all(n.startswith(".") and n.endswith(TMP_SUFFIX) for n in rest), rest
    assert len(rest) <= 1, rest
    return rest


@pytest.mark.parametrize("min_bytes", [0, 64 << 20], ids=["at-once", "after-64MB"])
def test_sigkill_mid_write_leaves_no_target(big, tmp_path, min_bytes):
    target = tmp_path / "out.safetensors"
    try:
        rc, seen = _kill_when_temp_appears(["convert", str(big), "--to", "kohya", "-o", str(target)], tmp_path,
                                           min_bytes=min_bytes)
        assert rc == -signal.SIGKILL, f"the writer finished before it could be killed (rc {rc}); enlarge BIG_RANK"
        assert seen
        assert not target.exists()
        left = _assert_only_hidden_temps(tmp_path, set())
        if sys.platform == "linux":
            assert left == [], f"an O_TMPFILE write must leave nothing at all, found {left}"
        # What is left is a partial write, not a finished file that merely missed its rename.
        if left:
            assert (tmp_path / left[0]).stat().st_size < big.stat().st_size
    finally:
        _remove_temps(tmp_path)


def test_sigkill_mid_forced_overwrite_keeps_the_old_file(big, tmp_path):
    target = tmp_path / "out.safetensors"
    old = b"the previous output, which must survive"
    target.write_bytes(old)
    try:
        rc, seen = _kill_when_temp_appears(["convert", str(big), "--to", "diffusers", "-o", str(target), "--force"],
                                           tmp_path)
        assert rc == -signal.SIGKILL, f"the writer finished before it could be killed (rc {rc})"
        assert seen
        assert target.read_bytes() == old
        _assert_only_hidden_temps(tmp_path, {"out.safetensors"})
    finally:
        _remove_temps(tmp_path)


def test_sigkill_mid_peft_directory_write(big, tmp_path):
    # peft output is a directory, staged as a hidden temp directory and renamed into place.
    target = tmp_path / "adapter"
    try:
        rc, seen = _kill_when_temp_appears(["convert", str(big), "--to", "peft", "-o", str(target)], tmp_path)
        if rc == 5:
            pytest.skip("peft output refused for this adapter")
        assert rc == -signal.SIGKILL, f"the writer finished before it could be killed (rc {rc})"
        assert not target.exists()
        _assert_only_hidden_temps(tmp_path, set())
    finally:
        _remove_temps(tmp_path)


def test_input_untouched_after_kills(big):
    # The big input is a sparse file of zeros: any write into it would show up as allocated blocks.
    st = big.stat()
    assert st.st_blocks * 512 < 1 << 20


# -- in-process: an exception in the middle of the copy -----------------------------------------

SMALL = REPO / "spec" / "vectors" / "valid_blora_old_diffusers.safetensors"


def _fail_on_second_tensor(monkeypatch, error: type[BaseException]) -> dict:
    """Make the writer raise after its first tensor, so the temp file exists and holds partial data."""
    from adapterctl.io import writer

    calls = {"n": 0}
    real_emit = writer._Copier.emit

    def emit(self, t):
        calls["n"] += 1
        if calls["n"] == 2:
            raise error("disk on fire")
        return real_emit(self, t)

    monkeypatch.setattr(writer._Copier, "emit", emit)
    return calls


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("to", ["kohya", "diffusers", "peft"])
@pytest.mark.parametrize("existing", [False, True])
def test_exception_mid_write_cleans_up(tmp_path, monkeypatch, error, to, existing):
    from adapterctl.adapter import Adapter

    calls = _fail_on_second_tensor(monkeypatch, error)
    target = tmp_path / ("adapter" if to == "peft" else "out.safetensors")
    if existing:
        if to == "peft":
            target.mkdir()
            (target / "adapter_config.json").write_text("{}")
        else:
            target.write_bytes(b"old")
    before = sorted(os.listdir(tmp_path))
    with Adapter.open(SMALL) as adapter:
        with pytest.raises(error, match="disk on fire"):
            adapter.convert(to).save(target, force=existing)
    assert calls["n"] == 2, "the writer never reached the second tensor"
    assert sorted(os.listdir(tmp_path)) == before, "a temp file or a partial target was left"
    if existing:
        if to == "peft":
            assert (target / "adapter_config.json").read_text() == "{}"
        else:
            assert target.read_bytes() == b"old"
