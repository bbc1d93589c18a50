"""The best a linear immunizer can do: the generalized condition number and its closed-form optimum.

For an invertible extractor θ the two probe Hessians H_P(θ) = θᵀK_Pθ and H_H(θ) = θᵀK_Hθ (Eq. (9))
are congruent to K_P and K_H through the *same* θ. With C = K_P^{-1/2} K_H K_P^{-1/2} (whose
eigenvalues are the generalized eigenvalues μ of K_H v = μ K_P v) and M = K_P^{1/2}θ,

    H_P = MᵀM,   H_H = MᵀCM,   so   κ(H_H)/κ(H_P) ≤ κ(C) = κ(K_P⁻¹K_H),

with equality at θ* = K_P^{-1/2}Q for any orthogonal Q (then H_P = I). The relative immunization
ratio (Eq. (15)) is therefore capped by κ(K_P⁻¹K_H)·κ(K_P)/κ(K_H), and whitening D_P reaches the
cap in closed form. Under the pseudo-inverse convention of Eq. (1) and singular Gram matrices, the
cap is finite only when every direction D_P cannot see is also invisible to D_H
(null(K_P) ⊆ null(K_H)); otherwise κ(H_H) can be made arbitrarily large at no cost to H_P.

Since RIR = (i)/(ii) with (i) = κ(H_H(θ))/κ(K_H) and (ii) = κ(H_P(θ))/κ(K_P), the same bound reads
(i) ≤ C·(ii) with C the ceiling: an extractor can raise (i) only by raising (ii) too. Whitening
reaches RIR = C at the smallest (ii), 1/κ(K_P), so it *lowers* (i) whenever C < κ(K_P): it is
RIR-optimal but not protective. :func:`frontier_theta` gives the whole family on the line
(i) = C·(ii): θ_c = W·diag(s_c), with W the generalized eigenvectors of (K_H, K_P) and s_c² spread
geometrically over [1, c] in the order of the generalized eigenvalues, has (ii) = c/κ(K_P) and
(i) = c·C/κ(K_P); at c = κ(K_P) it has (ii) = 1 and (i) = C, the largest (i) that any extractor
can have under Definition 3.1 (b).

Derived in the chapter "The best a linear immunizer can do" (``book/08_optimal_immunizer.md``);
the two-sided bound is in "Linear probing and its Hessian" (``book/03_probe_hessian.md``).
"""

from __future__ import annotations

import math

import torch

from ._validate import number
from .linalg import (
    CONVENTIONS,
    SHIFT,
    as_float64,
    check_symmetric,
    condition_number,
    probe_hessian,
    rank_tolerance,
)
from .regularizers import PSD_RTOL

__all__ = [
    "frontier_theta",
    "generalized_eigenvalues",
    "generalized_eigh",
    "generalized_spread",
    "kappa_ratio",
    "nested_null_spaces",
    "optimal_theta",
    "rir_ceiling",
    "whitening_theta",
]

#: Q counts as orthogonal when max |QᵀQ − I| <= ORTHO_TOL.
ORTHO_TOL = 1e-8


def _gram(K, name: str) -> torch.Tensor:
    """K as a float64 symmetric positive semi-definite square matrix, detached."""
    t = as_float64(K, name, ndim=2).detach()
    if t.shape[0] != t.shape[1]:
        raise ValueError(f"{name} must be square, got shape {tuple(t.shape)}")
    check_symmetric(t, name)
    t = (t + t.T) / 2
    lam = torch.linalg.eigvalsh(t)
    if not bool(lam[-1] > 0):
        raise ValueError(
            f"{name} must have a positive eigenvalue (it is zero or negative semi-definite)"
        )
    if bool(lam[0] < -PSD_RTOL * lam[-1]):
        raise ValueError(
            f"{name} must be positive semi-definite; its smallest eigenvalue is {float(lam[0]):.3g}"
        )
    return t


