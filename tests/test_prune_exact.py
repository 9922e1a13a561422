"""PRUNE keeps what it says, against dense numpy built from the input factors.

Numeric tests use SDXL's real module shapes (a few modules, F32 factors) and read outputs with a
kohya reader written here; the layout tests prune kohya, diffusers and peft inputs built on the
tiny SDXL-topology models and load the outputs in real diffusers / peft.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import adapterctl
from _lora_files import ARCH, CONV1, CONV3, K5, KOHYA_NAMES, P4, Q4, TE, V3, Branch, kohya_branch, read_kohya

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore:The following alpha_pattern keys:RuntimeWarning")]

# The block of each module, written out (not read from the architecture map).
BLOCK = {TE: "text_encoder.layers.0", CONV3: "conv_in", CONV1: "down_blocks.1.resnets.0",
         Q4: "down_blocks.1.attentions.0", P4: "down_blocks.1.attentions.0", K5: "down_blocks.1.attentions.1",
         V3: "up_blocks.1.attentions.0"}

# name -> (rank, alpha, singular-value decay); alpha None = no alpha tensor (alpha = rank)
SPEC = {TE: (8, 4.0, 0.55), CONV3: (6, 3.0, 0.7), CONV1: (8, 2.0, 0.85), Q4: (8, None, 0.4),
        P4: (7, 10.5, 0.75), K5: (6, 12.0, 0.6), V3: (5, 2.5, 0.9)}


def kohya_file(path, spec, *, seed):
    """kohya (SGM names) LoRA with real SDXL shapes and a chosen spectrum: up = U sqrt(S),
    down = sqrt(S) V^T with random orthonormal U, V and S decaying geometrically (so the
    dynamic rules pick different ranks per module). Returns name -> Branch as stored (F32)."""
    rng = np.random.default_rng(seed)
    tensors, truth = {}, {}
    for name, (rank, alpha, decay) in spec.items():
        s = ARCH.get(name)
        kernel = tuple(s.kernel) if s.kind == "conv" else ()
        n_in = s.in_features * math.prod(kernel or (1,))
        u = np.linalg.qr(rng.standard_normal((s.out_features, rank)))[0]
        v = np.linalg.qr(rng.standard_normal((n_in, rank)))[0]
        root = np.sqrt(3.0 * decay ** np.arange(rank) * (1 + 0.05 * rng.random(rank)))
        # contiguous: safetensors writes the buffer as it lies in memory
        up_shape = (s.out_features, rank) + ((1, 1) if kernel else ())
        up = np.ascontiguousarray(u * root, dtype=np.float32).reshape(up_shape)
        down = np.ascontiguousarray(root[:, None] * v.T, dtype=np.float32).reshape((rank, s.in_features) + kernel)
        truth[name] = kohya_branch(tensors, name, up, down, alpha)
    save_file(tensors, str(path))
    return truth


def raw_tensors(path) -> dict[str, tuple[str, tuple, bytes]]:
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    body = data[8 + n:]
    return {k: (v["dtype"], tuple(v["shape"]), body[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items()}


def by_module(raw) -> dict[str, dict[str, tuple]]:
    out: dict[str, dict] = {}
    for key, value in raw.items():
        for suffix, part in ((".lora_down.weight", "down"), (".lora_up.weight", "up"), (".alpha", "alpha")):
            if key.endswith(suffix):
                out.setdefault(KOHYA_NAMES[key.removesuffix(suffix)], {})[part] = value
    return out


def alpha_value(entry) -> float:
    dtype, _, data = entry
    return float(np.frombuffer(data, dtype={"F16": np.float16, "F32": np.float32, "F64": np.float64}[dtype])[0])


def manifest_of(path) -> dict:
    with safe_open(str(path), "np") as f:
        return json.loads(f.metadata()["adapterctl.manifest"])


def assert_close(got, want, *, ref=None, rtol=2e-6, what=""):
    ref = np.linalg.norm(want) if ref is None else ref
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err = np.linalg.norm(got - want)
    assert err <= rtol * ref, f"{what}: ||got - want|| = {err:.3g}, allowed {rtol * ref:.3g}"


def pruned(path, out, **kw):
    with adapterctl.open(path) as a:
        p = a.prune(**kw)
        p.save(out, force=True)
        return p


def svd_of(b: Branch):
    """(U, S, Vt) of scale * up @ down, the textbook way for a low-rank product: Householder QR
    of each factor, then the SVD of the r x r core (adapterctl goes through Gram matrices
    instead). Dense SVDs of 640x640 matrices would cost seconds each here; one test checks this
    route against np.linalg.svd of the dense matrix."""
    qu, ru = np.linalg.qr(b.up)
    qv, rv = np.linalg.qr(b.down.T)
    u, s, vt = np.linalg.svd(b.scale * ru @ rv.T)
    return qu @ u, s, vt @ qv.T


def singular_values(b: Branch) -> np.ndarray:
    return svd_of(b)[1]


def truncated(b: Branch, k: int) -> np.ndarray:
    u, s, vt = svd_of(b)
    return (u[:, :k] * s[:k]) @ vt[:k]


def masked(b: Branch, cols: np.ndarray) -> Branch:
    return Branch(b.up, b.down * cols[None, :], b.scale)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("prune")
    truth = kohya_file(d / "src.safetensors", SPEC, seed=7)
    return d / "src.safetensors", truth


# ---------------------------------------------------------------------------------------------
# --rank: the optimal truncation, the scale kept
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rank,conv_rank", [(3, None), (4, 2), (1, 5)])
def test_rank_error_is_the_optimal_truncation_error(source, tmp_path, rank, conv_rank):
    path, truth = source
    out = tmp_path / "out.safetensors"
    p = pruned(path, out, rank=rank, conv_rank=conv_rank)
    got = read_kohya(out)
    entries = {e["module"]: e for e in manifest_of(out)["modules"]}
    report = {row["module"]: row for row in p.report.to_dict()["modules"]}
    assert set(got) == set(truth) == set(report)
    for name, b in truth.items():
        dense = b.dense()
        k = min(conv_rank if conv_rank and ARCH.get(name).kind == "conv" else rank, b.rank)
        s = singular_values(b)
        optimal = float(np.sqrt(np.sum(s[k:] ** 2)))
        err = float(np.linalg.norm(got[name] - dense))
        assert entries[name]["rank"] == k
        assert abs(err - optimal) <= 2e-6 * np.linalg.norm(dense), f"{name}: error {err}, optimal {optimal}"
        assert_close(got[name], truncated(b, k), ref=np.linalg.norm(dense), what=f"rank {k} {name}")
        if k < b.rank:
            assert optimal > 1e-3 * np.linalg.norm(dense)  # a wrong truncation would show
            assert np.isclose(entries[name]["scale"], b.scale)  # the scale a loader applies is kept
        assert report[name]["rank_in"] == b.rank and report[name]["rank_out"] == k
        assert np.isclose(report[name]["relative_error"], optimal / np.linalg.norm(dense), rtol=1e-6, atol=1e-9)
        assert np.isclose(report[name]["retained_energy"], np.sum(s[:k] ** 2) / np.sum(s ** 2), rtol=1e-9)


def test_rank_output_shapes_and_alpha(source, tmp_path):
    path, truth = source
    out = tmp_path / "out.safetensors"
    pruned(path, out, rank=3, conv_rank=2)
    mods = by_module(raw_tensors(out))
    for name, b in truth.items():
        k = 2 if ARCH.get(name).kind == "conv" else 3
        s = ARCH.get(name)
        kernel = tuple(s.kernel) if s.kind == "conv" else ()
        assert mods[name]["down"][1] == (k, s.in_features) + kernel
        assert mods[name]["up"][1] == (s.out_features, k) + ((1, 1) if kernel else ())
        assert mods[name]["down"][0] == "F32"
        assert np.isclose(alpha_value(mods[name]["alpha"]) / k, b.scale)  # kohya: alpha / rank = the old scale


def test_full_rank_is_byte_identical(tmp_path):
    path = tmp_path / "uniform.safetensors"
    truth = kohya_file(path, {n: (6, a, d) for n, (_, a, d) in SPEC.items()}, seed=8)
    out = tmp_path / "out.safetensors"
    pruned(path, out, rank=6)
    src, got = raw_tensors(path), raw_tensors(out)
    assert src == got  # every tensor: same name, dtype, shape and bytes
    for name, dense in read_kohya(out).items():
        assert np.array_equal(dense, truth[name].dense())


def test_copy_smaller_copies_the_smaller_branches_byte_for_byte(source, tmp_path):
    path, truth = source
    out = tmp_path / "out.safetensors"
    pruned(path, out, rank=6, copy_smaller=True)
    src, got = by_module(raw_tensors(path)), by_module(raw_tensors(out))
    dense = read_kohya(out)
    for name, b in truth.items():
        if b.rank <= 6:
            assert got[name] == src[name], name
        else:
            assert got[name]["down"][1][0] == 6
            assert_close(dense[name], truncated(b, 6), ref=np.linalg.norm(b.dense()), what=name)


def test_the_reference_svd_is_numpys_dense_svd(source):
    _, truth = source
    for name in (CONV3, CONV1):  # 320 x 36 and 640 x 320: cheap enough densely
        b = truth[name]
        want = np.linalg.svd(b.dense(), compute_uv=False)[:b.rank]
        assert np.allclose(singular_values(b), want, rtol=1e-10, atol=1e-12 * want[0])
        u, s, vt = np.linalg.svd(b.dense(), full_matrices=False)
        assert np.allclose(truncated(b, 3), (u[:, :3] * s[:3]) @ vt[:3], atol=1e-12 * s[0])


# ---------------------------------------------------------------------------------------------
# dynamic ranks: kohya's rules, computed here from the dense singular values
# ---------------------------------------------------------------------------------------------

def _rule_rank(s: np.ndarray, rule: str, param: float) -> int:
    if rule == "sv_ratio":  # keep s >= s_max / param
        k = int(np.sum(s >= s[0] / param))
    elif rule == "sv_fro":  # fewest with sqrt(cumsum s^2 / sum s^2) >= param
        share = np.sqrt(np.cumsum(s ** 2) / np.sum(s ** 2))
        k = int(np.argmax(share >= param - 1e-12)) + 1
    else:  # sv_cumulative: fewest with cumsum s / sum s >= param
        share = np.cumsum(s) / np.sum(s)
        k = int(np.argmax(share >= param - 1e-12)) + 1
    return max(k, 1)


@pytest.mark.parametrize("rule,param,cap", [("sv_ratio", 4.0, None), ("sv_ratio", 12.0, 4), ("sv_fro", 0.9, None),
                                            ("sv_fro", 0.99, None), ("sv_cumulative", 0.7, None),
                                            ("sv_cumulative", 0.9, 5)])
def test_dynamic_rules_pick_the_documented_ranks(source, tmp_path, rule, param, cap):
    path, truth = source
    out = tmp_path / "out.safetensors"
    p = pruned(path, out, dynamic=rule, param=param, rank=cap)
    entries = {e["module"]: e for e in manifest_of(out)["modules"]}
    got = read_kohya(out)
    report = {row["module"]: row for row in p.report.to_dict()["modules"]}
    picked = {}
    for name, b in truth.items():
        dense = b.dense()
        s = singular_values(b)
        k = min(_rule_rank(s, rule, param), cap or b.rank, b.rank)
        picked[name] = k
        assert entries[name]["rank"] == k, f"{rule} {param}: {name} has rank {entries[name]['rank']}, rule says {k}"
        assert report[name]["rank_out"] == k
        assert_close(got[name], truncated(b, k), ref=np.linalg.norm(dense), what=f"{rule} {name}")
    # the spectra make the rule matter: ranks differ between modules, and some are cut
    assert len(set(picked.values())) > 1 and any(k < truth[n].rank for n, k in picked.items()), picked


# ---------------------------------------------------------------------------------------------
# --columns / --energy: the strongest input features kept, the others zero
# ---------------------------------------------------------------------------------------------

def _feature_norms(dense: np.ndarray, name: str) -> np.ndarray:
    """||delta_W[:, cols of feature]||^2 per input feature (a conv input channel: its kh*kw columns)."""
    n_in = ARCH.get(name).in_features
    return (dense ** 2).sum(axis=0).reshape(n_in, -1).sum(axis=1)


def _kept_features(dense, name, *, columns=None, energy=None) -> np.ndarray:
    norms = _feature_norms(dense, name)
    order = np.argsort(norms)[::-1]
    if columns is not None:
        keep = max(1, math.ceil(columns * norms.size))
    else:
        share = np.cumsum(norms[order]) / norms.sum()
        keep = int(np.argmax(share >= energy - 1e-12)) + 1
    mask = np.zeros(norms.size, dtype=bool)
    mask[order[:keep]] = True
    return mask


@pytest.mark.parametrize("kw", [{"columns": 0.25}, {"columns": 0.05}, {"energy": 0.5}, {"energy": 0.9}])
def test_columns_and_energy_keep_the_strongest_features(source, tmp_path, kw):
    path, truth = source
    out = tmp_path / "out.safetensors"
    p = pruned(path, out, **kw)
    got = read_kohya(out)
    report = {row["module"]: row for row in p.report.to_dict()["modules"]}
    dropped_somewhere = False
    for name, b in truth.items():
        dense = b.dense()
        mask = _kept_features(dense, name, **kw)
        assert mask.sum() > 0
        dropped_somewhere = dropped_somewhere or mask.sum() < mask.size
        cols = np.repeat(mask, dense.shape[1] // mask.size)  # conv: a channel's kh*kw columns together
        ref = np.linalg.norm(dense)
        assert_close(got[name][:, cols], dense[:, cols], ref=ref, what=f"{kw} kept {name}")
        assert np.all(got[name][:, ~cols] == 0), f"{kw}: dropped features of {name} are not zero"
        retained = np.sum(dense[:, cols] ** 2) / np.sum(dense ** 2)
        assert np.isclose(report[name]["retained_energy"], retained, rtol=1e-6), name
        if "energy" in kw:
            assert retained >= kw["energy"] - 1e-9
            assert retained - _feature_norms(dense, name)[mask].min() / np.sum(dense ** 2) < kw["energy"]  # fewest
    assert dropped_somewhere


def test_columns_then_rank(source, tmp_path):
    path, truth = source
    out = tmp_path / "out.safetensors"
    p = pruned(path, out, columns=0.3, rank=2)
    got = read_kohya(out)
    report = {row["module"]: row for row in p.report.to_dict()["modules"]}
    for name, b in truth.items():
        dense = b.dense()
        cols = np.repeat(_kept_features(dense, name, columns=0.3), dense.shape[1] // ARCH.get(name).in_features)
        want = truncated(masked(b, cols), 2)
        assert_close(got[name], want, ref=np.linalg.norm(dense), what=f"columns+rank {name}")
        assert np.isclose(report[name]["retained_energy"], np.sum(want ** 2) / np.sum(dense ** 2), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# blocks: scale, keep, and the per-block report
# ---------------------------------------------------------------------------------------------

def test_scale_blocks_scale_those_blocks_only_and_copy_factor_bytes(source, tmp_path):
    path, truth = source
    out = tmp_path / "out.safetensors"
    pruned(path, out, scale_blocks=["down_blocks.1.attentions.0=0.5,conv_in=1.25,up_blocks.1.attentions.0=0"])
    weight = {Q4: 0.5, P4: 0.5, CONV3: 1.25, V3: 0.0}
    src, got = by_module(raw_tensors(path)), by_module(raw_tensors(out))
    dense = read_kohya(out)
    assert V3 not in got and set(got) == set(truth) - {V3}
    for name in got:
        w = weight.get(name, 1.0)
        assert got[name]["down"] == src[name]["down"] and got[name]["up"] == src[name]["up"], name
        if w == 1.0:
            assert got[name] == src[name], name
        else:
            assert np.isclose(alpha_value(got[name]["alpha"]), w * truth[name].scale * truth[name].rank)
        assert_close(dense[name], w * truth[name].dense(), what=f"scaled {name}")


def test_scale_blocks_lbw_list(source, tmp_path):
    path, truth = source
    out = tmp_path / "out.safetensors"
    # BASE, IN04, IN05, IN07, IN08, MID, OUT00..OUT05; conv_in (IN00) has no slot
    pruned(path, out, scale_blocks=["0.3,0.5,0.25,1,1,1,1,1,1,2,1,1"])
    weight = {TE: 0.3, CONV3: 1.0, CONV1: 0.5, Q4: 0.5, P4: 0.5, K5: 0.25, V3: 2.0}
    src, got = by_module(raw_tensors(path)), by_module(raw_tensors(out))
    dense = read_kohya(out)
    for name in truth:
        assert got[name]["down"] == src[name]["down"] and got[name]["up"] == src[name]["up"], name
        assert_close(dense[name], weight[name] * truth[name].dense(), what=f"LBW {name}")


def test_keep_blocks_keeps_only_those(source, tmp_path):
    path, truth = source
    out = tmp_path / "out.safetensors"
    pruned(path, out, keep_blocks=["down_blocks.1.attentions.0", "text_encoder.layers.0"])
    src, got = by_module(raw_tensors(path)), by_module(raw_tensors(out))
    assert set(got) == {Q4, P4, TE}
    for name in got:
        assert got[name] == src[name], name


def test_keep_blocks_with_rank(source, tmp_path):
    path, truth = source
    out = tmp_path / "out.safetensors"
    pruned(path, out, keep_blocks=["down_blocks.1.attentions.0"], rank=2)
    got = read_kohya(out)
    assert set(got) == {Q4, P4}
    for name in got:
        assert_close(got[name], truncated(truth[name], 2), ref=np.linalg.norm(truth[name].dense()), what=name)


def test_report_per_block_matches_numpy(source, tmp_path):
    """Through the CLI: --report writes per module and per block what numpy says."""
    from _cli_helpers import run_cli

    path, truth = source
    out, report = tmp_path / "out.safetensors", tmp_path / "kept.json"
    r = run_cli("prune", path, "--rank", "3", "--conv-rank", "2", "--report", report, "-o", out)
    assert r.rc == 0, r.stderr
    doc = json.loads(report.read_text())
    per_block: dict[str, dict] = {}
    for name, b in truth.items():
        k = 2 if ARCH.get(name).kind == "conv" else 3
        s = singular_values(b)
        row = per_block.setdefault(BLOCK[name], {"modules": 0, "rank_in": 0, "rank_out": 0, "total": 0.0, "kept": 0.0})
        row["modules"] += 1
        row["rank_in"] += b.rank
        row["rank_out"] += k
        row["total"] += float(np.sum(s ** 2))
        row["kept"] += float(np.sum(s[:k] ** 2))
    blocks = {row["block"]: row for row in doc["blocks"]}
    assert set(blocks) == set(per_block)
    for block, want in per_block.items():
        got = blocks[block]
        assert (got["modules"], got["rank_in"], got["rank_out"]) == (want["modules"], want["rank_in"], want["rank_out"])
        share = want["kept"] / want["total"]
        assert np.isclose(got["retained_energy"], share, rtol=1e-9), block
        assert np.isclose(got["relative_error"], math.sqrt(1 - share), rtol=1e-6), block
    total = sum(w["total"] for w in per_block.values())
    kept = sum(w["kept"] for w in per_block.values())
    assert np.isclose(doc["overall"]["retained_energy"], kept / total, rtol=1e-9)
    assert len(doc["modules"]) == len(truth)


@pytest.mark.parametrize("rule,param", [("sv_fro", "0.9"), ("sv_ratio", "4")])
def test_dynamic_through_the_cli(source, tmp_path, rule, param):
    from _cli_helpers import run_cli

    path, truth = source
    out = tmp_path / "out.safetensors"
    r = run_cli("prune", path, "--dynamic", rule, "--param", param, "-o", out)
    assert r.rc == 0, r.stderr
    entries = {e["module"]: e for e in manifest_of(out)["modules"]}
    for name, b in truth.items():
        assert entries[name]["rank"] == min(_rule_rank(singular_values(b), rule, float(param)), b.rank), name


# ---------------------------------------------------------------------------------------------
# the scale survives every layout: loaded by diffusers and peft (tiny SDXL-topology models)
# ---------------------------------------------------------------------------------------------

def _tiny_source(shapes, all_names, d, *, te):
    import torch

    import _tiny_models as T

    names = [n for n in T.one_block_each(all_names)
             if (n.startswith("unet.down_blocks.1.") or n == "unet.conv_in" or ".encoder.layers.0." in n)
             and (te or n.startswith("unet."))]

    # Attention and text-encoder modules share one alpha: diffusers' kohya reader applies a
    # single alpha to all of them (a diffusers limitation, see test_interop_convert.py). The
    # others get alphas that make their scale differ from 1 and from each other.
    def alpha(name):
        uniform = T.is_attn(name) or name.startswith("text_encoder")
        return (2.0 if uniform else (6.0 if T.spec(name).kind == "conv" else 1.0), torch.float32)

    branches = T.random_branches(shapes, names, seed=71, rank=4, alpha=alpha, dtype=torch.float32)
    path = T.save(T.kohya_state_dict(branches), d / "src.safetensors")
    return path, branches


@pytest.mark.parametrize("layout", ["kohya", "diffusers", "peft"])
def test_pruned_scale_is_kept_in_every_layout(shapes, all_names, tmp_path, layout):
    import _tiny_models as T

    path, branches = _tiny_source(shapes, all_names, tmp_path, te=layout != "peft")
    if layout != "kohya":  # the input in that layout (convert keeps the scale; tested elsewhere)
        src = tmp_path / ("src_peft" if layout == "peft" else "src.diffusers.safetensors")
        with adapterctl.open(path) as a:
            a.convert(layout).save(src)
        path = src
    out = tmp_path / ("out_peft" if layout == "peft" else "out.safetensors")
    pruned(path, out, rank=2)
    want = {}
    for n, b in branches.items():
        u, sv, vt = np.linalg.svd(b.delta(), full_matrices=False)  # tiny: dense is cheap
        want[n] = (u[:, :2] * sv[:2]) @ vt[:2]
    with adapterctl.open(out) as got:
        assert got.layout == layout and {e.rank for e in got.modules} == {2}
        ours = T.adapterctl_deltas(got)
    assert set(ours) == set(want)
    for name in want:
        assert_close(ours[name], want[name], ref=np.linalg.norm(branches[name].delta()), what=f"{layout} {name}")
    if layout == "peft":
        from peft import PeftModel

        model = PeftModel.from_pretrained(T.build_unet(seed=72), out, adapter_name="loaded")
        theirs = T.peft_deltas({"unet": model}, "loaded")
    else:
        theirs = T.diffusers_load(out, T.build_models(seed=72))
    loader = "peft" if layout == "peft" else "diffusers"
    T.assert_same_deltas(theirs, ours, what=f"prune --rank 2 ({layout}), loaded by {loader}")
