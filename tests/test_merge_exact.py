"""MERGE is exact where it says so: every method against dense numpy built from the input factors.

The numeric tests use SDXL's real module shapes (a few modules, small ranks, F32 factors so that
dtype rounding stays near 1e-7) and read the outputs back with a reader written here (kohya keys,
alpha / rank * up @ down), not with adapterctl's. The loader tests use the tiny SDXL-topology
models of tests/_tiny_models.py and read what real diffusers / peft attach.
"""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import adapterctl
from _lora_files import ARCH, CONV1, CONV3, K5, KOHYA_NAMES, Q4, TE, V3, Branch, kohya_branch, read_kohya
from adapterctl.errors import UsageError
from adapterctl.lowrank import Factored
from adapterctl.lowrank.ziplora import zip_merge

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore:The following alpha_pattern keys:RuntimeWarning")]

# name -> (rank, alpha); alpha None = no alpha tensor (kohya: alpha = rank)
SPEC_A = {TE: (4, 2.0), CONV3: (4, 1.0), CONV1: (3, 6.0), Q4: (4, 2.0), K5: (5, 2.5)}
SPEC_B = {CONV3: (2, None), CONV1: (5, 2.5), Q4: (6, 3.0), V3: (3, 1.5)}
SPEC_C = {CONV3: (3, 1.5), Q4: (2, None), K5: (1, 4.0)}


def singular_values(b: Branch) -> np.ndarray:
    """Singular values of scale * up @ down, the textbook way for a low-rank product: Householder
    QR of both factors, then the SVD of the small core (adapterctl goes through Gram matrices
    instead). Dense SVDs of 640x640 matrices cost seconds each on a small machine."""
    ru = np.linalg.qr(b.up)[1]
    rv = np.linalg.qr(b.down.T)[1]
    return np.linalg.svd(b.scale * ru @ rv.T, compute_uv=False)


def kohya_file(path, spec, *, seed, columns=None, dtype=np.float32):
    """Random kohya (SGM names) LoRA with the real SDXL shapes. ``columns``: name -> input
    features the branch may use (down is zero elsewhere). Returns name -> Branch as stored."""
    rng = np.random.default_rng(seed)
    tensors, truth = {}, {}
    for name, (rank, alpha) in spec.items():
        s = ARCH.get(name)
        kernel = tuple(s.kernel) if s.kind == "conv" else ()
        down = rng.standard_normal((rank, s.in_features) + kernel) * 0.3
        if columns is not None and name in columns:
            mask = np.zeros(s.in_features)
            mask[columns[name]] = 1.0
            down = down * mask.reshape((1, -1) + (1,) * len(kernel))
        up = rng.standard_normal((s.out_features, rank) + ((1, 1) if kernel else ())) * 0.3
        down, up = down.astype(dtype), up.astype(dtype)
        truth[name] = kohya_branch(tensors, name, up, down, alpha)
    save_file(tensors, str(path))
    return truth


def raw_tensors(path) -> dict[str, tuple[str, tuple, bytes]]:
    """tensor name -> (dtype, shape, bytes), straight from the container."""
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    body = data[8 + n:]
    return {k: (v["dtype"], tuple(v["shape"]), body[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items()}


def data_sha256(path) -> str:
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + n:]).hexdigest()


def manifest_of(path) -> dict:
    with safe_open(str(path), "np") as f:
        return json.loads(f.metadata()["adapterctl.manifest"])


