"""Calibrated ZipLoRA (merge --method zip --base MODEL) on the embedded tiny base model, on CPU.

Two tiny-arch kohya LoRAs (content rank 4, style rank 3) share 16 attention modules of
up_blocks.0; the content one also has proj_in, which the style one lacks. The mergers are
learned through the tiny UNet (random weights: the numbers are about the mechanics, not about
images) and the output must be the exact low-rank fold of the mergers the run returned.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from _cli_helpers import REPO, cli_env, run_cli_batch
from safetensors.numpy import save_file

import adapterctl
from adapterctl.arch import load_arch
from adapterctl.format.manifest import Operation, Provenance
from adapterctl.lowrank import Factored
from adapterctl.lowrank.ziplora import fold

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("PIL")

ARCH = load_arch("sdxl-tiny")
SHARED = sorted(n for n in ARCH.modules
                if n.startswith(("unet.up_blocks.0.attentions.0.transformer_blocks.0.attn",
                                 "unet.up_blocks.0.attentions.1.transformer_blocks.0.attn")))
ONLY_CONTENT = "unet.up_blocks.0.attentions.0.proj_in"
R_C, R_S = 4, 3
STEPS = 25  # the API run; lr 0.01 moves each merger by about 0.01 a step
RESOLUTION = 64  # the smallest image side load_image takes; 128 is the tiny base's native one


def _lora(path: Path, modules: list[str], rank: int, seed: int) -> Path:
    """kohya LoRA with factors large enough to change the UNet's output (alpha = rank / 2)."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name in modules:
        spec = ARCH.modules[name]
        key = ARCH.kohya_name(name)
        tensors[f"{key}.lora_down.weight"] = (rng.standard_normal((rank, spec.in_features))
                                              / np.sqrt(spec.in_features)).astype(np.float32)
        tensors[f"{key}.lora_up.weight"] = (2 * rng.standard_normal((spec.out_features, rank))
                                            / np.sqrt(rank)).astype(np.float32)
        tensors[f"{key}.alpha"] = np.array(rank / 2, dtype=np.float32)
    save_file(tensors, str(path), metadata={"modelspec.architecture": "adapterctl-sdxl-tiny/lora"})
    return path


def _png(path: Path, kind: str) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "noise":
        pixels = np.random.default_rng(0).integers(0, 256, (96, 80, 3), dtype=np.uint8)
    else:
        ramp = np.linspace(0, 255, 96).astype(np.uint8)
        pixels = np.stack([np.tile(ramp, (96, 1)), np.tile(ramp[:, None], (1, 96)), np.full((96, 96), 90, np.uint8)],
                          axis=-1)
    Image.fromarray(pixels).save(path)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tagged(raw: Path, out: Path, role: str, train: dict | None = None) -> Path:
    """Tag every branch with ``role``; with ``train``, give the file the provenance record that
    'adapterctl train' writes (an operation {"op": "train", "args": ...})."""
    with adapterctl.open(raw) as a:
        if train is not None:
            op = Operation(op="train", args=train, tool="adapterctl test", at="2025-01-01T00:00:00+00:00")
            a = replace(a, manifest=a.manifest.model_copy(update={"provenance": Provenance(operations=[op])}))
        a.tag(roles=[f"{role}=unet.*"]).save(out)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("zipcal")
    raw_c = _lora(d / "raw_c.safetensors", SHARED + [ONLY_CONTENT], R_C, 1)
    raw_s = _lora(d / "raw_s.safetensors", SHARED, R_S, 2)
    plain = d / "plain"
    plain.mkdir()
    f = {"dir": d, "c": _tagged(raw_c, plain / "c.safetensors", "content"),
         "s": _tagged(raw_s, plain / "s.safetensors", "style"),
         "c_png": _png(d / "img" / "dog.png", "noise"), "s_png": _png(d / "img" / "paint.png", "ramp")}
    # Trained files: the images recorded relative to the adapter's folder, as train records them.
    prov = d / "prov"
    for role, raw, png in (("content", raw_c, f["c_png"]), ("style", raw_s, f["s_png"])):
        image = _png(prov / "refs" / png.name, "noise" if role == "content" else "ramp")
        f[f"prov_{role}"] = _tagged(raw, prov / f"{role}.safetensors", role, {
            "method": "b-lora", "image": f"refs/{png.name}", "image_sha256": _sha(image), "prompt": f"A [{role[0]}]",
            "resolution": RESOLUTION, "seed": 0, "base": "tiny"})
    # A trained file whose image changed on disk since training.
    stale = d / "stale"
    image = _png(stale / "refs" / "dog.png", "noise")
    f["stale_content"] = _tagged(raw_c, stale / "content.safetensors", "content", {
        "method": "b-lora", "image": "refs/dog.png", "image_sha256": "0" * 64, "prompt": "A [v]",
        "resolution": RESOLUTION})
    f["stale_image"] = image
    f["not_image"] = d / "notes.png"
    f["not_image"].write_text("this is not a picture\n", encoding="utf-8")
    return f


