"""Data-free ZipLoRA: merger vectors found per module from the factors alone.

ZipLoRA (arXiv 2311.13600) merges delta_W_m = delta_W_c diag(m_c) + delta_W_s diag(m_s) and
learns m_c, m_s on images. With no images, this module uses a per-layer stand-in (adapterctl's
own, unpublished): keep each source's effect on the inputs it responds to, and push the
overlap of the mergers down,

    L(m_c, m_s) = e_c^2 + e_s^2 + lambda * mean_j |m_c[j] m_s[j]|,
    e_x = ||(delta_W_m - delta_W_x) P_x|| / ||delta_W_x||,

with P_x the projector onto the row space of x's ``down``. It is an approximation of the paper's
method, which is calibrated on images; the losses it reports are proxies, not image quality.

Mergers scale the input axis (columns of delta_W, the paper's parameter count) or the output
axis (rows, as UnZipLoRA does). Either way they fold exactly into the factors:
input: [B_c B_s] [A_c diag(m_c); A_s diag(m_s)]; output: [diag(m_c) B_c, diag(m_s) B_s] [A_c; A_s].

Cost per step: input axis O(in r^2) (the r x r images of diag(m) under A and P), output axis
O(out r); B enters only through the R factor of [B_c B_s], so ``out`` never appears in a step.
Adam (ZipLoRA's optimiser; lr 0.05 reaches the plateau in tens of steps here), float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adapterctl.lowrank.factored import Factored, _gram_root, basis


@dataclass(frozen=True)
class ZipResult:
    merged: Factored
    m_content: np.ndarray
    m_style: np.ndarray
    steps: int
    loss_start: float
    loss_end: float


def zip_merge(content: Factored, style: Factored, *, axis: str = "input", lam: float = 0.01, steps: int = 100,
              lr: float = 0.05, tol: float = 1e-4) -> ZipResult:
    """Optimise the mergers (initialised to 1) and fold them into one factored branch."""
    c = content.with_scale(1.0)
    s = style.with_scale(1.0)
    objective = (_InputAxis if axis == "input" else _OutputAxis)(c, s, lam)
    z = np.ones(objective.size, dtype=np.float32)
    m1 = np.zeros_like(z)
    m2 = np.zeros_like(z)
    loss0, _ = objective(z)
    best, best_z, since, step = loss0, z.copy(), 0, 0
    for step in range(1, steps + 1):
        loss, grad = objective(z)
        if loss < best * (1 - tol):
            best, best_z, since = loss, z.copy(), 0
        else:
            since += 1
            if since >= 10:  # no real progress for 10 steps: the plateau
                break
        m1 = 0.9 * m1 + 0.1 * grad
        m2 = 0.999 * m2 + 0.001 * grad * grad
        z = z - lr * (m1 / (1 - 0.9 ** step)) / (np.sqrt(m2 / (1 - 0.999 ** step)) + 1e-8)
    final, _ = objective(z)
    if final < best:
        best, best_z = final, z
    n = objective.size // 2
    m_c, m_s = best_z[:n].astype(np.float64), best_z[n:].astype(np.float64)
    return ZipResult(fold(c, s, m_c, m_s, axis), m_c, m_s, step, float(loss0), float(best))


def fold(c: Factored, s: Factored, m_c: np.ndarray, m_s: np.ndarray, axis: str) -> Factored:
    """The merged branch with the mergers folded into the factors (rank r_c + r_s, scale 1)."""
    c, s = c.with_scale(1.0), s.with_scale(1.0)
    if axis == "input":
        return Factored(np.concatenate([c.up, s.up], axis=1),
                        np.concatenate([c.down * m_c[None, :], s.down * m_s[None, :]], axis=0), 1.0)
    return Factored(np.concatenate([c.up * m_c[:, None], s.up * m_s[:, None]], axis=1),
                    np.concatenate([c.down, s.down], axis=0), 1.0)


class _Objective:
    def __init__(self, c: Factored, s: Factored, lam: float):
        self.lam = lam
        self.q = [basis(c.down.T)[0], basis(s.down.T)[0]]  # [in, k_x]: row spaces
        # Only [B_c B_s]^T [B_c B_s] matters: its R factor stands in for B (2r rows, not out).
        r = _gram_root(np.concatenate([c.up, s.up], axis=1))[1]
        self.r_c, self.r_s = r[:, :c.rank], r[:, c.rank:]
        self.norm2 = [max(c.frobenius_norm() ** 2, 1e-300), max(s.frobenius_norm() ** 2, 1e-300)]

    def penalty(self, m_c, m_s):
        n = m_c.size
        p = m_c * m_s
        sign = np.sign(p)
        return self.lam * float(np.abs(p).mean()), self.lam * sign * m_s / n, self.lam * sign * m_c / n


class _InputAxis(_Objective):
    def __init__(self, c: Factored, s: Factored, lam: float):
        super().__init__(c, s, lam)
        f32 = np.float32
        self.a_c, self.a_s = c.down.astype(f32), s.down.astype(f32)
        self.r_c32, self.r_s32 = self.r_c.astype(f32), self.r_s.astype(f32)
        self.q32 = [q.astype(f32) for q in self.q]
        # The targets: each source's own image on its row space, R_x A_x Q_x.
        self.t = [self.r_c32 @ (self.a_c @ self.q32[0]), self.r_s32 @ (self.a_s @ self.q32[1])]
        self.size = 2 * c.down.shape[1]

    def __call__(self, z):
        n = self.size // 2
        m_c, m_s = z[:n], z[n:]
        loss, g_c, g_s = 0.0, np.zeros(n, np.float32), np.zeros(n, np.float32)
        for q, t, norm2 in zip(self.q32, self.t, self.norm2):
            res = self.r_c32 @ ((self.a_c * m_c) @ q) + self.r_s32 @ ((self.a_s * m_s) @ q) - t
            loss += float(np.sum(res * res)) / norm2
            g = (2.0 / norm2) * res
            g_c += np.sum(((self.r_c32.T @ g) @ q.T) * self.a_c, axis=0)
            g_s += np.sum(((self.r_s32.T @ g) @ q.T) * self.a_s, axis=0)
        pen, p_c, p_s = self.penalty(m_c, m_s)
        return loss + pen, np.concatenate([g_c + p_c, g_s + p_s]).astype(np.float32)


class _OutputAxis(_Objective):
    def __init__(self, c: Factored, s: Factored, lam: float):
        super().__init__(c, s, lam)
        # Rows of B_u (A_u Q_x): the output-axis mergers scale them one by one.
        self.p = {(u, x): (up @ (down @ self.q[x])).astype(np.float32)
                  for u, (up, down) in enumerate(((c.up, c.down), (s.up, s.down))) for x in (0, 1)}
        self.size = 2 * c.up.shape[0]

    def __call__(self, z):
        n = self.size // 2
        m = (z[:n], z[n:])
        loss, grads = 0.0, [np.zeros(n, np.float32), np.zeros(n, np.float32)]
        for x in (0, 1):
            res = m[0][:, None] * self.p[0, x] + m[1][:, None] * self.p[1, x] - self.p[x, x]
            loss += float(np.sum(res * res)) / self.norm2[x]
            for u in (0, 1):
                grads[u] += (2.0 / self.norm2[x]) * np.sum(res * self.p[u, x], axis=1)
        pen, p_c, p_s = self.penalty(m[0], m[1])
        return loss + pen, np.concatenate([grads[0] + p_c, grads[1] + p_s]).astype(np.float32)
