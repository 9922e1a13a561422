"""Bad inputs to merge and prune, through the real CLI.

Contract for each case: exactly one stderr line, starting 'error:', the documented exit code
(adapterctl/errors.py: 2 usage, 3 damaged file, 5 unsupported), the expected words in it, and
nothing written: the directory listing (hidden temporaries included) and the inputs' bytes are
unchanged. All cases run in one interpreter (tests/_cli_helpers.run_cli_batch).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from _cli_helpers import REPO, listing, run_cli_batch
from safetensors.numpy import save_file

from adapterctl.arch import load_arch

VECTORS = REPO / "spec" / "vectors"
ARCH = load_arch("sdxl")

Q4 = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
K5 = "unet.down_blocks.1.attentions.1.transformer_blocks.0.attn1.to_k"
CONV1 = "unet.down_blocks.1.resnets.0.conv_shortcut"
METHODS = ["zip", "np", "cat", "linear", "svd", "ties", "dare", "dare_ties", "experts"]


def kohya(path: Path, modules: dict[str, int], *, seed: int = 0, poison: dict[str, float] | None = None) -> Path:
    """Plain kohya LoRA, F32, alpha = rank / 2. ``poison``: module -> value written into one entry of its up."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, rank in modules.items():
        s = ARCH.get(name)
        kernel = tuple(s.kernel) if s.kind == "conv" else ()
        down = rng.standard_normal((rank, s.in_features) + kernel).astype(np.float32)
        up = rng.standard_normal((s.out_features, rank) + ((1, 1) if kernel else ())).astype(np.float32)
        if poison and name in poison:
            up.reshape(-1)[3] = poison[name]
        base = ARCH.kohya_name(name)
        tensors.update({f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up,
                        f"{base}.alpha": np.array(rank / 2, dtype=np.float32)})
    save_file(tensors, str(path))
    return path


def dora(path: Path) -> Path:
    """A diffusers/peft-keyed DoRA branch (lora_magnitude_vector), as peft saves it."""
    rng = np.random.default_rng(5)
    p = Q4.removeprefix("unet.")
    save_file({f"unet.{p}.lora_A.weight": rng.standard_normal((4, 640)).astype(np.float32),
               f"unet.{p}.lora_B.weight": rng.standard_normal((640, 4)).astype(np.float32),
               f"unet.{p}.lora_magnitude_vector": (1 + rng.random(640)).astype(np.float32)}, str(path))
    return path


def vector(name: str, d: Path) -> Path:
    shutil.copyfile(VECTORS / name, d / name)
    return d / name


# Each case: (id, setup(d) -> argv (without 'adapterctl'), exit code, words the error line must hold)

def _other_shapes(d):
    """The same module at another width (a 32 x 32 to_q, as in a smaller model of SDXL's topology)
    in one input: the two cannot be adapters of one base model."""
    rng = np.random.default_rng(9)
    base = ARCH.kohya_name(Q4)
    small = d / "small.safetensors"
    save_file({f"{base}.lora_down.weight": rng.standard_normal((4, 32)).astype(np.float32),
               f"{base}.lora_up.weight": rng.standard_normal((32, 4)).astype(np.float32)}, str(small))
    big = kohya(d / "big.safetensors", {Q4: 4}, seed=1)
    return ["merge", big, small, "-m", "cat", "-o", d / "out.safetensors"]


def _pair(d):
    return kohya(d / "a.safetensors", {Q4: 4, CONV1: 2}, seed=1), kohya(d / "b.safetensors", {Q4: 3, K5: 2}, seed=2)


def _disjoint(method):
    def setup(d):
        c = kohya(d / "content.safetensors", {Q4: 4}, seed=1)
        s = kohya(d / "style.safetensors", {K5: 4}, seed=2)
        return ["merge", "--content", c, "--style", s, "-m", method, "-o", d / "out.safetensors"]
    return setup


def _untagged(method):
    def setup(d):
        a, b = _pair(d)
        return ["merge", a, b, "-m", method, "-o", d / "out.safetensors"]
    return setup


def _nan_merge(where, value):
    def setup(d):
        a = kohya(d / "a.safetensors", {Q4: 4, CONV1: 2}, seed=1, poison={where: value})
        b = kohya(d / "b.safetensors", {Q4: 3, K5: 2}, seed=2)
        return ["merge", a, b, "-m", "cat", "-o", d / "out.safetensors"]
    return setup


def _nan_prune(value, *flags):
    def setup(d):
        a = kohya(d / "a.safetensors", {Q4: 4, CONV1: 2}, seed=1, poison={Q4: value})
        return ["prune", a, *flags, "-o", d / "out.safetensors"]
    return setup


def _prune(*flags):
    def setup(d):
        a = kohya(d / "a.safetensors", {Q4: 4, CONV1: 2}, seed=1)
        return ["prune", a, *flags, "-o", d / "out.safetensors"]
    return setup


