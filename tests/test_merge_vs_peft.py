"""MERGE interop: adapterctl's svd, ties, dare, dare_ties and cat against peft's
``add_weighted_adapter`` ('svd', 'ties_svd', 'dare_linear_svd', 'dare_ties_svd', 'cat') on the
same inputs.

The inputs are two LoRAs written by peft itself (``save_pretrained``) on real SDXL UNet modules
at their real shapes (a 3x3 conv and a linear, out != in), built as bare ``nn.Linear``/``nn.Conv2d``
under their SDXL paths, so adapterctl's arch map names them and no diffusers model is needed (the
tiny UNet of _tiny_models.py cannot be used: merge plans its output shapes from the SDXL map).
Ranks differ (4 and 6) and alpha != rank (scales 1.5 and 0.5), without rsLoRA (peft 0.21's
add_weighted_adapter copies use_rslora into the merged config and then scales it by sqrt(r)).
adapterctl's side is what it writes: merge, save, reopen, ``branch(e).dense()``; peft's side is
what it holds: the merged adapter's ``scaling * B @ A`` (scaling is 1: peft gives the new adapter
lora_alpha = r; ``svd_clamp`` defaults to None, no clamp).

What is compared, and why the numbers differ at all (run with ``-s`` for the measured table):

- svd, ties, cat, and dare/dare_ties at density 1 are deterministic: agreement is to float
  rounding. peft combines float32 updates and runs a float32 SVD; adapterctl reads the float32
  factors into float64, works in float64 and writes float32 factors. A third party, the same
  math in float64 (peft's own merge_utils, a float64 SVD; for svd a QR route), splits the gap:
  adapterctl sits at float32 storage rounding of it (~4e-8), peft at float32 SVD error (~2e-6).
- dare and dare_ties at density < 1 draw random masks from different RNGs (adapterctl: numpy,
  seeded per module; peft: ``torch.bernoulli`` on the global torch RNG), so only the
  distributions can agree. At rank >= min(out, in) the SVD is lossless, so the outputs are the
  masked sums themselves, and the tests check the moments that must agree.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import adapterctl
from adapterctl.arch import load_arch

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # peft: density >= 1 prunes nothing, etc.
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

ARCH = load_arch("sdxl")

# Real SDXL shapes, out != in: ΔW 320x36 (3x3 conv) and 320x1280 (linear). Every other SDXL
# module is at least 320 wide both ways, and ties/dare need dense SVDs (~0.5 s each at 320x1280
# on a small CPU, three per comparison), so the set stays this small.
MODULES = ["unet.conv_in", "unet.down_blocks.0.resnets.0.time_emb_proj"]
RANKS, ALPHAS = (4, 6), (6.0, 3.0)  # peft scales 1.5 and 0.5
WEIGHTS = [(0.7, 1.3), (1.0, -0.6)]

# Worst relative Frobenius errors observed (CPU, torch 2.13, peft 0.21): ours vs peft 1.8e-6,
# all of it peft's float32 SVD (6.5e-6 on the 640x320 conv_shortcut, left out for time); ours vs
# float64 4e-8; cat 5e-8 all round. The bounds leave room for other LAPACK builds.
TOL_VS_PEFT = 2e-5
TOL_VS_F64 = 5e-7
TOL_CAT = 1e-6

MEASURED: dict[str, dict[str, float]] = {}  # comparison -> {quantity: worst value}, printed at the end


def _note(what: str, **values: float) -> None:
    row = MEASURED.setdefault(what, {})
    for k, v in values.items():
        row[k] = max(row.get(k, 0.0), float(v))


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if not MEASURED:
        return
    width = max(len(k) for k in MEASURED)
    print("\n\nmerge vs peft add_weighted_adapter: worst over modules and parameters")
    for what, row in MEASURED.items():
        print(f"  {what:<{width}}  " + "  ".join(f"{k}={v:.2e}" for k, v in row.items()))


# ---------------------------------------------------------------------------------------------
# Inputs: two peft LoRAs on SDXL-named modules, saved by peft, read by adapterctl
# ---------------------------------------------------------------------------------------------

def _sdxl_modules(names) -> nn.Module:
    """Bare Linear/Conv2d layers at their SDXL UNet paths and shapes (peft needs no forward)."""
    root = nn.Module()
    for name in names:
        spec = ARCH.get(name)
        *parents, leaf = spec.path.split(".")
        node = root
        for p in parents:
            if p not in node._modules:
                node.add_module(p, nn.Module())
            node = node._modules[p]
        if spec.kernel:
            layer = nn.Conv2d(spec.in_features, spec.out_features, tuple(spec.kernel))
        else:
            layer = nn.Linear(spec.in_features, spec.out_features)
        node.add_module(leaf, layer)
    return root


class Pair:
    """Two peft adapters 'a' and 'b' on one model, the same two as files adapterctl opened."""

    def __init__(self, names, directory, seed):
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(seed)
        targets = [ARCH.get(n).path for n in names]
        self.model = get_peft_model(_sdxl_modules(names),
                                    LoraConfig(r=RANKS[0], lora_alpha=ALPHAS[0], target_modules=targets),
                                    adapter_name="a")
        self.model.add_adapter("b", LoraConfig(r=RANKS[1], lora_alpha=ALPHAS[1], target_modules=targets))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for pname, param in self.model.named_parameters():
                if "lora_" in pname:  # peft starts B at zero: both factors random and non-zero
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
        self.model.save_pretrained(directory)  # named adapters land in directory/<name>
        self.files = [adapterctl.open(directory / "a"), adapterctl.open(directory / "b")]
        self.inputs = [self.peft_deltas("a"), self.peft_deltas("b")]
        self.factors = [self.peft_factors("a"), self.peft_factors("b")]
        self.count = 0

    def close(self):
        for f in self.files:
            f.close()

    def layers(self):
        from peft.tuners.lora import LoraLayer

        for name, module in self.model.named_modules():
            if isinstance(module, LoraLayer):
                yield "unet." + name.removeprefix("base_model.model."), module

    def peft_factors(self, adapter: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """module -> (scaling * B [out, r], A [r, in]) in float64, as peft holds them for ``adapter``."""
        out = {}
        for name, module in self.layers():
            a = module.lora_A[adapter].weight.detach().double()
            b = module.lora_B[adapter].weight.detach().double()
            out[name] = (module.scaling[adapter] * b.reshape(b.shape[0], -1), a.reshape(a.shape[0], -1))
        return out

    def peft_deltas(self, adapter: str) -> dict[str, np.ndarray]:
        """module -> scaling * B @ A in float64 (get_delta_weight's value, without its float32 product)."""
        return {name: (b @ a).numpy() for name, (b, a) in self.peft_factors(adapter).items()}

    def peft(self, combination_type: str, weights, *, torch_seed=None, **kwargs) -> dict[str, np.ndarray]:
        """peft's merged ΔW per module (the merged adapter is deleted again)."""
        self.count += 1
        name = f"m{self.count}"  # add_weighted_adapter silently does nothing for an existing name
        if torch_seed is not None:
            torch.manual_seed(torch_seed)
        if combination_type.endswith("svd"):
            # Reduced SVD: the same U[:, :k], S[:k], Vh[:k] as the default full one, without
            # computing the columns the cut throws away (and valid for svd_rank > min(out, in)).
            kwargs.setdefault("svd_full_matrices", False)
        self.model.add_weighted_adapter(["a", "b"], list(weights), name, combination_type=combination_type,
                                        **kwargs)
        out = self.peft_deltas(name)
        for layer, module in self.layers():
            assert module.scaling[name] == 1.0  # lora_alpha = r: the factors are the whole update
            applied = module.get_delta_weight(name).detach().double().reshape(out[layer].shape).numpy()
            assert np.linalg.norm(applied - out[layer]) <= 1e-6 * np.linalg.norm(out[layer])  # float32 product
        self.model.delete_adapter(name)
        return out

    def ours(self, method: str, weights, tmp_path, *, save=True, **params) -> dict[str, np.ndarray]:
        """adapterctl's merged ΔW per module, as written to a file and read back (``save``) or
        straight from the derived adapter (float64, not rounded to the file's float32)."""
        merged = adapterctl.merge(self.files, method, weights=list(weights), **params)
        if not save:
            return {e.module: merged.branch(e).dense() for e in merged.modules}
        self.count += 1
        out = tmp_path / f"{method}_{self.count}.safetensors"
        merged.save(out)
        with adapterctl.open(out) as o:
            assert {e.module for e in o.modules} == set(self.inputs[0])
            return {e.module: o.branch(e).dense() for e in o.modules}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    p = Pair(MODULES, tmp_path_factory.mktemp("peft_pair"), seed=7)
    yield p
    p.close()


def _rel(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    """Worst relative Frobenius error over modules."""
    assert set(got) == set(want)
    worst = 0.0
    for name in want:
        assert got[name].shape == want[name].shape, name
        worst = max(worst, np.linalg.norm(got[name] - want[name]) / np.linalg.norm(want[name]))
    return float(worst)


def _svd_oracle(factors, weights, rank: int) -> dict[str, np.ndarray]:
    """The weighted sum's optimal rank-k approximation in float64, from Householder QRs of the
    stacked factors (sum = Q_b (R_b R_a^T) Q_a^T; a different route from adapterctl's Gram roots)."""
    out = {}
    for name in factors[0]:
        b = torch.cat([w * f[name][0] for w, f in zip(weights, factors)], dim=1)
        a = torch.cat([f[name][1] for f in factors], dim=0)
        qb, rb = torch.linalg.qr(b)
        qa, ra = torch.linalg.qr(a.T)
        u, s, vh = torch.linalg.svd(rb @ ra.T)
        if rank < len(s):
            assert (s[rank - 1] - s[rank]) / s[0] > 1e-3, f"{name}: singular values nearly tied at {rank}"
        out[name] = (((qb @ u[:, :rank]) * s[:rank]) @ (vh[:rank] @ qa.T)).numpy()
    return out


def _f64_oracle(inputs, kind: str, weights, rank: int, density: float = 1.0) -> dict[str, np.ndarray]:
    """peft's own merge_utils on the float64 updates, then a float64 SVD cut to ``rank``.

    Also checks that the cut is well posed: with (nearly) tied singular values at ``rank`` the
    rank-k approximation is not unique, and rounding alone could pick another one."""
    from peft.utils import merge_utils as mu

    out = {}
    w = torch.tensor(list(weights), dtype=torch.float64)
    for name in inputs[0]:
        tasks = [torch.from_numpy(d[name]) for d in inputs]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # density 1: "no pruning will be performed"
            if kind == "svd":
                total = mu.task_arithmetic(tasks, w)
            elif kind == "ties":
                total = mu.ties(tasks, w, density, "total")
            else:
                raise ValueError(kind)
        u, s, vh = torch.linalg.svd(total, full_matrices=False)
        if rank < len(s) and s[rank] > 1e-9 * s[0]:
            assert (s[rank - 1] - s[rank]) / s[0] > 1e-3, f"{name}: singular values nearly tied at {rank}"
        out[name] = ((u[:, :rank] * s[:rank]) @ vh[:rank]).numpy()
    return out


# ---------------------------------------------------------------------------------------------
# Preconditions: both sides read the same inputs
# ---------------------------------------------------------------------------------------------

def test_inputs_read_alike(pair):
    for f, want, r, alpha in zip(pair.files, pair.inputs, RANKS, ALPHAS):
        assert f.layout == "peft"
        assert {e.module for e in f.modules} == set(MODULES)
        assert all(e.rank == r and e.alpha == alpha for e in f.modules)
        got = {e.module: f.branch(e).dense() for e in f.modules}
        assert _rel(got, want) < 1e-12  # float32 factors, both sides multiplied in float64


# ---------------------------------------------------------------------------------------------
# 1. svd vs peft 'svd'
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weights,rank,full_matrices", [
    (WEIGHTS[0], 3, False), (WEIGHTS[1], 3, False), (WEIGHTS[0], 10, False), (WEIGHTS[1], 10, False),
    (WEIGHTS[0], 3, True),  # peft's default SVD call, once
], ids=["w+-rank3", "w--rank3", "w+-rank-full", "w--rank-full", "w+-rank3-peft-full-matrices"])
def test_svd_matches_peft_svd(pair, tmp_path, weights, rank, full_matrices):
    ours = pair.ours("svd", weights, tmp_path, rank=rank)
    theirs = pair.peft("svd", weights, svd_rank=rank, svd_full_matrices=full_matrices)
    oracle = _svd_oracle(pair.factors, weights, rank)
    vs_peft, ours_err, peft_err = _rel(ours, theirs), _rel(ours, oracle), _rel(theirs, oracle)
    _note("svd vs peft svd" + (" (full_matrices)" if full_matrices else ""),
          ours_vs_peft=vs_peft, ours_vs_f64=ours_err, peft_vs_f64=peft_err)
    assert vs_peft < TOL_VS_PEFT and ours_err < TOL_VS_F64
    if rank == sum(RANKS):  # lossless: the exact weighted sum
        exact = {n: sum(w * d[n] for w, d in zip(weights, pair.inputs)) for n in MODULES}
        assert _rel(ours, exact) < TOL_VS_F64


