"""The factored math against dense numpy: every identity is checked on random small modules,
including conv-shaped factors and ranks at and below min(in, out)."""

from __future__ import annotations

import numpy as np
import pytest

from adapterctl.lowrank import Factored, concat, effective_rank

SHAPES = [(12, 7, 3), (5, 20, 5), (9, 9, 9), (30, 4, 2)]  # out, in, rank


def _branch(rng, out, inp, r, scale=0.37) -> Factored:
    return Factored.of(rng.standard_normal((out, r)), rng.standard_normal((r, inp)), scale)


@pytest.mark.parametrize("out,inp,r", SHAPES)
def test_norm_and_singular_values_equal_dense(out, inp, r):
    b = _branch(np.random.default_rng(out * 100 + inp), out, inp, r)
    dense = b.dense()
    assert np.isclose(b.frobenius_norm(), np.linalg.norm(dense))
    want = np.linalg.svd(dense, compute_uv=False)[: b.rank]
    assert np.allclose(b.singular_values(), want)
    u, s, vt = b.svd()
    assert np.allclose(u @ np.diag(s) @ vt, dense)
    assert np.allclose(u.T @ u, np.eye(len(s)), atol=1e-10) and np.allclose(vt @ vt.T, np.eye(len(s)), atol=1e-10)


@pytest.mark.parametrize("out,inp,r", SHAPES)
def test_truncation_is_the_optimal_rank_k_approximation(out, inp, r):
    b = _branch(np.random.default_rng(7 + r), out, inp, r)
    sv = np.linalg.svd(b.dense(), compute_uv=False)
    for k in range(1, r + 1):
        t = b.truncate(k)
        assert t.rank == k
        err = np.linalg.norm(b.dense() - t.dense())
        assert np.isclose(err, np.sqrt(np.sum(sv[k:] ** 2)), atol=1e-9)  # Eckart-Young
        assert np.isclose(err, b.truncation_error(k), atol=1e-9)
    assert np.allclose(b.truncate(r).dense(), b.dense())  # full rank changes nothing


def test_conv_shaped_factors_flatten():
    rng = np.random.default_rng(3)
    up, down = rng.standard_normal((8, 2, 1, 1)), rng.standard_normal((2, 4, 3, 3))
    b = Factored.of(up, down, 0.5)
    assert b.shape == (8, 36) and b.rank == 2
    assert np.allclose(b.dense(), 0.5 * up.reshape(8, 2) @ down.reshape(2, 36))


def test_concat_is_the_exact_weighted_sum():
    rng = np.random.default_rng(11)
    parts = [_branch(rng, 10, 6, r, scale=s) for r, s in ((2, 0.5), (3, 2.0), (1, -1.0))]
    weights = [0.7, -0.2, 1.5]
    merged = concat(parts, weights)
    assert merged.rank == 6
    assert np.allclose(merged.dense(), sum(w * p.dense() for p, w in zip(parts, weights)))
    with pytest.raises(ValueError):
        concat(parts, [1.0])
    with pytest.raises(ValueError):
        concat([parts[0], _branch(rng, 10, 7, 2)])


def test_with_scale_keeps_delta_w():
    b = _branch(np.random.default_rng(5), 6, 5, 2, scale=0.25)
    assert np.allclose(b.with_scale(4.0).dense(), b.dense())
    with pytest.raises(ValueError):
        b.with_scale(0.0)


def test_effective_rank():
    assert np.isclose(effective_rank(np.array([1.0, 1.0, 1.0, 1.0])), 4.0)
    assert np.isclose(effective_rank(np.array([1.0, 0.0])), 1.0)
    assert effective_rank(np.array([0.0])) == 0.0 and effective_rank(np.array([np.nan])) == 0.0
