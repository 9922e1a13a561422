"""--weights figures from the factors must equal the same figures from a dense delta-W."""

import numpy as np

import adapterctl
from adapterctl.examples.make import HERE, LOCON
from adapterctl.io.arrays import read_array
from adapterctl.stats import block_stats, effective_rank, module_stats


def dense(a, entry):
    up = read_array(a.source, entry.tensors.up).astype(np.float64).reshape(-1, entry.rank)
    down = read_array(a.source, entry.tensors.down).astype(np.float64).reshape(entry.rank, -1)
    return entry.scale * up @ down


def test_module_norm_and_singular_values_match_dense():
    with adapterctl.open(HERE / LOCON) as a:
        # A dense SVD of the big convs takes minutes on 2 cores: the smallest linears and the smallest conv suffice.
        by_size = sorted(a.modules, key=lambda e: a.arch.get(e.module).in_features * a.arch.get(e.module).out_features)
        chosen = [e for e in by_size if e.kind == "linear"][:4] + [e for e in by_size if e.kind == "conv"][:1]
        for entry in chosen:
            s = module_stats(a, entry)
            w = dense(a, entry)
            assert np.isclose(s.norm, np.linalg.norm(w), rtol=1e-9)
            sv = np.sqrt(np.abs(np.linalg.eigvalsh(w @ w.T)))[::-1][: entry.rank]
            assert np.allclose(s.singular_values, sv, rtol=1e-6, atol=1e-9)


def test_block_norm_is_the_norm_of_the_whole_block_update():
    with adapterctl.open(HERE / LOCON) as a:
        stats = {b["block"]: b for b in block_stats(a)}
        for block, b in stats.items():
            dense_norm = np.sqrt(sum(np.linalg.norm(dense(a, e)) ** 2 for e in a.modules if e.block == block))
            assert np.isclose(b["norm"], dense_norm, rtol=1e-9)
            assert 1.0 <= b["effective_rank"]["min"] <= b["effective_rank"]["max"] <= 4.0


def test_effective_rank_extremes():
    assert np.isclose(effective_rank(np.array([1.0, 0, 0])), 1.0)
    assert np.isclose(effective_rank(np.array([2.0, 2.0, 2.0, 2.0])), 4.0)
    assert effective_rank(np.zeros(3)) == 0.0