def assert_close(got, want, *, ref=None, rtol=2e-6, what=""):
    """||got - want||_F within rtol of ``ref`` (the scale the rounding is relative to)."""
    ref = np.linalg.norm(want) if ref is None else ref
    err = np.linalg.norm(got - want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert err <= rtol * ref, f"{what}: ||got - want|| = {err:.3g}, allowed {rtol * ref:.3g}"


def merged(inputs, method, out, **kw):
    opened = [adapterctl.open(p) for p in inputs]
    try:
        m = adapterctl.merge(opened, method, **kw)
        m.save(out, force=True)
        return m
    finally:
        for a in opened:
            a.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("merge_inputs")
    truth = {}
    for key, spec, seed in (("a", SPEC_A, 1), ("b", SPEC_B, 2), ("c", SPEC_C, 3)):
        truth[key] = kohya_file(d / f"{key}.safetensors", spec, seed=seed)
    return d, truth


def _expected_sum(truths, weights, block=lambda name: 1.0):
    want, refs = {}, {}
    for t, w in zip(truths, weights):
        for name, b in t.items():
            want[name] = want.get(name, 0) + block(name) * w * b.dense()
            refs[name] = refs.get(name, 0) + abs(block(name) * w) * np.linalg.norm(b.dense())
    return want, refs


# ---------------------------------------------------------------------------------------------
# cat / linear: the exact weighted sum
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,inputs,weights,expect", [
    ("cat", "ab", None, [1.0, 1.0]),
    ("cat", "ab", [0.7, -1.3], [0.7, -1.3]),
    ("linear", "ab", None, [0.5, 0.5]),
    ("linear", "abc", None, [1 / 3] * 3),
    ("linear", "abc", [0.25, 2.0, -0.5], [0.25, 2.0, -0.5]),
])
def test_cat_and_linear_are_the_weighted_sum(files, tmp_path, method, inputs, weights, expect):
    d, truth = files
    out = tmp_path / "out.safetensors"
    merged([d / f"{k}.safetensors" for k in inputs], method, out, weights=weights)
    want, refs = _expected_sum([truth[k] for k in inputs], expect)
    got = read_kohya(out)
    assert set(got) == set(want)
    for name in want:
        assert_close(got[name], want[name], ref=refs[name], what=f"{method} {name}")
    # merged modules are one branch of rank r1 + r2 + ... at scale 1; F32 in, F32 out
    entries = {e["module"]: e for e in manifest_of(out)["modules"]}
    for name in want:
        ranks = [truth[k][name].rank for k in inputs if name in truth[k]]
        if len(ranks) > 1:
            assert entries[name]["rank"] == sum(ranks) and entries[name]["scale"] == 1.0
            assert entries[name]["dtype"] == "F32"


def test_cat_merged_rank_is_the_sum_of_ranks_in_the_file(files, tmp_path):
    d, truth = files
    out = tmp_path / "out.safetensors"
    merged([d / "a.safetensors", d / "b.safetensors"], "cat", out)
    raw = raw_tensors(out)
    base = ARCH.kohya_name(CONV3)
    assert raw[f"{base}.lora_down.weight"][1] == (4 + 2, 4, 3, 3)
    assert raw[f"{base}.lora_up.weight"][1] == (320, 4 + 2, 1, 1)
    assert raw[f"{ARCH.kohya_name(Q4)}.lora_down.weight"][1] == (10, 640)


CONV_OUT = "unet.conv_out"  # 3x3 conv 320 -> 4: any update of it has rank <= 4


@pytest.mark.parametrize("method", ["cat", "linear", "np"])
def test_ranks_summing_past_the_module_limit_stay_exact(tmp_path, method):
    """Two conv_out branches of rank 4 and 3: their sum has rank <= 4 = min(out, in * k), so the
    exact result fits in rank 4; the output must hold it (not fail planning a rank-7 branch)."""
    a = kohya_file(tmp_path / "a.safetensors", {CONV_OUT: (4, 2.0), Q4: (2, None)}, seed=81)
    b = kohya_file(tmp_path / "b.safetensors", {CONV_OUT: (3, None), Q4: (3, 1.5)}, seed=82)
    out = tmp_path / "out.safetensors"
    kw = {"content": 0, "style": 1} if method == "np" else {}
    merged([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], method, out, **kw)
    w = 0.5 if method == "linear" else 1.0
    got = read_kohya(out)
    for name in (CONV_OUT, Q4):
        dc, ds = w * a[name].dense(), w * b[name].dense()
        if method == "np":
            v = _row_basis(b[name].down)
            want = ds + dc @ (np.eye(dc.shape[1]) - 0.5 / 1.5 * v @ v.T)
        else:
            want = dc + ds
        assert_close(got[name], want, ref=np.linalg.norm(dc) + np.linalg.norm(ds), what=f"{method} {name}")
    entries = {e["module"]: e for e in manifest_of(out)["modules"]}
    assert entries[CONV_OUT]["rank"] <= 4 and entries[Q4]["rank"] == 5


