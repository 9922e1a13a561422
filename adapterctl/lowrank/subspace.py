"""How two branches relate, and how well a merge keeps each, from the factors alone.

These are DESIGN.md §5's cheap proxies (necessary, not sufficient; no image quality is implied):

- ``self_error(M, X)`` = ||(delta_W_M - delta_W_X) P_X|| / ||delta_W_X||, with P_X the projector
  onto the row space of X's ``down`` (the inputs X responds to): how much of X's own effect the
  merge changed. For a direct merge (M = X + Y) it is the crosstalk ||delta_W_Y P_X|| / ||delta_W_X||.
- ``paired_column_cosine(X, Y)``: mean |cos| between column j of delta_W_X and column j of
  delta_W_Y over the columns both use (ZipLoRA's own diagnostic).
- ``overlap(Q1, Q2)`` = ||Q1^T Q2||_F^2 / min(k1, k2): 0 for orthogonal subspaces, 1 when one
  contains the other.

Each costs O((out + in) r^2): r x r Gram products, never an out x in matrix.
"""

from __future__ import annotations

import numpy as np

from adapterctl.lowrank.factored import Factored, basis


def row_basis(f: Factored) -> np.ndarray:
    """[in, k] orthonormal basis of the inputs delta_W responds to (the row space of ``down``)."""
    return basis(f.down.T)[0]


def column_basis(f: Factored) -> np.ndarray:
    """[out, k] orthonormal basis of what delta_W can write (the column space of ``up``)."""
    return basis(f.up)[0]


def self_error(merged: Factored, source: Factored, q_source: np.ndarray, *,
               merged_gram: np.ndarray | None = None) -> float:
    """||(delta_W_merged - delta_W_source) P|| / ||delta_W_source||, P = q q^T, as r x r products:
    ||U a - V b||^2 = tr(a^T U^T U a) + tr(b^T V^T V b) - 2 tr(a^T U^T V b)."""
    a = merged.scale * (merged.down @ q_source)  # [R, k]
    b = source.scale * (source.down @ q_source)  # [r, k]
    mm = merged.up.T @ merged.up if merged_gram is None else merged_gram
    ss = source.up.T @ source.up
    residual2 = float(np.sum((mm @ a) * a) + np.sum((ss @ b) * b) - 2 * np.sum(((merged.up.T @ source.up) @ b) * a))
    norm2 = float(np.trace(ss @ (source.down @ source.down.T))) * source.scale ** 2
    return float(np.sqrt(max(residual2, 0.0) / norm2)) if norm2 > 0 else 0.0


def _column_norms2(f: Factored) -> np.ndarray:
    return np.sum(((f.up.T @ f.up) @ f.down) * f.down, axis=0) * f.scale ** 2


def paired_column_cosine(x: Factored, y: Factored) -> float:
    dots = np.sum(((x.up.T @ y.up) @ y.down) * x.down, axis=0) * (x.scale * y.scale)
    norms = np.sqrt(np.maximum(_column_norms2(x), 0.0) * np.maximum(_column_norms2(y), 0.0))
    used = norms > norms.max(initial=0.0) * 1e-12
    if not used.any():
        return 0.0
    return float(np.mean(np.abs(dots[used]) / norms[used]))


def overlap(q1: np.ndarray, q2: np.ndarray) -> float:
    k = min(q1.shape[1], q2.shape[1])
    return float(np.sum((q1.T @ q2) ** 2) / k) if k else 0.0
