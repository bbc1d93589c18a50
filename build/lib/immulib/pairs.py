"""The MNIST digit-pair sweep (paper §5.1, Fig. 2 and Table 2), fast enough for a laptop.

For an ordered pair (a, b), a ≠ b, D_P holds the training images of digit a and D_H those of digit
b, balanced in count exactly as :func:`immulib.data.digit_pair` (the authors' code) draws them.
Everything the immunizers need is a function of Gram matrices, so nothing in the loop touches the
images:

* **10 Gram matrices serve all 90 pairs.** :func:`digit_grams` computes K_c = X_cᵀX_c and
  s_c = X_cᵀ1 once per digit; a pair's K_P is K_a minus the Gram of the images of a that
  ``digit_pair`` leaves out (at most 1,321 of them).
* **The supervised loss in closed form.** The pre-training head is an a-vs-b least-squares
  classifier, targets +1 on D_P and −1 on D_H (``sup="a_vs_b"``; ``sup="P"``: +1 on D_P only,
  Algorithm 1's L(D_P) as :func:`immulib.immunize.immunize` computes it). Its loss
  (1/N)‖Xθω − y‖² = (uᵀK_s u − 2cᵀu + N)/N, u = θω, needs only K_s and c = Xᵀy.
* **No full eigendecomposition per step.** Algorithm 1 needs σ₁, v₁, σ₂ of H_P (R_well and its
  step bound), the smallest nonzero eigenvalue of H_P (the bound) and of H_H with its eigenvector
  (R_ill). With a factor K = LᵀL (L: rank × D) and F = Lθ, H = FᵀF and C = FFᵀ share their nonzero
  spectrum, and C is invertible even when H is not (the authors' setup). Top pairs come from a
  block subspace iteration on H, bottom pairs from a block inverse iteration on C (one Cholesky
  factorisation), both warm-started from the previous step's vectors and stopped on a residual
  test; the few that do not converge fall back to ``torch.linalg.eigh``.
* **Pairs are batched** along a leading dimension and everything stays in torch float64, so the
  same code runs on ``device="cuda"``.

:func:`sweep` runs one method on many pairs and returns a tidy DataFrame. The fast step computes
the same update as :func:`immulib.immunize.immunize` (``method="ours"``/``"r_ill_only"``, full
batch, balanced step sizes) when ``sup="P"`` (tested); IMMA and Opt κ are the same objectives as
there, written batched on Gram matrices. Chapter: "Linear classification: MNIST digit pairs"
(``book/06_mnist_pairs.md``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .data import ImageSet
from .immunize import METHODS
from .linalg import SHIFT
from .regularizers import UNIQUE_RTOL

__all__ = ["MEAN", "SETUPS", "STD", "SUBSET", "DigitGrams", "all_pairs", "digit_grams", "pair_indices",
           "pixel_support", "run_batch", "sweep"]

MEAN, STD = 0.1307, 0.3081  # MNIST's pixel mean and std (the authors' normalisation)
SETUPS: tuple[str, ...] = ("well_posed", "authors")
#: the pairs the chapter recomputes live by default (one per row of Fig. 2, all digits as D_P)
SUBSET: tuple[tuple[int, int], ...] = tuple((a, (a + 3) % 10) for a in range(10))
EPS = float(np.finfo(np.float64).eps)


def all_pairs() -> list[tuple[int, int]]:
    """The 90 ordered pairs (a, b), a ≠ b: D_P = digit a, D_H = digit b."""
    return [(a, b) for a in range(10) for b in range(10) if a != b]


def pixel_support(data: ImageSet, setup: str = "well_posed", *, min_frac: float = 0.01) -> np.ndarray:
    """Indices of the pixels a setup keeps: all 784 (``"authors"``) or, for ``"well_posed"``, the
    pixels that are nonzero in at least ``min_frac`` of the training images of *every* digit.

    One support for all digits keeps one dimension for all pairs (so pairs batch) and makes every
    per-digit Gram matrix full rank and far from the 10⁻⁶ shift, so the κ conventions agree.
    """
    if not isinstance(data, ImageSet):
        raise TypeError(f"data must be an ImageSet, got {type(data).__name__}")
    if setup not in SETUPS:
        raise ValueError(f"setup must be one of {SETUPS}, got {setup!r}")
    if not (isinstance(min_frac, float) and 0 <= min_frac < 1):
        raise ValueError(f"min_frac must be a float in [0, 1), got {min_frac!r}")
    flat = data.images.reshape(len(data.images), -1)
    if setup == "authors":
        return np.arange(flat.shape[1])
    active = np.stack([(flat[data.labels == c] > 0).mean(0) for c in range(10)])
    return np.flatnonzero((active > min_frac).all(0))


def _features(images: np.ndarray, pixels: np.ndarray, device) -> torch.Tensor:
    x = torch.from_numpy(images.reshape(len(images), 28 * 28)[:, pixels]).to(device, torch.float64)
    return (x / 255 - MEAN) / STD


def pair_indices(data: ImageSet, a: int, b: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the images :func:`immulib.data.digit_pair` returns for (a, b, seed)."""
    idx_a, idx_b = np.flatnonzero(data.labels == a), np.flatnonzero(data.labels == b)
    n = min(len(idx_a), len(idx_b))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(idx_a, n, replace=False)), np.sort(rng.choice(idx_b, n, replace=False))


