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


def self_error(merged: Factored, source: Factored, q_source: np.ndarray) -> float:
    """||(delta_W_merged - delta_W_source) P|| / ||delta_W_source||, P = q q^T."""
    left = np.concatenate([merged.up * merged.scale, -source.up * source.scale], axis=1)  # [out, R + r]
    right = np.concatenate([merged.down @ q_source, source.down @ q_source], axis=0)  # [R + r, k]
    residual2 = float(np.trace(right.T @ (left.T @ left) @ right))
    norm = source.frobenius_norm()
    return float(np.sqrt(max(residual2, 0.0))) / norm if norm > 0 else 0.0


def paired_column_cosine(x: Factored, y: Factored) -> float:
    cross = (x.up.T @ y.up) * (x.scale * y.scale)  # [rx, ry]
    dots = np.einsum("ij,ik,kj->j", x.down, cross, y.down)
    nx = np.einsum("ij,ik,kj->j", x.down, x.up.T @ x.up, x.down) * x.scale ** 2
    ny = np.einsum("ij,ik,kj->j", y.down, y.up.T @ y.up, y.down) * y.scale ** 2
    norms = np.sqrt(np.maximum(nx, 0.0) * np.maximum(ny, 0.0))
    used = norms > norms.max(initial=0.0) * 1e-12
    if not used.any():
        return 0.0
    return float(np.mean(np.abs(dots[used]) / norms[used]))


def overlap(q1: np.ndarray, q2: np.ndarray) -> float:
    k = min(q1.shape[1], q2.shape[1])
    return float(np.sum((q1.T @ q2) ** 2) / k) if k else 0.0