# ---------------------------------------------------------------------------------------------
# svd: the sum at full rank, the optimal rank-k approximation of it below
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rank", [None, 2, 5, 64])
def test_svd_is_the_optimal_truncation_of_the_exact_sum(files, tmp_path, rank):
    d, truth = files
    out = tmp_path / "out.safetensors"
    weights = [1.0, 0.6]
    m = merged([d / "a.safetensors", d / "b.safetensors"], "svd", out, weights=weights, rank=rank)
    want, refs = _expected_sum([truth["a"], truth["b"]], weights)
    got = read_kohya(out)
    entries = {e["module"]: e for e in manifest_of(out)["modules"]}
    report = {row["module"]: row for row in m.report.to_dict()["modules"]}
    shared = [n for n in want if n in truth["a"] and n in truth["b"]]
    assert sorted(shared) == sorted([CONV3, CONV1, Q4]) and sorted(report) == sorted(shared)
    for name in shared:
        r_a, r_b = truth["a"][name].rank, truth["b"][name].rank
        k = min(rank or max(r_a, r_b), r_a + r_b)
        assert entries[name]["rank"] == k
        total = Branch(np.hstack([w * t[name].up * t[name].scale for t, w in zip((truth["a"], truth["b"]), weights)]),
                       np.vstack([truth["a"][name].down, truth["b"][name].down]), 1.0)
        s = singular_values(total)
        if name == CONV3:  # 320 x 36: cheap enough to check the reference against a dense SVD
            assert np.allclose(s, np.linalg.svd(want[name], compute_uv=False)[:len(s)], rtol=1e-9, atol=1e-12 * s[0])
        optimal = float(np.sqrt(np.sum(s[k:] ** 2)))
        err = float(np.linalg.norm(got[name] - want[name]))
        tol = 2e-6 * refs[name]
        assert abs(err - optimal) <= tol, f"{name} rank {k}: error {err} vs optimal {optimal}"
        if k == r_a + r_b:
            assert_close(got[name], want[name], ref=refs[name], what=f"svd full rank {name}")
        else:  # the test can tell: a truncation that is not optimal is far off
            assert optimal > 100 * tol
        assert np.isclose(report[name]["retained_energy"], np.sum(s[:k] ** 2) / np.sum(s ** 2), rtol=1e-9)
    for name in set(want) - set(shared):  # one input only: copied as it is, never truncated
        assert_close(got[name], want[name], ref=refs[name], what=f"svd copy {name}")


@pytest.mark.parametrize("rule,param,cap", [("sv_fro", 0.9, None), ("sv_cumulative", 0.7, None),
                                             ("sv_ratio", 3.0, None), ("sv_fro", 0.999, 3)])
def test_svd_dynamic_rank_follows_the_rule_on_the_sum(files, tmp_path, rule, param, cap):
    d, truth = files
    out = tmp_path / "out.safetensors"
    weights = [1.0, 0.6]
    merged([d / "a.safetensors", d / "b.safetensors"], "svd", out, weights=weights, dynamic=rule, param=param,
           rank=cap)
    want, refs = _expected_sum([truth["a"], truth["b"]], weights)
    got = read_kohya(out)
    entries = {e["module"]: e for e in manifest_of(out)["modules"]}
    for name in (CONV3, CONV1, Q4):
        total = Branch(np.hstack([w * t[name].up * t[name].scale for t, w in zip((truth["a"], truth["b"]), weights)]),
                       np.vstack([truth["a"][name].down, truth["b"][name].down]), 1.0)
        s = singular_values(total)
        if rule == "sv_ratio":  # written out here, not taken from the library
            k = int(np.sum(s >= s[0] / param))
        else:
            share = np.sqrt(np.cumsum(s ** 2) / np.sum(s ** 2)) if rule == "sv_fro" else np.cumsum(s) / np.sum(s)
            k = next(i + 1 for i, v in enumerate(share) if v >= param - 1e-12)
        k = min(k, cap) if cap else k
        assert entries[name]["rank"] == k, (name, rule)
        err = float(np.linalg.norm(got[name] - want[name]))
        assert abs(err - float(np.sqrt(np.sum(s[k:] ** 2)))) <= 2e-6 * refs[name]


# ---------------------------------------------------------------------------------------------
# zip and np: closed forms
# ---------------------------------------------------------------------------------------------

PAIR = [Q4, CONV1, CONV3]


def _overlapping_columns(seed, share=0.3, shared=1 / 3):
    """Per module: content and style each use ``share`` of the input features, ``shared`` of them common."""
    rng = np.random.default_rng(seed)
    content, style = {}, {}
    for name in PAIR + [TE, K5, V3]:
        n_in = ARCH.get(name).in_features
        k = max(2, int(round(share * n_in)))
        common = max(1, int(round(shared * k)))
        perm = rng.permutation(n_in)
        content[name] = perm[:k]
        style[name] = np.concatenate([perm[:common], perm[k:2 * k - common]])
    return content, style


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair")
    cols_c, cols_s = _overlapping_columns(5)
    c = kohya_file(d / "content.safetensors", {Q4: (6, 3.0), CONV1: (4, 2.0), CONV3: (3, None)}, seed=11,
                   columns=cols_c)
    s = kohya_file(d / "style.safetensors", {Q4: (5, 2.0), CONV1: (3, 6.0), CONV3: (2, 1.0)}, seed=12,
                   columns=cols_s)
    return d, c, s


