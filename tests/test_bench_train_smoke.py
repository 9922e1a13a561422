"""Keeps bench/bench_train.py from rotting: a tiny CPU run of both loops, and the full-SDXL path on `meta`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "bench" / "bench_train.py"


def _run(*args: str, timeout: int) -> dict:
    res = subprocess.run([sys.executable, str(HARNESS), *args, "--json"], capture_output=True, text=True,
                         timeout=timeout, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(res.stdout)


def test_tiny_cpu_run(tmp_path):
    # One thread: on a busy 2-core machine, two OpenMP threads per process make a step up to 20x slower.
    results = _run("--steps", "3", "--warmup", "1", "--runs", "1", "--threads", "1", "--max-contention", "-1",
                   "--out-dir", str(tmp_path),
                   timeout=240)
    assert results["schema"] == "adapterctl.bench-train/1"
    assert json.loads((tmp_path / "train-results.json").read_text())["ratios"] == results["ratios"]
    assert {"machine", "variants", "ratios", "speedup", "targets", "checks", "table_markdown", "command"} <= set(results)
    assert results["device"] == "cpu" and results["threads"] == 1 and results["base"] == "tiny"
    assert results["modules"] == 160 and results["resolution"] == 128 and results["rank"] == 8
    for name in ("ours", "ref"):
        v = results["variants"][name]
        assert v["runs"] == 1 and len(v["per_run"][0]["step_s"]) == 3 and v["discarded_attempts"] == 0
        for key in ("s_per_step", "setup_s", "build_s", "built_mb", "peak_mb", "loop_peak_mb"):
            assert v[key] > 0, (name, key, v[key])
        assert v["peak_mb"] >= v["built_mb"]
    for key in ("s_per_step", "peak_mb", "loop_peak_mb"):
        assert results["ratios"][key] > 0
    assert results["speedup"] == 1 / results["ratios"]["s_per_step"]
    assert 0 < results["ref_vae_share"] < 1 and results["speedup_from_vae_share"] > 1
    assert len(results["checks"]) == 4
    assert all(t["judged"] is False and t["met"] is None for t in results["targets"])  # tiny on CPU: not judged


def test_full_sdxl_builds_on_meta(tmp_path):
    result = _run("--full-sdxl", "--dry-run", "--out-dir", str(tmp_path), timeout=180)
    assert result["dry_run"] and result["resolution"] == 1024 and result["rank"] == 64
    assert result["modules"] == 160 and round(result["lora_params"] / 1e6, 1) == 28.2  # DESIGN.md §1
    assert result["latent_shape"] == [1, 4, 128, 128] and result["unet_out_shape"] == [1, 4, 128, 128]
    assert result["prompt_shape"] == [1, 77, 2048]
    assert result["params"]["unet"] > 2.5e9
    w = result["weights_gb"]
    assert w["ours_loop"] < w["ref_loop"] < w["ours_setup_fp32_pipeline"]