@dataclass(frozen=True)
class DigitGrams:
    """Per-digit Gram matrices K[c] = X_cᵀX_c and sums s[c] = X_cᵀ1 over all training images of c."""

    data: ImageSet
    setup: str
    pixels: np.ndarray
    K: torch.Tensor  # (10, D, D)
    s: torch.Tensor  # (10, D)

    def pair(self, a: int, b: int, seed: int = 0):
        """(K_P, K_H, s_P, s_H, N) of the balanced pair: the full Grams minus the left-out images."""
        out = []
        for c, keep in zip((a, b), pair_indices(self.data, a, b, seed=seed)):
            dropped = np.setdiff1d(np.flatnonzero(self.data.labels == c), keep)
            X = _features(self.data.images[dropped], self.pixels, self.K.device)
            K = self.K[c] - X.T @ X
            out.append(((K + K.T) / 2, self.s[c] - X.sum(0)))
        return out[0][0], out[1][0], out[0][1], out[1][1], len(keep)


def digit_grams(data: ImageSet, setup: str = "well_posed", *, min_frac: float = 0.01,
                device: str | torch.device = "cpu") -> DigitGrams:
    """The ten Gram matrices of a setup (see :func:`pixel_support`), float64, on ``device``."""
    pixels = pixel_support(data, setup, min_frac=min_frac)
    K, s = [], []
    for c in range(10):
        X = _features(data.images[data.labels == c], pixels, device)
        K.append(X.T @ X)
        s.append(X.sum(0))
    K = torch.stack(K)
    return DigitGrams(data, setup, pixels, (K + K.transpose(1, 2)) / 2, torch.stack(s))


# ---------------------------------------------------------------------------------------------
# warm-started extreme eigenpairs, batched


def _rayleigh_ritz(A, Q):
    lam, S = torch.linalg.eigh(Q.mT @ A @ Q)
    return lam, Q @ S


def _top(H, V, tol, max_iter):
    """Top eigenpairs of symmetric H (B, n, n) by block subspace iteration from V (B, n, m).

    Returns (values descending (B, m), vectors (B, n, m), converged (B,)). Converged: the top
    Ritz vector's residual is below tol·(σ₁ − σ₂) (so the vector, not only the value, is
    accurate) and the second one's below tol·σ₁.
    """
    for _ in range(max_iter):
        lam, V = _rayleigh_ritz(H, torch.linalg.qr(H @ V).Q)
        lam, V = lam.flip(-1), V.flip(-1)
        res = (H @ V[..., :2] - V[..., :2] * lam[:, None, :2]).norm(dim=1)
        ok = (res[:, 0] <= tol * (lam[:, 0] - lam[:, 1])) & (res[:, 1] <= tol * lam[:, 0])
        if bool(ok.all()):
            break
    return lam, V, ok