@pytest.mark.parametrize("axis", ["input", "output"])
def test_zip_output_is_the_folded_mergers(pair_files, tmp_path, axis):
    d, c, s = pair_files
    out = tmp_path / "zip.safetensors"
    weights = [1.0, 0.8]
    merged([d / "content.safetensors", d / "style.safetensors"], "zip", out, content=0, style=1, weights=weights,
           axis=axis, lam=0.01, steps=8)
    got = read_kohya(out)
    man = manifest_of(out)
    assert man["method"] == "ziplora"
    entries = {e["module"]: e for e in man["modules"]}
    for name in PAIR:
        bc, bs = c[name], s[name]
        res = zip_merge(Factored(bc.up, bc.down, bc.scale * weights[0]),
                        Factored(bs.up, bs.down, bs.scale * weights[1]), axis=axis, lam=0.01, steps=8)
        m_c, m_s = res.m_content, res.m_style
        assert max(np.abs(m_c - 1).max(), np.abs(m_s - 1).max()) > 0.05, "the mergers never moved"
        uc, us = bc.up * (bc.scale * weights[0]), bs.up * (bs.scale * weights[1])
        if axis == "input":  # [B_c B_s] [A_c diag(m_c); A_s diag(m_s)]
            want = np.hstack([uc, us]) @ np.vstack([bc.down * m_c[None, :], bs.down * m_s[None, :]])
        else:  # [diag(m_c) B_c, diag(m_s) B_s] [A_c; A_s]
            want = np.hstack([uc * m_c[:, None], us * m_s[:, None]]) @ np.vstack([bc.down, bs.down])
        direct = weights[0] * bc.dense() + weights[1] * bs.dense()
        ref = np.linalg.norm(weights[0] * bc.dense()) + np.linalg.norm(weights[1] * bs.dense())
        assert np.linalg.norm(want - direct) > 1e-2 * ref  # zip is not the plain sum here
        assert_close(got[name], want, ref=ref, rtol=1e-5, what=f"zip/{axis} {name}")
        assert entries[name]["rank"] == bc.rank + bs.rank


def _row_basis(down: np.ndarray) -> np.ndarray:
    """Orthonormal basis [in, k] of the row space of ``down``."""
    u, s, vt = np.linalg.svd(down, full_matrices=False)
    return vt[s > s[0] * 1e-10].T


@pytest.mark.parametrize("project,mu", [("content", 0.5), ("content", 3.0), ("style", 0.5), ("style", 1.0)])
def test_np_is_the_soft_null_space_projection(pair_files, tmp_path, project, mu):
    d, c, s = pair_files
    out = tmp_path / "np.safetensors"
    merged([d / "content.safetensors", d / "style.safetensors"], "np", out, content=0, style=1, mu=mu,
           project=project)
    got = read_kohya(out)
    assert manifest_of(out)["method"] == "merged"
    shrink = mu / (1 + mu)
    for name in PAIR:
        dc, ds = c[name].dense(), s[name].dense()
        if project == "content":
            v = _row_basis(s[name].down)
            want = ds + dc @ (np.eye(dc.shape[1]) - shrink * v @ v.T)
        else:
            v = _row_basis(c[name].down)
            want = dc + ds @ (np.eye(ds.shape[1]) - shrink * v @ v.T)
        ref = np.linalg.norm(dc) + np.linalg.norm(ds)
        assert np.linalg.norm(want - (dc + ds)) > 1e-3 * ref  # the projection does something here
        assert_close(got[name], want, ref=ref, what=f"np {project} mu={mu} {name}")


# ---------------------------------------------------------------------------------------------
# experts: B sum_i w_i A_i
# ---------------------------------------------------------------------------------------------

SHARED_UP = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"  # 640 -> 640
PER_EXPERT = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"  # 2048 -> 640
PLAIN = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v"