@pytest.fixture(scope="module")
def tiny_base():
    """One thread: the tiny UNet's ops are too small to share, and on a loaded CI machine two
    torch threads ran this file's calibration 6x slower than one."""
    import torch

    from adapterctl.torch import quiet_libraries
    from adapterctl.torch.base import load_base

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    quiet_libraries()
    yield load_base("tiny")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def calibrated(files, tiny_base):
    """One API run: the merged adapter saved, its report, and what the run returned."""
    out = files["dir"] / "zipped.safetensors"
    seen = []
    with adapterctl.open(files["c"]) as c, adapterctl.open(files["s"]) as s:
        merged = adapterctl.merge([c, s], "zip", base=tiny_base, content_image=files["c_png"],
                                  style_image=files["s_png"], content_prompt="A [v] dog",
                                  style_prompt="A painting in [s] style", calibration_steps=STEPS,
                                  resolution=RESOLUTION, progress=lambda *a: seen.append(a))
        merged.save(out)
    return out, merged.report, merged.report.calibration, seen


def test_calibration_lowers_loss_and_overlap(calibrated):
    _, report, cal, seen = calibrated
    assert cal is not None and cal.device == "cpu"
    assert sorted(cal.calibrated) == SHARED and cal.data_free == ()
    assert cal.steps == len(cal.loss_history) == len(cal.overlap_history) == STEPS == len(seen)
    assert seen[-1][:2] == (STEPS, STEPS)
    assert cal.overlap_start == pytest.approx(len(SHARED))  # mergers start at 1: one per layer
    assert cal.loss_end < cal.loss_start
    assert cal.overlap_end < 0.8 * cal.overlap_start
    assert all(b < a for a, b in zip(cal.overlap_history, cal.overlap_history[1:]))
    assert any("calibrated zip on tiny" in note for note in report.notes)
    assert report.to_dict()["calibration"]["loss_history"] == cal.loss_history
    for name in SHARED:
        m_c, m_s = cal.m_content[name], cal.m_style[name]
        assert m_c.shape == m_s.shape == (ARCH.modules[name].in_features,)
        assert np.isfinite(m_c).all() and np.isfinite(m_s).all()
        assert not np.allclose(m_c, 1.0) and not np.allclose(m_s, 1.0)


def test_output_is_the_exact_fold_of_the_returned_mergers(files, calibrated):
    out, _, cal, _ = calibrated
    with adapterctl.open(out) as merged, adapterctl.open(files["c"]) as c, adapterctl.open(files["s"]) as s:
        assert merged.method == "ziplora"
        got = {e.module: merged.branch(e) for e in merged.manifest.modules}
        src_c = {e.module: c.branch(e) for e in c.manifest.modules}
        src_s = {e.module: s.branch(e) for e in s.manifest.modules}
    assert sorted(got) == sorted(SHARED + [ONLY_CONTENT])
    for name in SHARED:
        want = fold(src_c[name], src_s[name], cal.m_content[name], cal.m_style[name], "input")
        assert got[name].rank == R_C + R_S
        np.testing.assert_allclose(got[name].dense(), want.dense(), rtol=1e-5, atol=1e-6)
        # Exact low rank: the stored factors are the fold's, column for column (F32 storage).
        np.testing.assert_allclose(got[name].up * got[name].scale, want.up * want.scale, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got[name].down, want.down, rtol=1e-6, atol=1e-7)
    only = got[ONLY_CONTENT]
    assert only.rank == R_C
    np.testing.assert_allclose(only.dense(), src_c[ONLY_CONTENT].dense(), rtol=1e-6, atol=1e-7)


