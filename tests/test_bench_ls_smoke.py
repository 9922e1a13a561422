"""Keeps bench/bench_ls.py from rotting: its file plan, and one small end-to-end run."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "bench" / "bench_ls.py"


def _harness():
    spec = importlib.util.spec_from_file_location("bench_ls", HARNESS)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(HARNESS.parent))
    spec.loader.exec_module(module)
    return module


def test_plan_is_the_blora_module_set_at_rank_4():
    tensors = _harness().plan(4)
    assert len(tensors) == 480 and [n for n, _, _ in tensors] == sorted(n for n, _, _ in tensors)
    assert sum(n.endswith(".alpha") for n, _, _ in tensors) == 160
    assert all(n.startswith("lora_unet_output_blocks_") for n, _, _ in tensors)  # SGM names: up_blocks.0 = output 0-2
    data = sum(2 * math.prod(shape) for _, _, shape in tensors)
    assert 3.4e6 < data < 3.6e6  # the docs say 3.6 MB a file (with the header)


def test_small_run_times_ls_and_checks_lock_and_verify(tmp_path):
    res = subprocess.run([sys.executable, str(HARNESS), "--count", "24", "--runs", "1", "--mode-runs", "1",
                          "--out-dir", str(tmp_path), "--json"], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    results = json.loads(res.stdout)
    assert results["schema"] == "adapterctl.bench-ls/1"
    assert json.loads((tmp_path / "ls-results.json").read_text()) == results
    assert set(results["commands"]) == {"ls", "minimal-read", "find"}
    assert set(results["reader_modes"]) == {"serial", "thread", "process"}
    assert set(results["lock_verify"]) == {"lock", "verify"}
    assert results["library"]["files"] == 24 and results["checks"]["ls"].startswith("24 adapters, all ok")
    assert results["checks"]["one_byte"].startswith("exit 1")
    assert results["target"]["met"] is None  # 24 files are not judged
    assert results["ratios"]["ls / minimal-read"] > 0 and results["machine"]["cores"] >= 1
    assert not list(tmp_path.glob("ls-library-*"))  # removed without --keep