@pytest.fixture(scope="module")
def expert_file(tmp_path_factory):
    """StyleInject-shaped experts (3 experts, rank 2): a shared up and a per-expert up, plus a
    plain branch, in the diffusers key family (as the spec vector valid_expert_styleinject)."""
    d = tmp_path_factory.mktemp("experts")
    rng = np.random.default_rng(21)
    f32 = np.float32
    n, r = 3, 2
    t = {
        f"unet.{SHARED_UP[5:]}.lora_experts_A.weight": rng.standard_normal((n, r, 640)).astype(f32),
        f"unet.{SHARED_UP[5:]}.lora_experts_B.weight": rng.standard_normal((640, r)).astype(f32),
        f"unet.{SHARED_UP[5:]}.lora_router.weight": rng.standard_normal((n, 640)).astype(f32) * 0.05,
        f"unet.{SHARED_UP[5:]}.lora_router.bias": rng.standard_normal((n,)).astype(f32),
        f"unet.{PER_EXPERT[5:]}.lora_experts_A.weight": rng.standard_normal((n, r, 2048)).astype(f32),
        f"unet.{PER_EXPERT[5:]}.lora_experts_B.weight": rng.standard_normal((n, 640, r)).astype(f32),
        f"unet.{PER_EXPERT[5:]}.lora_router.weight": rng.standard_normal((n, 2048)).astype(f32) * 0.05,
        f"unet.{PER_EXPERT[5:]}.lora_router.bias": rng.standard_normal((n,)).astype(f32),
        f"unet.{PLAIN[5:]}.lora_A.weight": rng.standard_normal((4, 640)).astype(f32),
        f"unet.{PLAIN[5:]}.lora_B.weight": rng.standard_normal((640, 4)).astype(f32),
    }
    path = d / "experts.safetensors"
    save_file(t, str(path))
    x = {SHARED_UP: rng.standard_normal(640).astype(f32), PER_EXPERT: rng.standard_normal(2048).astype(f32)}
    save_file(x, str(d / "calibration.safetensors"))
    return path, {k: v.astype(np.float64) for k, v in t.items()}, {k: v.astype(np.float64) for k, v in x.items()}


def _expert_truth(t, w):
    a = t[f"unet.{SHARED_UP[5:]}.lora_experts_A.weight"]
    b = t[f"unet.{SHARED_UP[5:]}.lora_experts_B.weight"]
    shared = b @ np.tensordot(w[SHARED_UP], a, axes=1)
    a2 = t[f"unet.{PER_EXPERT[5:]}.lora_experts_A.weight"]
    b2 = t[f"unet.{PER_EXPERT[5:]}.lora_experts_B.weight"]
    per = sum(w[PER_EXPERT][i] * b2[i] @ a2[i] for i in range(a2.shape[0]))
    plain = t[f"unet.{PLAIN[5:]}.lora_B.weight"] @ t[f"unet.{PLAIN[5:]}.lora_A.weight"]
    return {SHARED_UP: shared, PER_EXPERT: per, PLAIN: plain}


def test_experts_collapse_with_mix(expert_file, tmp_path):
    from _cli_helpers import run_cli

    path, t, _ = expert_file
    out = tmp_path / "collapsed.safetensors"
    r = run_cli("merge", path, "-m", "experts", "--mix", "0.5,0.3,0.2", "--to", "kohya", "-o", out)
    assert r.rc == 0, r.stderr
    mix = np.array([0.5, 0.3, 0.2])
    want = _expert_truth(t, {SHARED_UP: mix, PER_EXPERT: mix})
    got = read_kohya(out)
    assert set(got) == set(want)
    for name in want:
        assert_close(got[name], want[name], rtol=2e-6, what=f"experts --mix {name}")
    entries = {e["module"]: e for e in manifest_of(out)["modules"]}
    assert entries[SHARED_UP]["rank"] == 2 and entries[PER_EXPERT]["rank"] == 6
    assert all(e.get("role") != "expert" for e in entries.values())


def test_experts_collapse_with_router_calibration(expert_file, tmp_path):
    path, t, x = expert_file
    out = tmp_path / "collapsed.safetensors"
    merged([path], "experts", out, to="kohya", calibration=str(path.parent / "calibration.safetensors"))
    w = {}
    for name in (SHARED_UP, PER_EXPERT):
        logits = t[f"unet.{name[5:]}.lora_router.weight"] @ x[name] + t[f"unet.{name[5:]}.lora_router.bias"]
        e = np.exp(logits - logits.max())
        w[name] = e / e.sum()
        assert w[name].max() - w[name].min() > 0.05  # the router does not give equal weights
    want = _expert_truth(t, w)
    got = read_kohya(out)
    assert set(got) == set(want)
    for name in want:
        assert_close(got[name], want[name], rtol=2e-6, what=f"experts calibration {name}")


# ---------------------------------------------------------------------------------------------
# copies, weights, block weights
# ---------------------------------------------------------------------------------------------