def _bottom(C, V, tol, max_iter):
    """Smallest eigenpairs of SPD C (B, k, k) by block inverse iteration from V (B, k, m).

    Returns (values ascending, vectors, converged): the smallest Ritz pair's residual is below
    tol·(λ₂ − λ₁) + 100·eps·‖C‖_F (the vector is accurate up to rounding). The inverse is formed
    once from a Cholesky factor, so each iteration is a matrix product; its rounding errors are
    relative to ‖C⁻¹‖ = 1/λ₁, the eigenvalue sought.
    """
    Cinv = torch.cholesky_inverse(torch.linalg.cholesky(C))  # one factorisation; iterations are matmuls
    floor = 100 * EPS * C.flatten(1).norm(dim=1)
    for _ in range(max_iter):
        lam, V = _rayleigh_ritz(C, torch.linalg.qr(Cinv @ V).Q)
        res = (C @ V[..., :1] - V[..., :1] * lam[:, None, :1]).norm(dim=(1, 2))
        ok = res <= tol * (lam[:, 1] - lam[:, 0]) + floor
        if bool(ok.all()):
            break
    return lam, V, ok


def _fallback(A, lam, V, ok, descending):
    """Replace the pairs that did not converge by an exact ``eigh``."""
    bad = (~ok).nonzero().flatten()
    if len(bad):
        e, Q = torch.linalg.eigh(A[bad])
        if descending:
            e, Q = e.flip(-1), Q.flip(-1)
        m = lam.shape[1]
        lam, V = lam.clone(), V.clone()
        lam[bad], V[bad] = e[:, :m], Q[..., :m]
    return lam, V, len(bad)


# ---------------------------------------------------------------------------------------------
# the batched problem


def _factor(K):
    """L (B, kmax, D) with K ≈ LᵀL on its numerical range (numpy's rank rule), padding rows zero."""
    lam, Q = torch.linalg.eigh(K)
    tol = lam[:, -1:] * K.shape[-1] * EPS
    keep = lam > tol
    k = keep.sum(1)
    L = (lam.clamp_min(0).sqrt() * keep)[..., None] * Q.mT  # rows are sqrt(λ) qᵀ, zero if dropped
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept rows first
    L = torch.gather(L, 1, order[..., None].expand_as(L))[:, : int(k.max())]
    return L, k


class _Batch:
    """Gram matrices and factors of B pairs, stacked."""

    def __init__(self, KP, KH, sP, sH, N, sup):
        self.KP, self.KH, self.N = KP, KH, N  # N: (B,) images per digit
        wH = 1.0 if sup == "a_vs_b" else 0.0
        self.Ks = KP + wH * KH
        self.c = sP - wH * sH  # Xᵀy with y = +1 on D_P, −1 on D_H
        self.Ns = N * (1 + wH)
        self.wH = wH
        self.LP, self.kP = _factor(KP)
        self.LH, self.kH = _factor(KH)
        self.LK = torch.linalg.eigvalsh(self.Ks)[:, -1]
        self.D = KP.shape[-1]

    def hessians(self, theta, L, k):
        F = L @ theta
        H = F.mT @ F
        C = F @ F.mT
        pad = torch.arange(C.shape[-1], device=C.device)[None] >= k[:, None]  # padded rows of L
        big = H.diagonal(dim1=1, dim2=2).sum(-1)  # trace ≥ σ₁: padding never looks smallest
        C = C + torch.diag_embed(pad * big[:, None])
        return (H + H.mT) / 2, (C + C.mT) / 2, F

    def sup_loss(self, theta, omega):
        u = (theta @ omega[..., None])[..., 0]
        Ku = (self.Ks @ u[..., None])[..., 0]
        return u, Ku, ((u * Ku).sum(-1) - 2 * (self.c * u).sum(-1) + self.Ns) / self.Ns


