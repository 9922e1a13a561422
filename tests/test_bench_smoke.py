"""Keeps bench/bench_files.py from rotting: its module plan, and one tiny end-to-end run."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "bench" / "bench_files.py"


def _harness():
    spec = importlib.util.spec_from_file_location("bench_files", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_full_plan_is_the_sd_scripts_locon_set():
    bench = _harness()
    _, plan = bench.plan_modules("full")
    assert Counter(spec.component for spec, _ in plan) == {"unet": 788, "text_encoder": 72, "text_encoder_2": 192}
    unet_linear_in_attn = [s for s, _ in plan if s.component == "unet" and ".attentions." in s.name]
    assert len(unet_linear_in_attn) == 722
    # 3x3 convs at the conv rank; linears and 1x1 conv_shortcut at the network rank.
    for spec, rank in plan:
        assert rank == (32 if spec.kernel == (3, 3) else 64), spec.name
    tensors, metadata = bench._plan_tensors("full")
    data = sum(2 * math.prod(shape) for _, _, shape in tensors)
    assert 480e6 < data < 490e6  # DESIGN.md §4: the sd-scripts file is 487 MB
    assert [n for n, _, _ in tensors] == sorted(n for n, _, _ in tensors)
    assert metadata["ss_network_dim"] == "64" and json.loads(metadata["ss_network_args"])["conv_dim"] == "32"


def test_tiny_run_generates_converts_and_checks(tmp_path):
    res = subprocess.run(
        [sys.executable, str(HARNESS), "--scale", "tiny", "--runs", "1", "--warmup", "0", "--max-contention", "-1",
         "--overwrite", "--no-diffusers", "--no-profile", "--commands", "convert-kohya", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["commands"]) == {"convert-diffusers", "convert-kohya"}
    assert "identical" in results["checks"]["convert-kohya"]
    assert all(t["met"] is None for t in results["targets"])  # tiny files are not judged
    # A second run finds the cached file instead of regenerating it.
    files = list(tmp_path.glob("sdxl-locon-tiny-*.safetensors"))
    assert len(files) == 1
    bench = _harness()
    assert bench.generate(tmp_path, "tiny") == files[0]