def _branch_bytes(path) -> dict[str, dict[str, bytes]]:
    """canonical name -> {'down': bytes, 'up': bytes, 'alpha': (dtype, bytes)} of a kohya file."""
    out: dict[str, dict] = {}
    for key, (dtype, _, data) in raw_tensors(path).items():
        for suffix, part in ((".lora_down.weight", "down"), (".lora_up.weight", "up"), (".alpha", "alpha")):
            if key.endswith(suffix):
                out.setdefault(KOHYA_NAMES[key.removesuffix(suffix)], {})[part] = (dtype, data)
    return out


def test_modules_of_one_input_are_copied_byte_for_byte(files, tmp_path):
    d, truth = files
    out = tmp_path / "out.safetensors"
    merged([d / "a.safetensors", d / "b.safetensors"], "cat", out)
    a, b, o = _branch_bytes(d / "a.safetensors"), _branch_bytes(d / "b.safetensors"), _branch_bytes(out)
    for name, src in ((TE, a), (K5, a), (V3, b)):
        assert o[name] == src[name], name  # down, up and alpha: same dtype, same bytes


def test_a_weight_on_a_copied_module_goes_into_alpha_only(files, tmp_path):
    d, truth = files
    out = tmp_path / "out.safetensors"
    merged([d / "a.safetensors", d / "b.safetensors"], "cat", out, weights=[1.0, 0.5])
    b, o = _branch_bytes(d / "b.safetensors"), _branch_bytes(out)
    assert o[V3]["down"] == b[V3]["down"] and o[V3]["up"] == b[V3]["up"]
    dtype, raw = o[V3]["alpha"]
    assert np.frombuffer(raw, dtype={"F16": np.float16, "F32": np.float32, "F64": np.float64}[dtype])[0] == 0.75
    assert_close(read_kohya(out)[V3], 0.5 * truth["b"][V3].dense(), what="weighted copy")


def test_zero_weights_drop(files, tmp_path):
    d, truth = files
    out = tmp_path / "out.safetensors"
    merged([d / "a.safetensors", d / "b.safetensors"], "cat", out, weights=[1.0, 0.0])
    got = read_kohya(out)
    assert V3 not in got  # only b has it, and b weighs 0
    assert set(got) == set(truth["a"])
    for name, branch in truth["a"].items():
        assert_close(got[name], branch.dense(), what=f"weight 0 for b: {name}")


def test_zero_weights_everywhere_is_refused(files, tmp_path):
    d, _ = files
    out = tmp_path / "out.safetensors"
    with pytest.raises(UsageError, match="keeps no branches"):
        merged([d / "a.safetensors", d / "b.safetensors"], "cat", out, weights=[0.0, 0.0])
    assert not out.exists()


def test_block_weight_zero_drops_shared_modules_too(files, tmp_path):
    """A block weighted 0 is gone from the output, whether one input or both have its modules."""
    d, truth = files
    out = tmp_path / "out.safetensors"
    merged([d / "a.safetensors", d / "b.safetensors"], "cat", out,
           block_weights=["down_blocks.1.attentions.0=0,down_blocks.1.attentions.1=0"])
    got = read_kohya(out)
    assert K5 not in got  # a only
    assert Q4 not in got, "a shared module in a block weighted 0 is kept (as an all-zero branch)"
    assert set(got) == {TE, CONV3, CONV1, V3}


# The 12-value SDXL LBW list: BASE, IN04, IN05, IN07, IN08, MID, OUT00..OUT05. Written out here
# from the SGM block of each module (text encoders: BASE; conv_in is IN00: no slot, weight 1).
LBW12 = [0.3, 0.5, 0.25, 1, 1, 1, 1, 1, 1, 2.0, 1, 1]
LBW12_OF = {TE: 0.3, CONV3: 1.0, CONV1: 0.5, Q4: 0.5, K5: 0.25, V3: 2.0}


def test_lbw_block_weights_scale_the_right_modules(files, tmp_path):
    d, truth = files
    out = tmp_path / "out.safetensors"
    weights = [1.0, 0.7]
    merged([d / "a.safetensors", d / "b.safetensors"], "cat", out, weights=weights,
           block_weights=[",".join(str(v) for v in LBW12)])
    want, refs = _expected_sum([truth["a"], truth["b"]], weights, block=LBW12_OF.__getitem__)
    got = read_kohya(out)
    assert set(got) == set(want)
    for name in want:
        assert_close(got[name], want[name], ref=refs[name], what=f"LBW {name}")