def _merge(*flags):
    def setup(d):
        a, b = _pair(d)
        return ["merge", a, b, *flags, "-o", d / "out.safetensors"]
    return setup


def _with(make, command, *flags):
    def setup(d):
        bad = make(d)
        if command == "prune":
            return ["prune", bad, *flags, "-o", d / "out.safetensors"]
        good = kohya(d / "good.safetensors", {Q4: 4}, seed=3)
        return ["merge", bad, good, *flags, "-o", d / "out.safetensors"]
    return setup


def _report_is_input(command):
    def setup(d):
        a, b = _pair(d)
        if command == "prune":
            return ["prune", a, "--rank", "2", "--report", a, "-o", d / "out.safetensors"]
        return ["merge", a, b, "-m", "cat", "--report", b, "-o", d / "out.safetensors"]
    return setup


CASES = [
    ("merge-shapes-differ", _other_shapes, 4, ["different shapes"]),
    ("zip-disjoint-modules", _disjoint("zip"), 2, ["share no module"]),
    ("np-disjoint-modules", _disjoint("np"), 2, ["share no module"]),
    ("zip-no-roles", _untagged("zip"), 2, ["content", "style"]),
    ("np-no-roles", _untagged("np"), 2, ["content", "style"]),
    ("merge-nan-in-shared-module", _nan_merge(Q4, float("nan")), 3, ["NaN"]),
    ("merge-inf-in-copied-module", _nan_merge(CONV1, float("inf")), 3, ["NaN"]),
    ("prune-nan", _nan_prune(float("nan"), "--rank", "2"), 3, ["NaN"]),
    ("prune-inf-columns", _nan_prune(float("-inf"), "--columns", "0.5"), 3, ["NaN"]),
    ("prune-inf-dynamic", _nan_prune(float("inf"), "--dynamic", "sv_fro", "--param", "0.9"), 3, ["NaN"]),
    ("prune-rank-0", _prune("--rank", "0"), 2, ["--rank"]),
    ("prune-rank-too-large", _prune("--rank", "8"), 2, ["larger than the rank", "--copy-smaller"]),
    ("prune-conv-rank-too-large", _prune("--rank", "2", "--conv-rank", "3"), 2, ["--conv-rank 3", "larger than"]),
    ("prune-nothing-to-do", _prune(), 2, ["nothing to prune"]),
    ("prune-dynamic-without-param", _prune("--dynamic", "sv_fro"), 2, ["--param"]),
    ("prune-unknown-dynamic", _prune("--dynamic", "sv_magic", "--param", "0.5"), 2, ["sv_ratio"]),
    ("prune-block-weights-7", _prune("--scale-blocks", "1,1,1,1,1,1,1"), 2, ["7 values", "12 or 20"]),
    ("merge-weights-count", _merge("-m", "cat", "--weights", "1,0.5,2"), 2, ["3 values for 2 inputs"]),
    ("merge-unknown-method", _merge("-m", "average"), 2, ["unknown merge method 'average'", *METHODS]),
    ("merge-block-weights-7", _merge("-m", "cat", "--block-weights", "1,1,1,1,1,1,1"), 2, ["7 values", "12 or 20"]),
    ("merge-block-weights-3-specs", _merge("-m", "cat", "--block-weights", "conv_in=0", "--block-weights",
                                           "conv_in=1", "--block-weights", "conv_in=2"), 2, ["3 times for 2 inputs"]),
    ("merge-param-not-taken", _merge("-m", "cat", "--rank", "4"), 2, ["does not take 'rank'"]),
    ("merge-one-input", lambda d: ["merge", kohya(d / "a.safetensors", {Q4: 4}), "-m", "cat",
                                   "-o", d / "out.safetensors"], 2, ["two or more inputs"]),
    ("merge-dora", _with(lambda d: dora(d / "dora.safetensors"), "merge", "-m", "cat"), 5, ["DoRA"]),
    ("prune-dora", _with(lambda d: dora(d / "dora.safetensors"), "prune", "--rank", "2"), 5, ["DoRA"]),
    ("merge-lycoris", _with(lambda d: vector("valid_lycoris_loha.safetensors", d), "merge", "-m", "cat"), 5,
     ["LyCORIS"]),
    ("prune-lycoris", _with(lambda d: vector("valid_lycoris_loha.safetensors", d), "prune", "--rank", "1"), 5,
     ["LyCORIS"]),
    ("merge-experts", _with(lambda d: vector("valid_expert_styleinject.safetensors", d), "merge", "-m", "cat"), 5,
     ["experts"]),
    ("prune-experts", _with(lambda d: vector("valid_expert_styleinject.safetensors", d), "prune", "--rank", "1"), 5,
     ["experts"]),
    ("experts-mix-count", lambda d: ["merge", vector("valid_expert_styleinject.safetensors", d), "-m", "experts",
                                     "--mix", "0.5,0.3,0.2", "-o", d / "out.safetensors"], 2, ["--mix has 3"]),
    ("experts-no-mix", lambda d: ["merge", vector("valid_expert_styleinject.safetensors", d), "-m", "experts",
                                  "-o", d / "out.safetensors"], 2, ["--mix", "--calibration"]),
    ("merge-report-is-input", _report_is_input("merge"), 2, ["input"]),
    ("prune-report-is-input", _report_is_input("prune"), 2, ["input"]),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Run every case once, in one interpreter; per case: (directory, argv, listing before, result)."""
    root = tmp_path_factory.mktemp("bad")
    prepared = []
    for case_id, setup, _, _ in CASES:
        d = root / case_id
        d.mkdir()
        argv = [str(a) for a in setup(d)]
        prepared.append((d, argv, listing(d)))
    outcome = run_cli_batch([argv for _, argv, _ in prepared], timeout=300)
    return {case[0]: (*prep, res) for case, prep, res in zip(CASES, prepared, outcome)}


@pytest.mark.parametrize("case_id,code,words", [(c[0], c[2], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_writes_nothing(results, case_id, code, words):
    d, argv, before, res = results[case_id]
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{argv[:3]}: stderr {res.stderr!r}"
    assert res.rc == code, f"exit {res.rc}, expected {code}: {lines[0]}"
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert "Traceback" not in res.stdout + res.stderr
    assert listing(d) == before, "the directory changed"
    assert not (d / "out.safetensors").exists()


def test_inputs_of_different_architectures(tmp_path):
    """A file for a base model with no map (its ModelSpec says SD 1.5) is refused when it is opened."""
    a = kohya(tmp_path / "a.safetensors", {Q4: 4}, seed=1)
    other = tmp_path / "sd15.safetensors"
    rng = np.random.default_rng(3)
    save_file({"lora_unet_output_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_down.weight":
               rng.standard_normal((4, 320)).astype(np.float32),
               "lora_unet_output_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_up.weight":
               rng.standard_normal((320, 4)).astype(np.float32)}, str(other),
              metadata={"modelspec.architecture": "stable-diffusion-v1/lora"})
    before = listing(tmp_path)
    (res,) = run_cli_batch([["merge", a, other, "-m", "cat", "-o", tmp_path / "out.safetensors"]])
    lines = res.stderr.splitlines()
    assert res.rc == 4 and len(lines) == 1 and "stable-diffusion-v1" in lines[0] and "architecture map" in lines[0], \
        res.stderr
    assert listing(tmp_path) == before


def test_merge_checks_that_inputs_share_one_architecture():
    """The check itself, with a second map stood in by a renamed copy of one input's map."""
    import copy
    import dataclasses

    import adapterctl
    from adapterctl.errors import UsageError

    a = adapterctl.open(REPO / "spec" / "vectors" / "valid_kohya_sgm_locon.safetensors")
    b = adapterctl.open(REPO / "spec" / "vectors" / "valid_kohya_diffusers_names.safetensors")
    renamed = copy.copy(load_arch("sdxl"))
    renamed.name = "sdxl-other"
    assert a.arch.name == "sdxl"
    b = dataclasses.replace(b, arch=renamed)
    with pytest.raises(UsageError, match="different architectures"):
        adapterctl.merge([a, b], "cat")


def test_rank_too_large_with_copy_smaller_copies(tmp_path):
    a = kohya(tmp_path / "a.safetensors", {Q4: 4, CONV1: 2}, seed=1)
    out = tmp_path / "out.safetensors"
    (res,) = run_cli_batch([["prune", a, "--rank", "8", "--copy-smaller", "-o", out]])
    assert res.rc == 0, res.stderr
    assert out.exists()
    from safetensors.numpy import load_file

    src, got = load_file(str(a)), load_file(str(out))
    assert set(src) == set(got)
    for key in src:
        assert src[key].dtype == got[key].dtype and src[key].tobytes() == got[key].tobytes(), key


def test_a_shape_claim_cannot_make_a_dense_merge_allocate(tmp_path):
    """Two 0.8 MB files whose rank-1 factors claim a 200,000 x 200,000 module: ties would build
    that dense update (40 G values). The map bounds it; refused in well under a second."""
    import time

    paths = []
    for i in (1, 2):
        rng = np.random.default_rng(i)
        path = tmp_path / f"huge{i}.safetensors"
        save_file({"lora_unet_time_embed_0.lora_down.weight": rng.standard_normal((1, 200_000)).astype(np.float16),
                   "lora_unet_time_embed_0.lora_up.weight": rng.standard_normal((200_000, 1)).astype(np.float16)},
                  str(path))
        paths.append(path)
    before = listing(tmp_path)
    start = time.monotonic()
    (res,) = run_cli_batch([["merge", *paths, "-m", "ties", "-o", tmp_path / "out.safetensors"]])
    assert time.monotonic() - start < 30
    lines = res.stderr.splitlines()
    assert res.rc == 4 and len(lines) == 1 and "200000 x 200000" in lines[0] and "sdxl map" in lines[0], res.stderr
    assert listing(tmp_path) == before