def _pair(KP, KH) -> tuple[torch.Tensor, torch.Tensor]:
    KP, KH = _gram(KP, "KP"), _gram(KH, "KH")
    if KP.shape != KH.shape:
        raise ValueError(
            f"KP and KH must have the same shape, got {tuple(KP.shape)} and {tuple(KH.shape)}"
        )
    return KP, KH


def _split(
    K: torch.Tensor, rank_tol: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eigenvalues above the rank tolerance, an orthonormal basis of the range and one of the null space."""
    lam, V = torch.linalg.eigh(K)
    keep = lam.abs() > rank_tolerance(
        lam.abs(), tuple(K.shape), rank_tol
    )  # |λ|: as numerical_rank's σ
    return lam[keep].abs(), V[:, keep], V[:, ~keep]


def nested_null_spaces(KP, KH, *, rank_tol: float | None = None) -> bool:
    """Whether null(K_P) ⊆ null(K_H) at the rank tolerance: D_H sees no direction D_P cannot see.

    ``rank_tol`` is :func:`immulib.linalg.rank_tolerance`'s: ``None`` is numpy's ``matrix_rank``
    rule, a number an absolute tolerance on the eigenvalues. A null direction v of K_P counts as
    null for K_H when vᵀK_Hv is below the same rule applied to K_H.

    Chapter: {ref}`ch-optimal`.
    """
    KP, KH = _pair(KP, KH)
    _, _, NP = _split(KP, rank_tol)
    if NP.shape[1] == 0:
        return True
    seen = torch.linalg.eigvalsh(NP.T @ KH @ NP)
    tol_H = rank_tolerance(torch.linalg.eigvalsh(KH).abs(), tuple(KH.shape), rank_tol)
    return bool(seen.max() <= tol_H)


def generalized_eigenvalues(KP, KH, *, rank_tol: float | None = None) -> torch.Tensor:
    """Eigenvalues μ of K_H v = μ K_P v on the range of K_P, ascending, float64.

    They are the eigenvalues of C = K_P^{+1/2} K_H K_P^{+1/2} restricted to range(K_P) (K_P^{+1/2}:
    the pseudo-inverse square root; the range is decided by ``rank_tol`` as in
    :func:`nested_null_spaces`). For an invertible K_P they are the eigenvalues of K_P⁻¹K_H.

    Chapter: {ref}`ch-optimal`.
    """
    KP, KH = _pair(KP, KH)
    lam, U, _ = _split(KP, rank_tol)
    W = U / lam.sqrt()  # K_P^{+1/2} restricted to its range, n × r
    C = W.T @ KH @ W
    return torch.linalg.eigvalsh((C + C.T) / 2)


def generalized_spread(KP, KH, *, rank_tol: float | None = None) -> float:
    """κ(K_P⁻¹K_H): the largest over the smallest nonzero generalized eigenvalue of (K_H, K_P).

    The supremum of κ(θᵀK_Hθ)/κ(θᵀK_Pθ) over invertible θ (pseudo-inverse κ, Eq. (1)). Returns
    ``math.inf`` when null(K_P) ⊄ null(K_H) (:func:`nested_null_spaces`), where that supremum is
    unbounded. "Nonzero" uses numpy's rule on the μ (max μ · r · eps). Chapter: "The best a
    linear immunizer can do".

    Chapter: {ref}`ch-optimal`.
    """
    if not nested_null_spaces(KP, KH, rank_tol=rank_tol):
        return math.inf
    mu = generalized_eigenvalues(KP, KH, rank_tol=rank_tol)
    mu = mu[mu > rank_tolerance(mu.abs(), (len(mu), len(mu)), None)]
    return float(mu.max() / mu.min())


def optimal_theta(KP, Q=None, *, rank_tol: float | None = None) -> torch.Tensor:
    """θ* = K_P^{-1/2}Q, the closed-form immunizer that whitens D_P: θ*ᵀK_Pθ* = QᵀQ = I.

    Chapter: {ref}`ch-optimal`.

    Parameters
    ----------
    KP
        The Gram matrix K_P = X_PᵀX_P (symmetric PSD, n × n).
    Q
        An orthogonal n × n matrix (default I). Every orthogonal Q gives the same κ(H_P) = 1 and
        κ(H_H) = κ(K_P⁻¹K_H); Q only rotates the features.
    rank_tol
        For a singular K_P: K_P^{-1/2} is taken on its range (decided by ``rank_tol``, see
        :func:`nested_null_spaces`) and the identity on its null space, so θ* stays invertible and
        θ*ᵀK_Pθ* is the projector onto range(K_P) (up to Q).

    Returns
    -------
    torch.Tensor
        The invertible n × n float64 matrix θ*. Chapter: "The best a linear immunizer can do".
    """
    KP = _gram(KP, "KP")
    n = KP.shape[0]
    if Q is None:
        Q = torch.eye(n, dtype=torch.float64)
    else:
        Q = as_float64(Q, "Q", ndim=2).detach()
        if Q.shape != (n, n):
            raise ValueError(f"Q must be {n} × {n} to match KP, got {tuple(Q.shape)}")
        err = float((Q.T @ Q - torch.eye(n, dtype=torch.float64)).abs().max())
        if err > ORTHO_TOL:
            raise ValueError(
                f"Q must be orthogonal (max |QᵀQ − I| = {err:.2g} > {ORTHO_TOL:g})"
            )
    lam, U, N = _split(KP, rank_tol)
    return (U / lam.sqrt()) @ U.T @ Q + N @ N.T @ Q


def kappa_ratio(theta, KP, KH, *, convention: str = "pinv") -> float:
    """κ(θᵀK_Hθ)/κ(θᵀK_Pθ), the quantity the generalized spread bounds (κ from :mod:`immulib.linalg`).

    Chapter: {ref}`ch-optimal`.
    """
    return condition_number(
        probe_hessian(theta, KH), convention=convention
    ) / condition_number(probe_hessian(theta, KP), convention=convention)


def rir_ceiling(
    KP, KH, *, convention: str = "pinv", rank_tol: float | None = None
) -> float:
    """The largest relative immunization ratio (Eq. (15)) any invertible θ can reach.

    RIR(θ) = [κ(H_H(θ))/κ(H_P(θ))]·κ(K_P)/κ(K_H) ≤ κ(K_P⁻¹K_H)·κ(K_P)/κ(K_H), with equality at
    :func:`optimal_theta`; κ(K_P⁻¹K_H) here is the spread μ_max/μ_min of the generalized
    eigenvalues of (K_H, K_P), not Eq. (1)'s ratio of singular values of the non-symmetric
    product (which can be larger).

    Chapter: {ref}`ch-optimal`.

    Parameters
    ----------
    KP, KH
        The Gram matrices of D_P and D_H (symmetric PSD, same shape).
    convention
        ``"pinv"`` (default): κ over the nonzero spectrum (Eq. (1)) with ``rank_tol``; the ceiling is
        ``math.inf`` when null(K_P) ⊄ null(K_H). ``"shifted"``: the ceiling of the pencil
        (K_P + 10⁻⁶I, K_H + 10⁻⁶I), i.e. the authors' 10⁻⁶ ridge moved onto the Gram matrices, so
        that every direction counts; it is always finite. Chapter: "The best a linear immunizer
        can do".
    rank_tol
        Only for ``"pinv"``: see :func:`nested_null_spaces`.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    KP, KH = _pair(KP, KH)
    if convention == "shifted":
        if rank_tol is not None:
            raise ValueError('rank_tol applies only to convention="pinv"')
        eye = SHIFT * torch.eye(KP.shape[0], dtype=torch.float64)
        KP, KH = KP + eye, KH + eye
    spread = generalized_spread(KP, KH, rank_tol=rank_tol)
    if math.isinf(spread):
        return math.inf
    return (
        spread
        * condition_number(KP, rank_tol=rank_tol)
        / condition_number(KH, rank_tol=rank_tol)
    )


#: :func:`optimal_theta` under the name of what it does (whitening D_P).
whitening_theta = optimal_theta


def _positive_definite(K: torch.Tensor, name: str, rank_tol: float | None) -> None:
    lam = torch.linalg.eigvalsh(K)
    if not bool(lam[0] > rank_tolerance(lam.abs(), tuple(K.shape), rank_tol)):
        raise ValueError(
            f"{name} must be positive definite (smallest eigenvalue {float(lam[0]):.3g} is at or below "
            "the rank tolerance); the frontier is defined for well-posed problems only (e.g. the "
            'House Prices setup="well_posed"), for singular Gram matrices see rir_ceiling'
        )


def generalized_eigh(
    KP, KH, *, rank_tol: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, W) with K_H W = K_P W diag(μ), WᵀK_PW = I and WᵀK_HW = diag(μ), μ ascending, float64.

    Both Gram matrices must be positive definite (smallest eigenvalue above ``rank_tol``'s rule,
    see :func:`nested_null_spaces`). Computed through the Cholesky factor K_P = LLᵀ: the
    eigenvectors V of L⁻¹K_HL⁻ᵀ give W = L⁻ᵀV. Chapter: "The best a linear immunizer can do".

    Chapter: {ref}`ch-optimal`.
    """
    KP, KH = _pair(KP, KH)
    _positive_definite(KP, "KP", rank_tol)
    _positive_definite(KH, "KH", rank_tol)
    L = torch.linalg.cholesky(KP)
    A = torch.linalg.solve_triangular(L, KH, upper=False)  # L⁻¹K_H
    C = torch.linalg.solve_triangular(L, A.T, upper=False)  # L⁻¹K_HL⁻ᵀ (K_H symmetric)
    mu, V = torch.linalg.eigh((C + C.T) / 2)
    W = torch.linalg.solve_triangular(L.T, V, upper=True)
    return mu, W


def frontier_theta(KP, KH, c: float, *, rank_tol: float | None = None) -> torch.Tensor:
    """θ_c = W·diag(s_c), an extractor on the frontier (i) = C·(ii) with κ(θ_cᵀK_Pθ_c) = c.

    W and μ are :func:`generalized_eigh`'s (WᵀK_PW = I, WᵀK_HW = diag(μ), μ ascending) and
    s_j² = c^{j/(n−1)}, j = 0 … n−1: geometric over [1, c], increasing with μ. Then
    H_P(θ_c) = diag(s²) and H_H(θ_c) = diag(s²μ), so κ(H_P) = c and κ(H_H) = c·μ_max/μ_min
    (both s² and μ increase with j, so the extremes of s²μ sit at j = 0 and j = n − 1), i.e.

        (ii) = c/κ(K_P),   (i) = C·(ii),   RIR = C (:func:`rir_ceiling`)

    for every c ≥ 1. c = 1 is a whitening of D_P (θ_1 = K_P^{-1/2}Q for an orthogonal Q);
    c = κ(K_P) gives (ii) = 1 and (i) = C, the largest (i) any extractor can have with
    (ii) ≤ 1 (Definition 3.1 (b)). θ_c is invertible, so the D_P optimum is kept (Definition 3.1 (c)).

    Chapter: {ref}`ch-optimal`.

    Parameters
    ----------
    KP, KH
        Positive definite Gram matrices of D_P and D_H (n × n). Singular ones raise a
        ``ValueError``: use a well-posed setup.
    c
        The condition number κ(H_P(θ_c)) to give D_P, a number ≥ 1.
    rank_tol
        The tolerance below which an eigenvalue counts as zero (:func:`nested_null_spaces`).

    Chapter: "The best a linear immunizer can do" (``book/08_optimal_immunizer.md``).
    """
    c = number(c, "c", minimum=1.0)
    mu, W = generalized_eigh(KP, KH, rank_tol=rank_tol)
    n = len(mu)
    frac = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    return W * (c ** (frac / 2))
