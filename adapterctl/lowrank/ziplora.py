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
ZipLoRA trains its mergers with Adam; here the objective is quadratic in the mergers (while no
product m_c m_s changes sign), so linear conjugate gradients solve it in a few steps: on partly
overlapping pairs (DESIGN.md §4) 5 steps reach the interference that 40 Adam steps reach
(docs/merge.md). float32 inside; the mergers are folded in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adapterctl.lowrank.factored import Factored, _gram_root, basis


@dataclass(frozen=True)
class Mergers:
    m_content: np.ndarray
    m_style: np.ndarray
    steps: int
    loss_start: float
    loss_end: float


@dataclass(frozen=True)
class ZipResult(Mergers):
    merged: Factored = None


def zip_merge(content: Factored, style: Factored, *, axis: str = "input", lam: float = 0.01, steps: int = 8,
              tol: float = 1e-3) -> ZipResult:
    """Optimise the mergers (initialised to 1) and fold them into one factored branch."""
    m = find_mergers(content, style, axis=axis, lam=lam, steps=steps, tol=tol)
    return ZipResult(m.m_content, m.m_style, m.steps, m.loss_start, m.loss_end,
                     fold(content, style, m.m_content, m.m_style, axis))


def find_mergers(content: Factored, style: Factored, *, axis: str = "input", lam: float = 0.01, steps: int = 8,
                 tol: float = 1e-3) -> Mergers:
    """The merger vectors (initialised to 1) that minimise the per-module objective."""
    c = content.with_scale(1.0)
    s = style.with_scale(1.0)
    objective = (_InputAxis if axis == "input" else _OutputAxis)(c, s, lam)
    z = np.ones(objective.size, dtype=np.float32)
    loss0, grad = objective(z)
    # While the products m_c m_s keep their sign, L is quadratic in z, so its gradient is affine:
    # H p = grad(p) - grad(0), and linear conjugate gradients need one gradient per step.
    g_zero = objective(np.zeros_like(z))[1]
    residual = -grad
    direction = residual.copy()
    rs = float(residual @ residual)
    rs0, step = rs, 0
    for step in range(1, steps + 1):
        h_dir = objective(direction)[1] - g_zero
        curvature = float(direction @ h_dir)
        if curvature <= 0 or rs <= (tol ** 2) * rs0:  # flat or non-convex direction, or converged
            step -= 1
            break
        alpha = rs / curvature
        z = z + alpha * direction
        residual = residual - alpha * h_dir
        rs_new = float(residual @ residual)
        direction = residual + (rs_new / rs) * direction
        rs = rs_new
    final, _ = objective(z)
    if not np.isfinite(final) or final > loss0:  # a sign flip took it off the quadratic: keep the start
        z, final = np.ones_like(z), loss0
    n = objective.size // 2
    return Mergers(z[:n].astype(np.float64), z[n:].astype(np.float64), step, float(loss0), float(final))


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
        self.q_split = self.q[0].shape[1]
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
    """Both sources stacked, so that a step is two (2r x in) x (in x 2k) products, not eight small ones."""

    def __init__(self, c: Factored, s: Factored, lam: float):
        super().__init__(c, s, lam)
        f32 = np.float32
        self.rank_c = c.rank
        self.a = np.concatenate([c.down, s.down], axis=0).astype(f32)  # [r_c + r_s, in]
        self.q = np.concatenate(self.q, axis=1).astype(f32)  # [in, k_c + k_s]
        self.k_c = self.q_split
        self.r = np.concatenate([self.r_c, self.r_s], axis=1).astype(f32)  # [k, r_c + r_s]
        # The targets: each source's own image on its row space, R_x A_x Q_x, side by side.
        full = self.r @ (self.a @ self.q)
        own = np.zeros_like(full)
        own[:, :self.k_c] = (self.r[:, :c.rank] @ (self.a[:c.rank] @ self.q[:, :self.k_c]))
        own[:, self.k_c:] = (self.r[:, c.rank:] @ (self.a[c.rank:] @ self.q[:, self.k_c:]))
        self.t = own
        self.col_weight = np.concatenate([np.full(self.k_c, 1.0 / self.norm2[0]),
                                          np.full(self.q.shape[1] - self.k_c, 1.0 / self.norm2[1])]).astype(f32)
        self.size = 2 * c.down.shape[1]
        self.scaled = np.empty_like(self.a)  # reused by every step
        self.h = np.empty_like(self.a)

    def __call__(self, z):
        n, rc = self.size // 2, self.rank_c
        m_c, m_s = z[:n], z[n:]
        np.multiply(self.a[:rc], m_c, out=self.scaled[:rc])
        np.multiply(self.a[rc:], m_s, out=self.scaled[rc:])
        res = self.r @ (self.scaled @ self.q) - self.t  # [k, k_c + k_s]: both sources' residuals
        weighted = res * self.col_weight
        loss = float(np.vdot(res, weighted))
        np.matmul(self.r.T @ (2.0 * weighted), self.q.T, out=self.h)  # [r_c + r_s, in]
        self.h *= self.a
        pen, p_c, p_s = self.penalty(m_c, m_s)
        grad = np.empty(self.size, dtype=np.float32)
        np.sum(self.h[:rc], axis=0, out=grad[:n])
        np.sum(self.h[rc:], axis=0, out=grad[n:])
        grad[:n] += p_c
        grad[n:] += p_s
        return loss + pen, grad


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
