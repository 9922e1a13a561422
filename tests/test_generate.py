"""adapterctl generate on the tiny base, on the CPU: fusing is exact, per role and linear; the CLI
writes PNGs of the asked size, grids of the documented size, and refuses bad input in one line.

The CLI calls share one interpreter (``run_cli_batch``: ~4 s of torch/diffusers import and tiny
model build paid once); one spot check goes through the real ``python -m`` entry point.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from _cli_helpers import run_cli, run_cli_batch
from PIL import Image
from safetensors.numpy import save_file

import adapterctl
from adapterctl.arch import load_arch, target_presets
from adapterctl.errors import UsageError
from adapterctl.torch.apply import AdapterSpec, fuse, parse_adapter_spec
from adapterctl.torch.generate import grid_size

TINY = load_arch("sdxl-tiny")
CONTENT_BLOCK, STYLE_BLOCK = "up_blocks.0.attentions.0", "up_blocks.0.attentions.1"
STEPS = ("--steps", "2")


# -- test adapters -----------------------------------------------------------------------------

def write_kohya(path, arch, names, *, seed: int, rank: int = 4, alpha: float = 2.0, metadata=None) -> dict:
    """A kohya file over ``names``; returns canonical name -> ΔW (float64, what a loader adds)."""
    rng = np.random.default_rng(seed)
    tensors, truth = {}, {}
    for name in names:
        spec, key = arch.modules[name], arch.kohya_name(name)
        down = (rng.standard_normal((rank, spec.in_features)) * 0.2).astype(np.float32)
        up = (rng.standard_normal((spec.out_features, rank)) * 0.2).astype(np.float32)
        tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                        f"{key}.alpha": np.array(alpha, np.float32)})
        truth[name] = alpha / rank * (up.astype(np.float64) @ down.astype(np.float64))
    save_file(tensors, str(path), metadata=metadata)
    return truth


def write_blora(path, seed: int) -> dict:
    names = target_presets("sdxl-tiny")["b-lora"].modules(TINY)
    return write_kohya(path, TINY, names, seed=seed, metadata={"modelspec.architecture": "adapterctl-sdxl-tiny/lora"})


def write_expert(path) -> None:
    """StyleInject-shaped: 3 experts with a shared up and a router, on one tiny module."""
    rng = np.random.default_rng(5)
    key = f"unet.{STYLE_BLOCK}.transformer_blocks.0.attn1.to_q"
    f32 = np.float32
    save_file({f"{key}.lora_experts_A.weight": rng.standard_normal((3, 2, 64)).astype(f32),
               f"{key}.lora_experts_B.weight": rng.standard_normal((64, 2)).astype(f32),
               f"{key}.lora_router.weight": rng.standard_normal((3, 64)).astype(f32),
               f"{key}.lora_router.bias": rng.standard_normal(3).astype(f32)},
              str(path), metadata={"modelspec.architecture": "adapterctl-sdxl-tiny/lora"})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("adapters")
    out = {"dir": d, "blora": d / "blora.safetensors", "blora2": d / "painting.safetensors",
           "sdxl": d / "sdxl.safetensors", "expert": d / "expert.safetensors"}
    out["truth"] = write_blora(out["blora"], seed=1)
    write_blora(out["blora2"], seed=2)
    sdxl = load_arch("sdxl")
    write_kohya(out["sdxl"], sdxl, target_presets("sdxl")["b-lora"].modules(sdxl)[:2], seed=3)
    write_expert(out["expert"])
    out["png_named"] = d / "adapter.png"  # an input the output check must protect even with --force
    out["png_named"].write_bytes(out["blora"].read_bytes())
    return out


@pytest.fixture(scope="module")
def tiny():
    from adapterctl.torch.base import load_base

    return load_base("tiny")


def test_test_files_have_the_roles_they_need(files):
    with adapterctl.open(files["blora"]) as a:
        assert a.arch.name == "sdxl-tiny" and a.roles() == {"content": 80, "style": 80}
        assert a.blocks() == {CONTENT_BLOCK: 80, STYLE_BLOCK: 80}
    with adapterctl.open(files["sdxl"]) as a:
        assert a.arch.name == "sdxl"
    with adapterctl.open(files["expert"]) as a:
        assert a.roles() == {"expert": 1}


# -- the spec syntax ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("a.safetensors", ("a.safetensors", None, 1.0)),
    ("a.safetensors:style", ("a.safetensors", "style", 1.0)),
    ("a.safetensors:content=0.25", ("a.safetensors", "content", 0.25)),
    ("a.safetensors:1.5", ("a.safetensors", None, 1.5)),
    ("a.safetensors:untagged=-1", ("a.safetensors", "untagged", -1.0)),
    ("dir:x/a.safetensors:style=2", ("dir:x/a.safetensors", "style", 2.0)),  # only the last ':' counts
    ("dir:x/a.safetensors", ("dir:x/a.safetensors", None, 1.0)),
    ("odd:name.safetensors", ("odd:name.safetensors", None, 1.0)),  # '.safetensors' is no role
])
def test_parse_adapter_spec(text, want):
    spec = parse_adapter_spec(text)
    assert (str(spec.path), spec.role, spec.scale) == want


@pytest.mark.parametrize("text, words", [
    ("a.safetensors:stlye", "unknown role 'stlye'"), ("a.safetensors:style=abc", "not a number"),
    ("a.safetensors:style=inf", "not finite"), ("a.safetensors:nan", "not finite"), (":style", "names no file"),
])
def test_parse_adapter_spec_refuses(text, words):
    with pytest.raises(UsageError, match=words):
        parse_adapter_spec(text)


def test_a_file_really_named_with_a_role_suffix_wins(tmp_path):
    (tmp_path / "x:style").write_bytes(b"")
    assert parse_adapter_spec(str(tmp_path / "x:style")) == AdapterSpec(tmp_path / "x:style")


# -- fusing: exact, per role, linear, undone bit-exactly ------------------------------------------

def _weights(pipe) -> dict[str, torch.Tensor]:
    return {f"{c}.{n}": p.detach().clone() for c in ("unet", "text_encoder", "text_encoder_2", "vae")
            for n, p in getattr(pipe, c).named_parameters()}


def _changes(before, after) -> dict[str, torch.Tensor]:
    return {k: (after[k].double() - before[k].double()) for k in before if not torch.equal(before[k], after[k])}


def _expected(truth, block: str | None, scale: float) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": torch.from_numpy(scale * delta) for name, delta in truth.items()
            if block is None or TINY.block_of(name) == block}


def _assert_changes(got, want):
    assert sorted(got) == sorted(want), "fusing changed other weights than the selected modules'"
    for k in want:
        assert torch.allclose(got[k], want[k], rtol=1e-5, atol=1e-6), k


def test_fuse_style_changes_exactly_the_style_block(files, tiny):
    before = _weights(tiny.pipe)
    with fuse(tiny.pipe, tiny.arch, [parse_adapter_spec(f"{files['blora']}:style=1.5")]) as report:
        _assert_changes(_changes(before, _weights(tiny.pipe)), _expected(files["truth"], STYLE_BLOCK, 1.5))
        assert [(p.modules, p.roles) for p in report.adapters] == [(80, {"style": 80})]
    after = _weights(tiny.pipe)
    assert all(torch.equal(before[k], after[k]) for k in before), "restore is not bit-exact"


def test_fuse_without_role_changes_both_blocks(files, tiny):
    before = _weights(tiny.pipe)
    report = fuse(tiny.pipe, tiny.arch, [AdapterSpec(files["blora"])])
    try:
        _assert_changes(_changes(before, _weights(tiny.pipe)), _expected(files["truth"], None, 1.0))
    finally:
        report.restore()
    after = _weights(tiny.pipe)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_scale_is_linear(files, tiny):
    before = _weights(tiny.pipe)
    deltas = {}
    for scale in (1.0, 2.0):
        with fuse(tiny.pipe, tiny.arch, [AdapterSpec(files["blora"], "content", scale)]):
            deltas[scale] = _changes(before, _weights(tiny.pipe))
    assert sorted(deltas[1.0]) == sorted(deltas[2.0]) and len(deltas[1.0]) == 80
    for k, d in deltas[1.0].items():
        assert torch.allclose(deltas[2.0][k], 2 * d, rtol=1e-5, atol=1e-6), k


def test_a_refused_spec_leaves_the_weights_alone(files, tiny):
    before = _weights(tiny.pipe)
    with pytest.raises(adapterctl.AdapterError, match="experts"):
        fuse(tiny.pipe, tiny.arch, [AdapterSpec(files["blora"], "style"), AdapterSpec(files["expert"])])
    after = _weights(tiny.pipe)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_failure_midway_restores_what_was_fused(files, tiny, monkeypatch):
    from adapterctl.torch import apply

    before, calls, real = _weights(tiny.pipe), [], apply._add

    def flaky(*args, **kw):
        calls.append(1)
        if len(calls) == 30:
            raise OSError("disk gone")
        return real(*args, **kw)

    monkeypatch.setattr(apply, "_add", flaky)
    with pytest.raises(OSError):
        fuse(tiny.pipe, tiny.arch, [AdapterSpec(files["blora"])])
    after = _weights(tiny.pipe)
    assert len(calls) == 30 and all(torch.equal(before[k], after[k]) for k in before)


def test_grid_size_formula():
    # u = 1 below 512 px: 192 px of row labels, a 40 px header, 8 px between cells.
    assert grid_size(64, 64, 3, 3, 2) == (192 + 3 * 2 * 64 + 2 * 8, 40 + 3 * 64 + 2 * 8)
    assert grid_size(1024, 1024, 2, 2, 1) == (4 * 192 + 2 * 1024 + 4 * 8, 4 * 40 + 2 * 1024 + 4 * 8)


# -- the CLI -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_base(tiny, tmp_path_factory):
    """The tiny pipeline as a diffusers folder: the real from_pretrained path of --base DIR."""
    folder = tmp_path_factory.mktemp("base") / "tiny-folder"
    tiny.pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def cli(files, saved_base):
    """Every CLI call of this module, run once in one interpreter: name -> (result, output path)."""
    d, blora, paint = files["dir"], files["blora"], files["blora2"]
    (d / "exists.png").write_bytes(b"not replaced")
    small = ("--base", "tiny", "--width", "64", "--height", "96", *STEPS)
    calls = {
        "small": [*small, "--adapter", f"{blora}:style=1.5", "-o", d / "small.png", "--json"],
        "again": [*small, "--adapter", f"{blora}:style=1.5", "-o", d / "again.png", "--json"],
        "seed1": [*small, "--adapter", f"{blora}:style=1.5", "-o", d / "seed1.png", "--seed", "1", "--quiet"],
        "grid": ["--base", "tiny", "--width", "64", "--height", "64", *STEPS, "--grid", "--seeds", "0,1", "--json",
                 "--adapter", f"{blora}:content", "--adapter", f"{paint}:content=0.5",
                 "--adapter", f"{blora}:style", "--adapter", f"{paint}:style", "-o", d / "grid.png"],
        "plain64": ["--base", "tiny", "--width", "64", "--height", "64", *STEPS, "-o", d / "plain64.png"],
        "folder": ["--base", saved_base, "--width", "64", "--height", "96", *STEPS,
                   "--adapter", f"{blora}:style=1.5", "-o", d / "folder.png", "--json"],
        "force": [*small, "-o", d / "forced.png", "--force"],
        # bad inputs: one line each, nothing written
        "unknown_role": [*small, "--adapter", f"{blora}:colour", "-o", d / "bad1.png"],
        "absent_role": [*small, "--adapter", f"{files['expert']}:style", "-o", d / "bad2.png"],
        "nonfinite": [*small, "--adapter", f"{blora}:style=inf", "-o", d / "bad3.png"],
        "nonnumeric": [*small, "--adapter", f"{blora}:style=lots", "-o", d / "bad4.png"],
        "missing": [*small, "--adapter", d / "nope.safetensors", "-o", d / "bad5.png"],
        "sdxl": [*small, "--adapter", files["sdxl"], "-o", d / "bad6.png"],
        "width": ["--base", "tiny", "--width", "100", *STEPS, "-o", d / "bad7.png"],
        "exists": [*small, "-o", d / "exists.png"],
        "expert": [*small, "--adapter", files["expert"], "-o", d / "bad8.png"],
        "grid_untagged": [*small, "--grid", "--adapter", blora, "-o", d / "bad9.png"],
        "seeds_no_grid": [*small, "--seeds", "1,2", "-o", d / "bad10.png"],
        "steps": [*small[:-2], "--steps", "0", "-o", d / "bad11.png"],
        "not_png": [*small, "-o", d / "bad12.jpg"],
        "into_input": [*small, "--adapter", files["png_named"], "-o", files["png_named"], "--force"],
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # nothing may try the network
        # One torch thread, as a user's OMP_NUM_THREADS pins it: the tiny model's matrices are 64
        # wide, and on a busy 2-core machine a second thread's spin-waiting made sampling 5-10x slower.
        mp.setenv("OMP_NUM_THREADS", "1")
        results = run_cli_batch([["generate", "a dog", *argv] for argv in calls.values()], cwd=d, timeout=300)
    return {name: (result, next((a for a in reversed(argv) if str(a).endswith((".png", ".jpg",
                                                                                ".safetensors"))), None))
            for (name, argv), result in zip(calls.items(), results)}


def _ok(cli, name):
    result, path = cli[name]
    assert result.rc == 0, result.stderr
    assert result.stderr == "", "the libraries' own logs and progress bars must stay silenced"
    return result, path


def test_generate_writes_a_png_of_the_asked_size(cli):
    result, path = _ok(cli, "small")
    doc = json.loads(result.stdout)
    assert doc["ok"] and doc["width"] == 64 and doc["height"] == 96 and doc["seeds"] == [0]
    assert [(a["role"], a["scale"], a["modules"]) for a in doc["adapters"]] == [("style", 1.5, 80)]
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (64, 96) and image.mode == "RGB"


def test_same_seed_same_bytes_other_seed_other_pixels(cli):
    a, b, c = (_ok(cli, n)[1] for n in ("small", "again", "seed1"))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert cli["seed1"][0].stdout == ""  # --quiet


def test_grid_has_the_documented_size_and_cells(cli):
    result, path = _ok(cli, "grid")
    doc = json.loads(result.stdout)
    assert doc["grid"]["rows"] == ["no content", "blora:content=1", "painting:content=0.5"]
    assert doc["grid"]["cols"] == ["no style", "blora:style=1", "painting:style=1"]
    with Image.open(path) as image:
        grid = np.asarray(image.convert("RGB"))
    assert (grid.shape[1], grid.shape[0]) == grid_size(64, 64, 3, 3, 2) == (592, 248)
    # The top-left cell is the base alone: seed 0's sample equals a plain run's pixels.
    with Image.open(_ok(cli, "plain64")[1]) as plain:
        assert np.array_equal(grid[40:104, 192:256], np.asarray(plain.convert("RGB")))
    assert not np.array_equal(grid[40:104, 192:256], grid[40:104, 256:320]), "both seeds drew the same"
    assert not np.array_equal(grid[40:104, 192:256], grid[40 + 72:104 + 72, 192:256]), "content did nothing"


def test_base_folder_gives_the_tiny_models_pixels(cli):
    result, path = _ok(cli, "folder")
    assert json.loads(result.stdout)["adapters"][0]["modules"] == 80
    with Image.open(path) as a, Image.open(cli["small"][1]) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_force_overwrites(cli):
    _, path = _ok(cli, "force")
    assert Image.open(io.BytesIO(path.read_bytes())).size == (64, 96)


@pytest.mark.parametrize("name, words", [
    ("unknown_role", "unknown role 'colour'"), ("absent_role", "has no 'style' branches (it has expert 1)"),
    ("nonfinite", "not finite"), ("nonnumeric", "not a number"), ("missing", "nope.safetensors"),
    ("sdxl", "sdxl.safetensors is for sdxl, the base model is sdxl-tiny"), ("width", "multiple of 8"),
    ("exists", "output exists"), ("expert", "adapterctl merge FILE --method experts"),
    ("grid_untagged", "content or the style axis"), ("seeds_no_grid", "--seeds is for --grid"),
    ("steps", "between 1 and 1000"), ("not_png", "does not end in .png"), ("into_input", "is the input"),
])
def test_bad_inputs_fail_in_one_line(cli, files, name, words):
    result, path = cli[name]
    assert result.rc != 0
    assert len(result.error_lines) == 1 and result.error_lines[0].startswith("error: "), result.stderr
    assert words in result.stderr
    assert "Traceback" not in result.stderr
    if name == "exists":
        assert path.read_bytes() == b"not replaced"
    elif name == "into_input":
        with adapterctl.open(path) as a:
            assert a.roles() == {"content": 80, "style": 80}
    else:
        assert not path.exists()


def test_help_says_what_the_user_must_know():
    import typer

    from adapterctl.cli.main import app
    from adapterctl.torch.base import DEFAULT_BASE

    command = typer.main.get_command(app).commands["generate"]
    text = " ".join([command.help, *(p.help or "" for p in command.params)])
    for words in (DEFAULT_BASE, "images are noise", "ΔW·scale", "alpha²", "pass scale a²", "--method experts",
                  "192u + C·S·w + (C−1)·8u"):
        assert words in " ".join(text.split()), words


def test_real_entry_point_default_size(files, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run_cli("generate", "a dog", "--base", "tiny", "--steps", "1", "--adapter", f"{files['blora']}:content",
                     cwd=tmp_path)
    assert result.rc == 0, result.stderr
    assert result.stdout.startswith("Wrote generated.png (128x128")
    with Image.open(tmp_path / "generated.png") as image:
        assert image.size == (128, 128)