# ---------------------------------------------------------------------------------------------
# 2. ties vs peft 'ties_svd' (deterministic)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weights,density,rank", [(WEIGHTS[0], 0.5, 3), (WEIGHTS[1], 0.7, 3),
                                                  (WEIGHTS[0], 0.7, 10), (WEIGHTS[1], 0.5, 10)],
                         ids=["w+-d0.5-rank3", "w--d0.7-rank3", "w+-d0.7-rank10", "w--d0.5-rank10"])
def test_ties_matches_peft_ties_svd(pair, tmp_path, weights, density, rank):
    ours = pair.ours("ties", weights, tmp_path, rank=rank, density=density)
    theirs = pair.peft("ties_svd", weights, svd_rank=rank, density=density)
    oracle = _f64_oracle(pair.inputs, "ties", weights, rank, density)
    vs_peft, ours_err, peft_err = _rel(ours, theirs), _rel(ours, oracle), _rel(theirs, oracle)
    _note("ties vs peft ties_svd", ours_vs_peft=vs_peft, ours_vs_f64=ours_err, peft_vs_f64=peft_err)
    assert vs_peft < TOL_VS_PEFT and ours_err < TOL_VS_F64


# ---------------------------------------------------------------------------------------------
# 3a. dare / dare_ties at density 1: no drop, so exactly svd / ties without trimming
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,theirs_type,oracle", [("dare", "dare_linear_svd", "svd"),
                                                       ("dare_ties", "dare_ties_svd", "ties")])