def test_named_block_weights_per_input(files, tmp_path):
    """Given twice: the first spec weighs input a, the second input b."""
    d, truth = files
    out = tmp_path / "out.safetensors"
    spec_a = {Q4: 0.4, CONV1: 0.4, TE: 1.5}  # down_blocks.1.resnets.0 holds conv_shortcut
    spec_b = {CONV3: -1.0, V3: 0.2}
    merged([d / "a.safetensors", d / "b.safetensors"], "cat", out, block_weights=[
        "down_blocks.1.attentions.0=0.4,down_blocks.1.resnets.0=0.4,text_encoder.layers.0=1.5",
        "conv_in=-1,up_blocks.1.attentions.0=0.2"])
    got = read_kohya(out)
    for name in set(truth["a"]) | set(truth["b"]):
        want = sum(spec.get(name, 1.0) * t[name].dense()
                   for spec, t in ((spec_a, truth["a"]), (spec_b, truth["b"])) if name in t)
        assert_close(got[name], want, ref=sum(np.linalg.norm(t[name].dense()) * 2 for t in truth.values()
                                              if name in t), what=f"named block weights {name}")


# ---------------------------------------------------------------------------------------------
# manifest and provenance
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["cat", "zip"])
def test_manifest_method_and_provenance(pair_files, tmp_path, method):
    d, _, _ = pair_files
    inputs = [d / "content.safetensors", d / "style.safetensors"]
    out = tmp_path / "out.safetensors"
    kw = {"content": 0, "style": 1} if method == "zip" else {}
    merged(inputs, method, out, **kw)
    man = manifest_of(out)
    assert man["method"] == ("ziplora" if method == "zip" else "merged")
    sources = man["provenance"]["sources"]
    assert [s["sha256"] for s in sources] == [data_sha256(p) for p in inputs]
    assert [s["name"] for s in sources] == [p.name for p in inputs]
    ops = man["provenance"]["operations"]
    assert len(ops) == 1 and ops[0]["op"] == "merge" and ops[0]["inputs"] == [0, 1]
    assert ops[0]["args"]["method"] == method


# ---------------------------------------------------------------------------------------------
# through the real loaders (tiny SDXL-topology models)
# ---------------------------------------------------------------------------------------------

def _tiny_pair(shapes, names, tmp_path, *, te=True, copies_anywhere=True):
    """Two random F32 kohya LoRAs on the tiny models; most modules shared, some in one input only.

    ``copies_anywhere=False`` keeps the single-input modules (whose alphas differ from the merged
    ones) off attention and the text encoders: diffusers' kohya reader applies one alpha to all of
    those (the most common one), a diffusers limitation that tests/test_interop_convert.py also
    works around."""
    import torch

    import _tiny_models as T

    picked = [n for n in names if te or n.startswith("unet.")]
    may_copy = [n for n in picked if copies_anywhere or not (T.is_attn(n) or n.startswith("text_encoder"))]
    only_a, only_b = may_copy[::5], may_copy[2::5]
    a_names = [n for n in picked if n not in only_b]
    b_names = [n for n in picked if n not in only_a]
    rank_a = lambda n: 2 if T.spec(n).kind == "conv" else 4  # noqa: E731
    rank_b = lambda n: 3 if T.spec(n).kind == "conv" else 2  # noqa: E731
    a = T.random_branches(shapes, a_names, seed=61, rank=rank_a, dtype=torch.float32,
                          alpha=lambda n: (2.0, torch.float32))
    b = T.random_branches(shapes, b_names, seed=62, rank=rank_b, dtype=torch.float32)
    pa = T.save(T.kohya_state_dict(a), tmp_path / "a.safetensors")
    pb = T.save(T.kohya_state_dict(b), tmp_path / "b.safetensors")
    assert only_a and only_b
    return pa, pb, a, b


def _tiny_expected(a, b, weights):
    want, refs = {}, {}
    for branches, w in ((a, weights[0]), (b, weights[1])):
        for name, br in branches.items():
            want[name] = want.get(name, 0) + w * br.delta()
            refs[name] = refs.get(name, 0) + abs(w) * np.linalg.norm(br.delta())
    return want, refs


def _assert_tiny(got, want, refs, what):
    assert set(got) == set(want), f"{what}: module sets differ: {sorted(set(got) ^ set(want))[:5]}"
    for name in want:
        assert_close(got[name], want[name], ref=refs[name], what=f"{what}: {name}")


def _tiny_names(all_names):
    import _tiny_models as T

    # every kind of module (convs 3x3 and 1x1, attention, ff, resnet time projections, TE
    # attention and mlp) in a few blocks
    keep = [n for n in all_names if n.startswith("unet.down_blocks.1.") or n.startswith("unet.up_blocks.1.resnets.0")
            or n == "unet.conv_in" or ".encoder.layers.0." in n]
    return T.one_block_each(keep)