def test_provenance_records_the_calibration(files, calibrated):
    out, _, cal, _ = calibrated
    with adapterctl.open(out) as merged:
        op = merged.manifest.provenance.operations[-1]
    args = op.args
    assert op.op == "merge" and args["method"] == "zip"
    assert args["calibrated"] is True and args["base"] == "tiny"
    assert args["content_image_sha256"] == _sha(files["c_png"])
    assert args["style_image_sha256"] == _sha(files["s_png"])
    assert args["content_prompt"] == "A [v] dog" and args["style_prompt"] == "A painting in [s] style"
    assert args["calibration_steps"] == STEPS and args["calibration_resolution"] == RESOLUTION
    assert args["calibration_loss_start"] == pytest.approx(cal.loss_start)
    assert args["calibration_loss_end"] == pytest.approx(cal.loss_end)
    assert args["calibration_overlap_end"] == pytest.approx(cal.overlap_end)
    assert "steps" not in args  # the data-free search's cap played no part
    assert args["zip_modules"] == len(SHARED)


def test_the_base_model_is_left_as_it_was(calibrated, tiny_base):
    from adapterctl.torch.layers import Adapted

    unet = tiny_base.pipe.unet
    assert not any(isinstance(m, Adapted) for m in unet.modules())
    assert not any(p.requires_grad for p in unet.parameters())


def test_images_and_prompts_from_the_train_provenance(files):
    from adapterctl.torch.references import references

    with adapterctl.open(files["prov_content"]) as c, adapterctl.open(files["prov_style"]) as s:
        refs = references(c, s)
        given = references(c, s, content_image=files["s_png"], content_prompt="flag")
    assert refs[0].image.path == files["prov_content"].parent / "refs" / "dog.png"
    assert refs[0].prompt == "A [c]" and refs[1].prompt == "A [s]"
    assert refs[0].resolution == RESOLUTION and refs[0].notes == ()
    assert given[0].image.sha256 == _sha(files["s_png"]) and given[0].prompt == "flag"  # a flag overrides