def test_dare_at_density_one_is_deterministic_and_matches_peft(pair, tmp_path, method, theirs_type, oracle):
    weights, rank = WEIGHTS[1], 3
    ours = pair.ours(method, weights, tmp_path, rank=rank, density=1.0, seed=1)
    theirs = pair.peft(theirs_type, weights, svd_rank=rank, density=1.0, torch_seed=0)
    want = _svd_oracle(pair.factors, weights, rank) if oracle == "svd" else \
        _f64_oracle(pair.inputs, oracle, weights, rank)
    vs_peft, ours_err, peft_err = _rel(ours, theirs), _rel(ours, want), _rel(theirs, want)
    _note(f"{method}@1 vs peft {theirs_type}@1", ours_vs_peft=vs_peft, ours_vs_f64=ours_err, peft_vs_f64=peft_err)
    assert vs_peft < TOL_VS_PEFT and ours_err < TOL_VS_F64
    if method == "dare":  # dare at density 1 is the svd merge
        assert _rel(ours, pair.ours("svd", weights, tmp_path, rank=rank)) < TOL_VS_F64


# ---------------------------------------------------------------------------------------------
# 3b. dare / dare_ties at density 0.5: same distribution, independent masks
# ---------------------------------------------------------------------------------------------

# Lossless rank needs svd_rank >= min(out, in), and peft's conv path reshapes the cut factors to
# the planned rank, so svd_rank must also not exceed any conv's min(out, in) in the model: one
# module per model. conv_in (ΔW 320x36, 11520 entries) is the only SDXL module whose full-rank
# SVD is cheap enough to repeat RUNS times per side.
STAT_MODULE = "unet.conv_in"
RUNS = 12
DENSITY = 0.5


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    p = Pair([STAT_MODULE], tmp_path_factory.mktemp("peft_single"), seed=11)
    spec = ARCH.get(STAT_MODULE)
    p.full = min(spec.out_features, spec.in_features * math.prod(spec.kernel or (1,)))
    yield p
    p.close()