@pytest.mark.parametrize("to", ["kohya", "diffusers"])
def test_merged_output_loads_in_diffusers(shapes, all_names, tmp_path, to):
    import _tiny_models as T

    pa, pb, a, b = _tiny_pair(shapes, _tiny_names(all_names), tmp_path, copies_anywhere=to != "kohya")
    out = tmp_path / f"merged.{to}.safetensors"
    weights = [1.0, 0.5]
    merged([pa, pb], "cat", out, weights=weights, to=to)
    want, refs = _tiny_expected(a, b, weights)
    if to == "kohya":
        _assert_tiny(read_kohya(out), want, refs, "cat -> kohya, read here")
    with adapterctl.open(out) as got:
        assert got.layout == to
        ours = T.adapterctl_deltas(got)
    _assert_tiny(ours, want, refs, f"cat -> {to}, read by adapterctl")
    theirs = T.diffusers_load(out, T.build_models(seed=63))
    T.assert_same_deltas(theirs, ours, what=f"cat -> {to}, loaded by diffusers")


def test_merged_peft_dir_loads_in_peft(shapes, all_names, tmp_path):
    from peft import PeftModel

    import _tiny_models as T

    pa, pb, a, b = _tiny_pair(shapes, _tiny_names(all_names), tmp_path, te=False)
    out = tmp_path / "merged_peft"
    weights = [0.8, 1.0]
    merged([pa, pb], "cat", out, weights=weights, to="peft")
    assert (out / "adapter_config.json").exists()
    want, refs = _tiny_expected(a, b, weights)
    with adapterctl.open(out) as got:
        ours = T.adapterctl_deltas(got)
    _assert_tiny(ours, want, refs, "cat -> peft, read by adapterctl")
    model = PeftModel.from_pretrained(T.build_unet(seed=64), out, adapter_name="loaded")
    T.assert_same_deltas(T.peft_deltas({"unet": model}, "loaded"), ours, what="cat -> peft, loaded by peft")


# ---------------------------------------------------------------------------------------------
# data-free zip reduces interference, and its report is what it says
# ---------------------------------------------------------------------------------------------

ZIP_MODULES = [Q4, K5, V3, TE]


def test_data_free_zip_cuts_interference(tmp_path):
    from _cli_helpers import run_cli

    cols_c, cols_s = _overlapping_columns(31)
    c = kohya_file(tmp_path / "c.safetensors", {n: (12, 6.0) for n in ZIP_MODULES}, seed=32, columns=cols_c)
    s = kohya_file(tmp_path / "s.safetensors", {n: (10, None) for n in ZIP_MODULES}, seed=33, columns=cols_s)
    out, report = tmp_path / "zip.safetensors", tmp_path / "r.json"
    r = run_cli("merge", "--content", tmp_path / "c.safetensors", "--style", tmp_path / "s.safetensors",
                "-m", "zip", "--report", report, "-o", out)
    assert r.rc == 0, r.stderr
    doc = json.loads(report.read_text())
    rows = {row["module"]: row for row in doc["modules"]}
    assert sorted(rows) == sorted(ZIP_MODULES)
    mean_zip = np.mean([np.mean(row["self_error"]) for row in rows.values()])
    mean_direct = np.mean([np.mean(row["self_error_direct"]) for row in rows.values()])
    assert np.isclose(doc["overall"]["interference"], mean_zip)
    assert np.isclose(doc["overall"]["interference_direct"], mean_direct)
    assert np.isclose(doc["overall"]["ratio"], mean_zip / mean_direct)
    assert doc["overall"]["ratio"] <= 0.8, doc["overall"]

    got = read_kohya(out)
    for name in (Q4, TE):  # the report's numbers, recomputed from the saved output with dense numpy
        dc, ds, dm = c[name].dense(), s[name].dense(), got[name]
        p_c = _row_basis(c[name].down) @ _row_basis(c[name].down).T
        p_s = _row_basis(s[name].down) @ _row_basis(s[name].down).T
        e_c = np.linalg.norm((dm - dc) @ p_c) / np.linalg.norm(dc)
        e_s = np.linalg.norm((dm - ds) @ p_s) / np.linalg.norm(ds)
        assert np.allclose(rows[name]["self_error"], [e_c, e_s], rtol=1e-4, atol=1e-6), name
        direct = [np.linalg.norm(ds @ p_c) / np.linalg.norm(dc), np.linalg.norm(dc @ p_s) / np.linalg.norm(ds)]
        assert np.allclose(rows[name]["self_error_direct"], direct, rtol=1e-6), name
        assert np.isclose(rows[name]["interference"], (e_c + e_s) / 2, rtol=1e-4)