def test_cli_finds_the_images_from_provenance(files, tmp_path):
    """From another directory: the recorded 'refs/x.png' is found next to each adapter."""
    out = tmp_path / "out.safetensors"
    proc = subprocess.run([sys.executable, "-m", "adapterctl.cli.main", "merge", str(files["prov_content"]),
                           str(files["prov_style"]), "--method", "zip", "--base", "tiny", "--calibration-steps", "2",
                           "-o", str(out), "--json"], cwd=tmp_path, env={**cli_env(), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True
    with adapterctl.open(out) as merged:
        args = merged.manifest.provenance.operations[-1].args
        ranks = {e.module: e.rank for e in merged.manifest.modules}
    assert args["calibrated"] is True and args["calibration_steps"] == 2
    assert args["calibration_resolution"] == RESOLUTION  # the training resolution the inputs record
    assert args["content_image_sha256"] == _sha(files["c_png"]) and args["content_prompt"] == "A [c]"
    assert args["style_image_sha256"] == _sha(files["s_png"]) and args["style_prompt"] == "A [s]"
    assert all(ranks[n] == R_C + R_S for n in SHARED)


def test_bad_inputs_one_line_and_nothing_written(files, tmp_path):
    out = tmp_path / "out.safetensors"
    c, s = str(files["c"]), str(files["s"])
    zip_base = ["merge", c, s, "--method", "zip", "--base", "tiny", "-o", str(out)]
    cases = [
        (["merge", c, s, "--method", "cat", "--base", "tiny", "-o", str(out)], 2, "--base"),
        (["merge", c, s, "--method", "zip", "--content-image", str(files["c_png"]), "-o", str(out)], 2,
         "--content-image"),
        (zip_base, 2, "no content reference image: pass --content-image"),
        (zip_base + ["--content-image", str(files["c_png"])], 2, "no style reference image: pass --style-image"),
        (["merge", str(files["stale_content"]), str(files["prov_style"]), "--method", "zip", "--base", "tiny",
          "-o", str(out)], 2, "pass --content-image"),
        (zip_base + ["--content-image", str(files["not_image"]), "--style-image", str(files["s_png"])], 3,
         "not an image"),
        (zip_base + ["--content-image", str(tmp_path / "missing.png"), "--style-image", str(files["s_png"])], 2,
         "no such file"),
        (zip_base + ["--content-image", str(files["c_png"]), "--style-image", str(files["s_png"]),
                     "--calibration-steps", "0"], 2, "--calibration-steps"),
    ]
    before = sorted(os.listdir(tmp_path))
    results = run_cli_batch([argv for argv, _, _ in cases], timeout=300)
    for (argv, code, words), r in zip(cases, results):
        assert r.rc == code, (argv, r.stderr)
        assert len(r.error_lines) == 1 and r.error_lines[0].startswith("error:"), (argv, r.stderr)
        assert words in r.stderr, (argv, r.stderr)
    assert sorted(os.listdir(tmp_path)) == before and not out.exists()


def test_merge_without_base_does_not_import_torch(files, tmp_path):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "adapterctl.cli.main", "merge",
                           str(files["c"]), str(files["s"]), "--method", "zip", "-o", str(tmp_path / "o.safetensors")],
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "adapterctl" in imported and not {"torch", "diffusers", "PIL"} & imported


def test_content_given_second(files, tiny_base):
    """Roles, not argument order, say which image goes with which LoRA and which merger scales what."""
    with adapterctl.open(files["s"]) as s, adapterctl.open(files["c"]) as c:
        merged = adapterctl.merge([s, c], "zip", base=tiny_base, content_image=files["c_png"],
                                  style_image=files["s_png"], calibration_steps=1, resolution=RESOLUTION)
        cal = merged.report.calibration
        name = SHARED[0]
        got, src_s, src_c = (a.branch(next(e for e in a.manifest.modules if e.module == name)) for a in (merged, s, c))
        want = fold(src_s, src_c, cal.m_style[name], cal.m_content[name], "input")  # input order: style first
    assert cal.content_image_sha256 == _sha(files["c_png"]) and cal.content_prompt == ""
    assert any("empty prompt" in n for n in merged.report.notes)
    np.testing.assert_allclose(got.dense(), want.dense(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("conv", [False, True], ids=["linear", "conv3x3"])
@pytest.mark.parametrize("axis", ["input", "output"])
def test_live_mergers_are_what_fold_writes(conv, axis):
    """What the calibration trains (mergers on the live branches, a conv's per input channel) is
    what fold() writes into the file (a conv's merger repeated over its kernel)."""
    import torch

    from adapterctl.torch.zip_calibrate import _branch

    rng = np.random.default_rng(3)
    base = torch.nn.Conv2d(5, 6, 3, padding=1) if conv else torch.nn.Linear(12, 7)
    fan_in, out = (45, 6) if conv else (12, 7)
    fc = Factored(rng.standard_normal((out, 3)), rng.standard_normal((3, fan_in)), 0.6)
    fs = Factored(rng.standard_normal((out, 2)), rng.standard_normal((2, fan_in)), 1.3)
    bc, bs = (_branch(base, f, "m", torch.device("cpu")) for f in (fc, fs))
    mc, ms = bc.add_merger(axis), bs.add_merger(axis)
    with torch.no_grad():
        mc.copy_(torch.rand(mc.shape, generator=torch.Generator().manual_seed(0)))
        ms.copy_(torch.rand(ms.shape, generator=torch.Generator().manual_seed(1)))
    repeat = 9 if conv and axis == "input" else 1
    w = torch.from_numpy(fold(fc, fs, np.repeat(mc.detach().double().numpy(), repeat),
                              np.repeat(ms.detach().double().numpy(), repeat), axis).dense())
    x = torch.randn(2, 5, 4, 4) if conv else torch.randn(3, 12)
    live = (bc(x) + bs(x)).detach().double()
    want = torch.nn.functional.conv2d(x.double(), w.reshape(6, 5, 3, 3), padding=1) if conv else x.double() @ w.T
    torch.testing.assert_close(live, want, rtol=1e-5, atol=1e-5)