def _runs(p: Pair, method: str, theirs_type: str, weights, tmp_path):
    """RUNS outputs each side at full rank (the SVD changes nothing): lists of [out, in] arrays."""
    (name,) = p.inputs[0]
    ours = [p.ours(method, weights, tmp_path, save=False, rank=p.full, density=DENSITY, seed=s)[name]
            for s in range(RUNS)]
    theirs = [p.peft(theirs_type, weights, svd_rank=p.full, density=DENSITY, torch_seed=1000 + s)[name]
              for s in range(RUNS)]
    return ours, theirs


def _sq(x) -> float:
    return float(np.sum(np.square(x)))


@pytest.mark.parametrize("method,theirs_type", [("dare", "dare_linear_svd"), ("dare_ties", "dare_ties_svd")])
def test_dare_statistics_agree_with_peft(single, tmp_path, method, theirs_type):
    weights = WEIGHTS[0]
    (name,) = single.inputs[0]
    ours, theirs = _runs(single, method, theirs_type, weights, tmp_path)
    n = len(ours)

    # Runs with different seeds differ, each side; distances between independent runs: ours vs
    # peft must look like peft vs peft (same distribution) - a mean square ratio near 1.
    cross = np.mean([_sq(o - t) for o, t in zip(ours, theirs)])
    peft_peft = np.mean([_sq(theirs[i] - theirs[(i + 1) % n]) for i in range(n)])
    ours_ours = np.mean([_sq(ours[i] - ours[(i + 1) % n]) for i in range(n)])
    ratio = float(np.sqrt(cross / peft_peft))  # RMS distance ratio
    assert 1 / 1.5 < ratio < 1.5, ratio
    assert 1 / 1.5 < float(np.sqrt(ours_ours / peft_peft)) < 1.5

    # Means over the runs converge to the same limit: if both sides share the expectation,
    # n * |mean_ours - mean_peft|^2 estimates the same variance as |ours_s - peft_s|^2.
    bias = n * _sq(np.mean(ours, axis=0) - np.mean(theirs, axis=0)) / cross
    assert 0.4 < bias < 2.0, bias

    note = {"rms_ours_vs_peft/peft_vs_peft": ratio, "n|mean diff|^2/E|diff|^2": bias}
    if method == "dare":
        # Unbiased, with a known variance: E|dare - sum|^2 = (1-d)/d * sum_i w_i^2 |dW_i|^2.
        truth = sum(w * d[name] for w, d in zip(weights, single.inputs))
        sigma2 = (1 - DENSITY) / DENSITY * sum(w * w * _sq(d[name]) for w, d in zip(weights, single.inputs))
        for side, outs in (("ours", ours), ("peft", theirs)):
            per_run = np.mean([_sq(x - truth) for x in outs]) / sigma2
            of_mean = n * _sq(np.mean(outs, axis=0) - truth) / sigma2
            assert 0.8 < per_run < 1.25, (side, per_run)
            assert 0.5 < of_mean < 1.6, (side, of_mean)
            note[f"{side} E|x-sum|^2/theory"] = per_run
            note[f"{side} n|mean-sum|^2/theory"] = of_mean
    _note(f"{method}@{DENSITY} vs peft {theirs_type}", **note)


