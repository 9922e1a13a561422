"""Keeps bench/bench_merge.py from rotting: its module sets, and one tiny end-to-end run."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "bench" / "bench_merge.py"


def _harness():
    spec = importlib.util.spec_from_file_location("bench_merge", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_full_module_sets():
    bench = _harness()
    specs = bench.blora_specs("full")
    assert len(specs) == 160 and len({s.name for s in specs}) == 160
    assert Counter(s.block for s in specs) == {"up_blocks.0.attentions.0": 80, "up_blocks.0.attentions.1": 80}
    assert Counter(s.name.rsplit(".", 2)[-2] if s.name.endswith("to_out.0") else s.name.rsplit(".", 1)[-1]
                   for s in specs) == {"to_q": 40, "to_k": 40, "to_v": 40, "to_out": 40}
    assert {(s.in_features, s.out_features) for s in specs} == {(1280, 1280), (2048, 1280)}  # attn2 k/v: text
    _, plan = bench.unet_plan("full")
    assert len(plan) == 788
    for spec, rank in plan:
        assert spec.component == "unet" and rank == (32 if spec.kernel == (3, 3) else 64), spec.name
    assert bench.sample_evenly(list(range(1052)), 40) == sorted(set(bench.sample_evenly(list(range(1052)), 40)))
    assert len(bench.sample_evenly(list(range(1052)), 40)) == 40
    assert bench.sample_evenly([1, 2, 3], 5) == [1, 2, 3]


def test_tiny_run_end_to_end(tmp_path):
    res = subprocess.run(
        [sys.executable, str(HARNESS), "--scale", "tiny", "--runs", "1", "--warmup", "0", "--max-contention", "-1",
         "--overwrite", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=180, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    results = json.loads((tmp_path / "merge-results.json").read_text())
    assert {"schema", "machine", "commands", "baselines", "ratios", "dense_reference", "quoted", "zip_report",
            "targets", "checks", "table_markdown", "files"} <= set(results)
    assert results["schema"] == "adapterctl.bench-merge/1"
    assert set(results["commands"]) == {"cp", "prune", "cat-blora", "zip", "cat-unet", "svd"}
    for s in results["commands"].values():
        assert s["runs"] == 1 and s["median_s"] > 0 and s["peak_rss_mb"] > 0 and "cpu_s_median" in s
    assert set(results["ratios"]) >= {"prune", "zip", "svd"}
    # The output checks ran and passed (a failed check exits non-zero before the JSON is written).
    assert set(results["checks"]) == {"cp", "prune", "cat-blora", "zip", "cat-unet", "svd"}
    assert results["checks"]["prune"]["worst_rel_dev_from_optimal"] <= 1e-2
    assert results["checks"]["svd"]["worst_rel_dev_from_optimal"] <= 1e-2
    assert results["checks"]["zip"]["worst_rel_residual"] <= 1e-2
    dense = results["dense_reference"]
    assert dense["sample"] >= 1 and dense["per_module_mean_s"] > 0
    assert "EXTRAPOLATED" in dense["extrapolation"]
    assert math.isclose(dense["extrapolated_full_s"], dense["per_module_mean_s"] * dense["modules_in_file"])
    assert results["quoted"]["kohya_resize_lora"]["wall_s"] == 1031.0
    z = results["zip_report"]
    assert all(math.isfinite(z[k]) for k in ("interference", "interference_direct", "ratio"))
    assert z["merged_modules"] == 16
    assert [t["target"] for t in results["targets"]] == [
        "prune wall", "prune peak RSS", "zip wall", "zip interference / direct", "svd peak RSS"]
    assert all(t["met"] is None for t in results["targets"])  # tiny files are not judged
    assert "| bench | command |" in res.stdout and "extrapolated" in res.stdout
    # A second call finds the cached inputs instead of regenerating them.
    bench = _harness()
    before = sorted(p.name for p in tmp_path.glob("*.safetensors") if not p.name.startswith("merge-run-"))
    gen = bench.generate_all(tmp_path, "tiny", 0, regenerate=False)
    assert sorted(Path(v["path"]).name for v in gen["files"].values()) == before