def _gather(x, i):
    return torch.gather(x, 1, i[:, None])[:, 0]


class _OursStepper:
    """Algorithm 1 (``"ours"``) or R_ill Only, full batch, the step-size rules of :func:`immulib.immunize.immunize`."""

    def __init__(self, batch, method, eta, balance, rho, delta, tol, max_iter, block):
        self.b, self.method = batch, method
        self.eta, self.balance, self.rho, self.delta = eta, balance, rho, delta
        self.tol, self.max_iter, self.block = tol, max_iter, block
        self.Vtop = self.WP = self.WH = None
        self.fallbacks = 0

    def _eig(self, theta):
        b, m = self.b, self.block
        HP, CP, _ = b.hessians(theta, b.LP, b.kP)
        HH, CH, FH = b.hessians(theta, b.LH, b.kH)
        if self.Vtop is None:  # first step: exact, then warm starts
            lam, V = torch.linalg.eigh(HP)
            top, self.Vtop = lam.flip(-1)[:, :m], V.flip(-1)[..., :m]
            eP, self.WP = torch.linalg.eigh(CP)
            eH, self.WH = torch.linalg.eigh(CH)
            self.WP, self.WH, eP, eH = self.WP[..., :m], self.WH[..., :m], eP[:, :m], eH[:, :m]
        else:
            top, self.Vtop, ok = _top(HP, self.Vtop, self.tol, max(1, self.max_iter // 3))
            top, self.Vtop, n1 = _fallback(HP, top, self.Vtop, ok, True)
            eP, self.WP, ok = _bottom(CP, self.WP, self.tol, self.max_iter)
            eP, self.WP, n2 = _fallback(CP, eP, self.WP, ok, False)
            eH, self.WH, ok = _bottom(CH, self.WH, self.tol, self.max_iter)
            eH, self.WH, n3 = _fallback(CH, eH, self.WH, ok, False)
            self.fallbacks += n1 + n2 + n3
        vH = (FH.mT @ self.WH[..., :1])[..., 0] / eH[:, :1].clamp_min(1e-300).sqrt()
        return HP, HH, top, eP[:, 0], eH[:, 0], vH

    def step(self, theta, omega):
        b = self.b
        HP, HH, top, sminP, sk, vH = self._eig(theta)
        p = b.D
        s1, s2, v1 = top[:, 0], top[:, 1], self.Vtop[..., 0]
        B = theta.shape[0]
        eta_P = torch.zeros(B, dtype=theta.dtype, device=theta.device)
        M_theta = torch.zeros_like(theta)
        if self.method == "ours":
            GP = s1[:, None, None] * v1[..., :, None] * v1[..., None, :] - HP / p
            # safe_step_r_well(HP, k=k_P), zero when rounding puts σ_k at or below 0
            first = (1 - (sminP / s1).clamp_min(0).sqrt()) / (2 * s1 * (1 - 1 / p))
            second = torch.where(s2 > 0, p * ((s1 / s2).sqrt() - 1) / (2 * s2), torch.full_like(s1, math.inf))
            bound = torch.minimum(first, second)
            bound = torch.where((s1 - sminP <= UNIQUE_RTOL * s1) | (sminP <= 0), torch.zeros_like(s1), bound)
            eta_P = self.rho * bound
            TP = theta @ GP
            M_theta = M_theta + 2 * eta_P[:, None, None] * TP
        k = b.kH.to(theta.dtype)
        g = (HH * HH).sum((1, 2)) / (2 * k) - sk**2 / 2
        GH = (sk[:, None, None] * vH[..., :, None] * vH[..., None, :] - HH / k[:, None, None]) / g[:, None, None] ** 2
        GH = (GH + GH.mT) / 2
        TH = theta @ GH
        if self.method == "ours":
            eta_H = self.balance * eta_P * TP.flatten(1).norm(dim=1) / TH.flatten(1).norm(dim=1)
        else:
            eta_H = torch.full_like(sk, math.inf)
        eta_H = torch.minimum(eta_H, self.delta / (2 * GH.flatten(1).norm(dim=1)))
        M_theta = M_theta + 2 * eta_H[:, None, None] * TH
        u, Ku, loss = b.sup_loss(theta, omega)
        grad = (2 / b.Ns)[:, None] * (Ku - b.c)
        g_theta = grad[..., :, None] * omega[..., None, :]
        g_omega = (theta.mT @ grad[..., None])[..., 0]
        lip_w = s1 + b.wH * HH.flatten(1).norm(dim=1)  # ≥ σ_max(θᵀK_sθ); = σ₁(H_P) when sup="P"
        eta_w = torch.clamp(b.Ns / (2 * lip_w), max=self.eta)
        eta_t = torch.clamp(b.Ns / (2 * b.LK * (omega * omega).sum(-1) + 1e-300), max=self.eta)
        theta = theta - eta_t[:, None, None] * g_theta - M_theta
        omega = omega - eta_w[:, None] * g_omega
        return theta, omega


def _log_kappa(H, k):
    lam = torch.linalg.eigvalsh(H)
    n = H.shape[-1]
    smin = _gather(lam, (n - k).to(torch.int64))
    return torch.log(lam[:, -1]) - torch.log(smin.clamp_min(lam[:, -1].detach() * 1e-15))


class _AutogradStepper:
    """IMMA and Opt κ: the objectives of :func:`immulib.immunize.immunize`, on Gram matrices, batched.

    Gradient descent with step η and each pair's gradient norm of (θ, ω) clipped at 1.
    """

    def __init__(self, batch, method, eta, mu, inner_steps):
        self.b, self.method, self.eta, self.mu, self.inner = batch, method, eta, mu, inner_steps
        self.fallbacks = 0

    def objective(self, theta, omega):
        b = self.b
        _, _, loss = b.sup_loss(theta, omega)
        HP, HH = theta.mT @ b.KP @ theta, theta.mT @ b.KH @ theta
        HP, HH = (HP + HP.mT) / 2, (HH + HH.mT) / 2
        if self.method == "opt_kappa":
            return loss + self.mu * (_log_kappa(HP, b.kP) - _log_kappa(HH, b.kH))
        # IMMA: the attacker's ℓ2 probe on D_H with targets −1 (D_H's label in the a-vs-b head),
        # from w = 0, `inner` unrolled GD steps of size 1/λ_max of its Hessian (2/N)H_H
        N = b.N.to(theta.dtype)[:, None]
        cH = (theta.mT @ b.c_H[..., None])[..., 0]  # θᵀX_Hᵀy_H
        A = (2 / N)[..., None] * HH
        alpha = 1 / torch.linalg.eigvalsh(A)[:, -1:]
        w = torch.zeros_like(omega)
        for _ in range(self.inner):
            w = w - alpha * (2 / N) * ((HH @ w[..., None])[..., 0] - cH)
        loss_H = ((w * (HH @ w[..., None])[..., 0]).sum(-1) - 2 * (cH * w).sum(-1) + N[:, 0]) / N[:, 0]
        return loss - self.mu * loss_H

    def step(self, theta, omega):
        theta, omega = theta.detach().requires_grad_(True), omega.detach().requires_grad_(True)
        gt, go = torch.autograd.grad(self.objective(theta, omega).sum(), (theta, omega))
        norm = (gt.flatten(1).square().sum(1) + go.square().sum(1)).sqrt()
        scale = (1.0 / (norm + 1e-6)).clamp(max=1.0)  # clip_grad_norm_(…, 1.0)
        return ((theta - self.eta * scale[:, None, None] * gt).detach(),
                (omega - self.eta * scale[:, None] * go).detach())


# ---------------------------------------------------------------------------------------------
# kappa of a batch, both conventions from one eigvalsh


def _kappas(H):
    """{"pinv": κ, "shifted": κ} of each symmetric PSD matrix in H (B, n, n), as in immulib.linalg."""
    lam = torch.linalg.eigvalsh(H)
    n = H.shape[-1]
    out = {}
    a = lam.abs()
    tol = a.max(1).values * n * EPS
    big = torch.full_like(lam, math.inf)
    out["pinv"] = a.max(1).values / torch.where(a > tol[:, None], a, big).min(1).values
    sh = lam + SHIFT
    out["shifted"] = sh.max(1).values / torch.where(sh > SHIFT, sh, big).min(1).values
    return out


# ---------------------------------------------------------------------------------------------
# the sweep


def _check_pairs(pairs):
    if pairs == "all":
        return all_pairs()
    if pairs == "subset":
        return list(SUBSET)
    if isinstance(pairs, str) or not isinstance(pairs, (list, tuple)):
        raise TypeError(f'pairs must be "all", "subset" or a list of (a, b), got {pairs!r}')
    out = []
    for p in pairs:
        if (not isinstance(p, (tuple, list)) or len(p) != 2
                or not all(isinstance(x, (int, np.integer)) and 0 <= x <= 9 for x in p) or p[0] == p[1]):
            raise ValueError(f"pairs must hold (a, b) with a ≠ b digits 0–9, got {p!r}")
        out.append((int(p[0]), int(p[1])))
    return out


def _pos_int(x, name):
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    if x < 1:
        raise ValueError(f"{name} must be >= 1, got {x}")
    return x


def run_batch(grams: DigitGrams, pairs, method: str = "ours", *, steps: int = 100, seed: int = 0,
              sup: str = "a_vs_b", eta: float | None = None, balance: float = 1e-5, rho: float = 0.9,
              delta: float = 0.01, mu: float = 1.0, inner_steps: int = 10, tol: float = 1e-9,
              max_iter: int = 30, block: int = 6, theta0=None):
    """Run ``method`` on a batch of pairs at once; returns (θ (B, D, D), ω (B, D), batch, fallbacks).

    The knobs are those of :func:`immulib.immunize.immunize` (θ_0 = I, ω_0 ~ N(0, I/D) from
    ``seed``, the same for every pair, like one call per pair with that seed). ``tol``,
    ``max_iter`` and ``block`` steer the warm-started eigensolvers.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if sup not in ("a_vs_b", "P"):
        raise ValueError(f'sup must be "a_vs_b" or "P", got {sup!r}')
    _pos_int(steps, "steps")
    dev = grams.K.device
    parts = [grams.pair(a, b, seed) for a, b in pairs]
    KP, KH, sP, sH = (torch.stack([p[i] for p in parts]) for i in range(4))
    N = torch.tensor([p[4] for p in parts], dtype=torch.float64, device=dev)
    batch = _Batch(KP, KH, sP, sH, N, sup)
    batch.c_H = -sH  # X_Hᵀy_H with y_H = −1
    D = KP.shape[-1]
    if eta is None:
        eta = 1e-3 if method in ("ours", "r_ill_only") else 5e-3
    if method in ("ours", "r_ill_only"):
        stepper = _OursStepper(batch, method, eta, balance, rho, delta, tol, max_iter, min(block, D))
    else:
        stepper = _AutogradStepper(batch, method, eta, mu, inner_steps)
    gen = torch.Generator().manual_seed(seed)
    omega = (torch.randn(D, generator=gen, dtype=torch.float64) / math.sqrt(D)).to(dev)
    omega = omega.expand(len(pairs), D).clone()
    if theta0 is None:
        theta = torch.eye(D, dtype=torch.float64, device=dev).expand(len(pairs), D, D).clone()
    else:
        theta = torch.as_tensor(theta0, dtype=torch.float64, device=dev).expand(len(pairs), D, D).clone()
    with torch.no_grad() if method in ("ours", "r_ill_only") else torch.enable_grad():
        for _ in range(steps):
            theta, omega = stepper.step(theta, omega)
    return theta.detach(), omega.detach(), batch, stepper.fallbacks


def sweep(method: str = "ours", setup: str = "well_posed", *, pairs="all", steps: int | None = None,
          seed: int = 0, batch_size: int = 10, data: ImageSet | None = None,
          grams: DigitGrams | None = None, device: str | torch.device = "cpu", sup: str = "a_vs_b",
          num_threads: int | None = 1, progress: bool = True, **kw) -> pd.DataFrame:
    """Immunize every pair with ``method`` in ``setup`` and score it; one tidy row per pair and κ convention.

    Parameters
    ----------
    method
        ``"ours"``, ``"r_ill_only"``, ``"imma"`` or ``"opt_kappa"`` (see :func:`run_batch`).
    setup
        ``"well_posed"`` (pixel support of :func:`pixel_support`, scored with ``"pinv"``) or
        ``"authors"`` (all 784 pixels, scored with ``"shifted"`` and ``"pinv"``).
    pairs
        ``"all"`` (90), ``"subset"`` (:data:`SUBSET`) or a list of (a, b).
    steps
        Full-batch steps (default 100 for every method).
    batch_size
        Pairs run together along a leading dimension.
    data, grams
        MNIST training split (default: :func:`immulib.data.load_mnist`) or precomputed
        :func:`digit_grams` of this setup.
    device
        ``"cpu"`` or ``"cuda"``; the loop runs in torch only.
    num_threads
        torch threads during the sweep (restored afterwards; default 1: batched LAPACK calls
        with several threads stall on a loaded machine); None leaves the setting alone.
    kw
        Passed to :func:`run_batch` (``eta``, ``balance``, ``rho``, ``delta``, ``mu``, ...).

    Returns
    -------
    pandas.DataFrame
        Columns setup, method, convention, a, b, seed, steps, kappa_P0, kappa_H0, kappa_P,
        kappa_H, i, ii, rir, success (RIR > 1 and (ii) ≤ 1), seconds (per pair), fallbacks.
    """
    if setup not in SETUPS:
        raise ValueError(f"setup must be one of {SETUPS}, got {setup!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    pairs = _check_pairs(pairs)
    steps = 100 if steps is None else _pos_int(steps, "steps")
    _pos_int(batch_size, "batch_size")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {type(progress).__name__}")
    if grams is None:
        if data is None:
            from .data import load_mnist

            data = load_mnist("train")
        grams = digit_grams(data, setup, device=device)
    elif not isinstance(grams, DigitGrams) or grams.setup != setup:
        raise ValueError(f"grams must be the DigitGrams of setup {setup!r}")
    conventions = ("pinv",) if setup == "well_posed" else ("shifted", "pinv")
    old = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    rows = []
    try:
        bar = tqdm(total=len(pairs), disable=not progress, desc=f"{method} ({setup})", leave=False)
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            t0 = time.perf_counter()
            theta, _, b, fallbacks = run_batch(grams, chunk, method, steps=steps, seed=seed, sup=sup, **kw)
            if b.KP.is_cuda:
                torch.cuda.synchronize()
            sec = (time.perf_counter() - t0) / len(chunk)
            HP = theta.mT @ b.KP @ theta
            HH = theta.mT @ b.KH @ theta
            kap = {name: _kappas((H + H.mT) / 2) for name, H in
                   (("P0", b.KP), ("H0", b.KH), ("P", HP), ("H", HH))}
            for j, (a, bb) in enumerate(chunk):
                for conv in conventions:
                    k = {name: float(v[conv][j]) for name, v in kap.items()}
                    i, ii = k["H"] / k["H0"], k["P"] / k["P0"]
                    rows.append(dict(setup=setup, method=method, convention=conv, a=a, b=bb, seed=seed,
                                     steps=steps, kappa_P0=k["P0"], kappa_H0=k["H0"], kappa_P=k["P"],
                                     kappa_H=k["H"], i=i, ii=ii, rir=i / ii, success=bool(i / ii > 1 and ii <= 1),
                                     seconds=sec, fallbacks=fallbacks / len(chunk)))
            bar.update(len(chunk))
        bar.close()
    finally:
        torch.set_num_threads(old)
    return pd.DataFrame(rows)