def test_dare_is_reproducible_per_seed_and_changes_with_it(single, tmp_path):
    weights = WEIGHTS[1]
    for method in ("dare", "dare_ties"):
        first = single.ours(method, weights, tmp_path, rank=3, density=DENSITY, seed=5)
        again = single.ours(method, weights, tmp_path, rank=3, density=DENSITY, seed=5)
        other = single.ours(method, weights, tmp_path, rank=3, density=DENSITY, seed=6)
        assert _rel(again, first) == 0.0, method
        assert _rel(other, first) > 0.05, method


# ---------------------------------------------------------------------------------------------
# 4. cat vs peft 'cat'
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weights", WEIGHTS, ids=["w+", "w-"])
def test_cat_matches_peft_cat(pair, tmp_path, weights):
    ours = pair.ours("cat", weights, tmp_path)
    theirs = pair.peft("cat", weights)
    exact = {n: sum(w * d[n] for w, d in zip(weights, pair.inputs)) for n in MODULES}
    vs_peft, ours_err, peft_err = _rel(ours, theirs), _rel(ours, exact), _rel(theirs, exact)
    _note("cat vs peft cat", ours_vs_peft=vs_peft, ours_vs_f64=ours_err, peft_vs_f64=peft_err)
    assert vs_peft < TOL_CAT and ours_err < TOL_CAT
    with adapterctl.open(next(tmp_path.glob("cat_*.safetensors"))) as o:
        assert {e.rank for e in o.modules} == {sum(RANKS)}  # rank r1 + r2, like peft's
