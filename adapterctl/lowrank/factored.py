"""Exact math on a LoRA branch in factored form, never forming the dense update.

A branch is ``delta_W = scale * up @ down`` with ``up`` [out, r] and ``down`` [r, in] (a conv's
down is flattened to [r, in*kh*kw]). Everything here costs O((out + in) r^2), not O(out * in):

- the Frobenius norm is ``|scale| * sqrt(tr((up^T up)(down down^T)))``, an r x r product;
- the SVD comes from the r x r core ``R_up R_down^T`` of the QR factorisations ``up = Q_up R_up``
  and ``down^T = Q_down R_down``: delta_W = Q_up (R_up R_down^T) Q_down^T, so the core's singular
  values are delta_W's, and its singular vectors map back through the Q factors;
- truncation to rank k keeps the top k of those (Eckart-Young: the optimal rank-k
  approximation in Frobenius and spectral norm), and ``concat`` stacks branches exactly.

``dense()`` exists for tests and for the few methods that need it (ties, dare); nothing else
calls it. numpy only: no torch, so the core stays importable everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Factored:
    up: np.ndarray  # [out, r], float64
    down: np.ndarray  # [r, in], float64
    scale: float = 1.0

    def __post_init__(self):
        if self.up.ndim != 2 or self.down.ndim != 2 or self.up.shape[1] != self.down.shape[0]:
            raise ValueError(f"factors {self.up.shape} @ {self.down.shape} do not chain")

    @classmethod
    def of(cls, up: np.ndarray, down: np.ndarray, scale: float = 1.0) -> "Factored":
        """From stored factors of any float dtype and layout ([out, r, 1, 1] conv up, [r, in, kh, kw] down)."""
        up = np.asarray(up, dtype=np.float64).reshape(up.shape[0], -1)
        down = np.asarray(down, dtype=np.float64).reshape(down.shape[0], -1)
        return cls(up, down, float(scale))

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.up.shape[0], self.down.shape[1]

    def is_finite(self) -> bool:
        return bool(np.isfinite(self.scale) and np.isfinite(self.up).all() and np.isfinite(self.down).all())

    def dense(self) -> np.ndarray:
        return self.scale * (self.up @ self.down)

    def frobenius_norm(self) -> float:
        gram = (self.up.T @ self.up) @ (self.down @ self.down.T)
        return abs(self.scale) * float(np.sqrt(max(np.trace(gram), 0.0)))

    def _core(self):
        q_up, r_up = np.linalg.qr(self.up)
        q_down, r_down = np.linalg.qr(self.down.T)
        return q_up, self.scale * (r_up @ r_down.T), q_down

    def singular_values(self) -> np.ndarray:
        _, core, _ = self._core()
        return np.linalg.svd(core, compute_uv=False)

    def svd(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(U [out, r], S [r], Vt [r, in]) with delta_W = U diag(S) Vt, S descending."""
        q_up, core, q_down = self._core()
        u, s, vt = np.linalg.svd(core)
        return q_up @ u, s, vt @ q_down.T

    def truncate(self, k: int) -> "Factored":
        """The optimal rank-k approximation (scale 1; the singular values are split evenly
        between the factors, sqrt(S) each, so neither factor's magnitude runs away)."""
        if k < 1:
            raise ValueError("rank must be at least 1")
        u, s, vt = self.svd()
        k = min(k, len(s))
        root = np.sqrt(s[:k])
        return Factored(u[:, :k] * root, root[:, None] * vt[:k], 1.0)

    def truncation_error(self, k: int) -> float:
        """||delta_W - truncate(k)||_F, from the singular values alone."""
        s = self.singular_values()
        return float(np.sqrt(np.sum(s[k:] ** 2)))

    def with_scale(self, scale: float) -> "Factored":
        """The same delta_W carried with another scale (the factor goes into ``up``)."""
        if scale == 0 or not np.isfinite(scale):
            raise ValueError("scale must be finite and non-zero")
        return Factored(self.up * (self.scale / scale), self.down, float(scale))


def concat(parts: Sequence[Factored], weights: Sequence[float] | None = None) -> Factored:
    """sum_i w_i * delta_W_i, exactly, as one branch of rank sum_i r_i (no cross terms)."""
    if not parts:
        raise ValueError("nothing to concatenate")
    weights = [1.0] * len(parts) if weights is None else list(weights)
    if len(weights) != len(parts):
        raise ValueError(f"{len(weights)} weights for {len(parts)} branches")
    shapes = {p.shape for p in parts}
    if len(shapes) != 1:
        raise ValueError(f"branches of different shapes: {sorted(shapes)}")
    up = np.concatenate([p.up * (w * p.scale) for p, w in zip(parts, weights)], axis=1)
    down = np.concatenate([p.down for p in parts], axis=0)
    return Factored(up, down, 1.0)


def effective_rank(singular_values: np.ndarray) -> float:
    """Roy & Vetterli's effective rank: exp of the entropy of the normalised singular values."""
    total = float(singular_values.sum())
    if total <= 0 or not np.isfinite(total):
        return 0.0
    p = singular_values[singular_values > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))
