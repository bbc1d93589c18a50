"""The condition-number regularizers R_ill (Eq. (12)) and R_well (Eq. (3)), with closed-form gradients.

Both act on a symmetric positive semi-definite matrix S (in the paper, the probe Hessian
H(θ) = θᵀKθ), whose singular values σ₁ ≥ … ≥ σ_k > 0 are its nonzero eigenvalues:

* R_ill(S) = 1 / g(S),  g(S) = ‖S‖_F² / (2k) − σ_k² / 2,   k = rank(S)   (Eq. (12), κ-maximising);
* R_well(S) = σ₁² / 2 − ‖S‖_F² / (2p),   p = dimension of S             (Eq. (3), κ-minimising).

Their gradients are ∇R_ill = (σ_k v_k v_kᵀ − S/k) / g² (Eq. (13)) and ∇R_well = σ₁ v₁ v₁ᵀ − S/p.
Through H = θᵀKθ the chain rule gives ∇_θ R(H) = 2Kθ G with G = ∇_H R (Theorem 4.2), so the
K⁻¹-preconditioned step of Algorithm 1 is θ' = θ(I − 2ηG) (Theorem 4.3) and K⁻¹ is never formed.

Derived and checked in the chapter "Regularizers for ill- and well-conditioning"
(``book/04_regularizers.md``); the probe Hessian is derived in "Linear probing and its Hessian"
(``book/03_probe_hessian.md``).
"""

from __future__ import annotations

import math
import warnings

import torch

from ._validate import as_float64, integer, positive
from .linalg import (
    check_symmetric,
    numerical_rank,
    pow2_exponent,
    probe_hessian,
    scaled_by_pow2,
    unscale,
)

__all__ = [
    "PSD_RTOL",
    "UNIQUE_RTOL",
    "NonUniqueSingularValueWarning",
    "g_ill",
    "g_well",
    "grad_theta_r_ill",
    "grad_theta_r_well",
    "max_step_r_ill",
    "preconditioned_step",
    "r_ill",
    "r_well",
    "safe_step_r_well",
]

#: σ_i and σ_j count as equal when |σ_i − σ_j| <= UNIQUE_RTOL · σ₁ (eigh's rounding is ~ eps · σ₁).
UNIQUE_RTOL = 1e-10

#: S counts as positive semi-definite when its smallest eigenvalue is >= −PSD_RTOL · σ₁.
PSD_RTOL = 1e-8


class NonUniqueSingularValueWarning(UserWarning):
    """The extreme singular value a regularizer differentiates is not unique (up to UNIQUE_RTOL).

    There the regularizer is not differentiable; the functions of this module then return one
    element of its (Clarke) subdifferential, built from the eigenvector ``torch.linalg.eigh`` returns.

    Chapter: {ref}`ch-regularizers`.
    """


# ---------------------------------------------------------------------------------------------
# argument checks and the spectrum


def _psd(S, name: str) -> torch.Tensor:
    t = as_float64(S, name, ndim=2)
    if t.shape[0] != t.shape[1]:
        raise ValueError(f"{name} must be square, got shape {tuple(t.shape)}")
    check_symmetric(t, name)
    if not bool(t.detach().abs().max() > 0):
        raise ValueError(f"{name} is all zeros: it has no nonzero singular value")
    return t


def _check_k(k, n: int, S: torch.Tensor, lam: torch.Tensor | None = None) -> int:
    """Validate ``k``; ``None`` means the numerical rank (from the eigenvalues ``lam`` if given)."""
    if k is None:
        k = (
            numerical_rank(S.detach())
            if lam is None
            else _rank_from_eigenvalues(lam, n)
        )
    else:
        k = integer(k, "k")
    if not 2 <= k <= n:
        raise ValueError(
            f"k must satisfy 2 <= k <= {n} (R_ill needs at least two nonzero singular values), got {k}"
        )
    return k


def _rank_from_eigenvalues(lam: torch.Tensor, n: int) -> int:
    """numpy's matrix_rank rule on a symmetric matrix's eigenvalues (|λ| are its singular values)."""
    sigma = lam.abs()
    return int((sigma > float(sigma.max()) * n * torch.finfo(torch.float64).eps).sum())


def _spectrum(
    S: torch.Tensor, name: str, check: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors (as columns) of the symmetrised S, detached.

    ``check=False`` (used inside the autograd Functions, whose inputs the public wrappers have
    already checked) skips the PSD check, so finite differences may step slightly outside the cone.
    """
    Sd = S.detach()
    e = pow2_exponent(
        Sd
    )  # eigh of S / 2^e, eigenvalues scaled back exactly: any scale works
    lam, V = torch.linalg.eigh(scaled_by_pow2((Sd + Sd.T) / 2, -e))
    lam, V = scaled_by_pow2(lam.flip(-1), e), V.flip(-1)
    if check and bool(lam[-1] < -PSD_RTOL * lam[0]):
        raise ValueError(
            f"{name} must be positive semi-definite; its smallest eigenvalue is "
            f"{float(lam[-1]):.3g} (largest {float(lam[0]):.3g})"
        )
    return lam, V


def _warn_if_tied(lam: torch.Tensor, i: int, what: str) -> None:
    """Warn if the i-th (0-based, descending) eigenvalue is tied with a neighbour."""
    tol = UNIQUE_RTOL * float(lam[0])
    gaps = [float(lam[i - 1] - lam[i])] if i > 0 else []
    if i + 1 < lam.numel():
        gaps.append(float(lam[i] - lam[i + 1]))
    if gaps and min(gaps) <= tol:
        warnings.warn(
            f"{what} is not unique (gap {min(gaps):.3g} <= {UNIQUE_RTOL:g}·σ₁): the regularizer "
            "is not differentiable here; using the subgradient built from torch.linalg.eigh's "
            "eigenvector",
            NonUniqueSingularValueWarning,
            stacklevel=4,
        )


def _ill_parts(
    S: torch.Tensor, k: int, check: bool = True, spectrum=None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(g_s, G_s, e): g = g_s·2^{2e} = ‖S‖_F²/(2k) − σ_k²/2 and G = G_s·2^{-3e} = ∇R_ill(S).

    Everything is computed on S/2^e (e: the binary exponent of max|S|), so that the squares
    neither overflow nor underflow at any scale of S. ``spectrum``: S's (eigenvalues,
    eigenvectors) from :func:`_spectrum`, if already computed.
    """
    lam, V = spectrum if spectrum is not None else _spectrum(S, "S", check)
    _warn_if_tied(lam, k - 1, f"σ_min = σ_{k} (the k-th singular value)")
    e = pow2_exponent(S)
    Sd = scaled_by_pow2((S.detach() + S.detach().T) / 2, -e)
    sk, vk = scaled_by_pow2(lam[k - 1], -e), V[:, k - 1]
    g = (Sd * Sd).sum() / (2 * k) - sk**2 / 2
    if not bool(g > 0):
        raise ValueError(
            "R_ill(S) is infinite: the k largest singular values of S are all equal (κ = 1), "
            "so the denominator of Eq. (12) is zero"
        )
    G = (sk * torch.outer(vk, vk) - Sd / k) / g**2
    return g, (G + G.T) / 2, e


def _well_parts(
    S: torch.Tensor, check: bool = True, spectrum=None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(v_s, G_s, e): R_well(S) = v_s·2^{2e} and ∇R_well(S) = σ₁ v₁ v₁ᵀ − S/p = G_s·2^e.

    Computed on S/2^e as in :func:`_ill_parts`.
    """
    lam, V = spectrum if spectrum is not None else _spectrum(S, "S", check)
    _warn_if_tied(lam, 0, "σ_max = σ₁")
    e = pow2_exponent(S)
    Sd = scaled_by_pow2((S.detach() + S.detach().T) / 2, -e)
    s1 = scaled_by_pow2(lam[0], -e)
    p = S.shape[0]
    value = s1**2 / 2 - (Sd * Sd).sum() / (2 * p)
    G = s1 * torch.outer(V[:, 0], V[:, 0]) - Sd / p
    return value, (G + G.T) / 2, e


#: A scaled R_well at most this (times σ₁²) is the rounding noise of an exact zero.
_WELL_NOISE = 64 * torch.finfo(torch.float64).eps


def _r_ill_value(g_s: torch.Tensor, e: int) -> torch.Tensor:
    return unscale(1.0 / g_s, -2 * e, "R_ill(S)")


def _r_well_value(v_s: torch.Tensor, e: int) -> torch.Tensor:
    return unscale(v_s, 2 * e, "R_well(S)", noise=_WELL_NOISE)


# ---------------------------------------------------------------------------------------------
# the regularizers as autograd Functions


class _RIll(torch.autograd.Function):
    """R_ill((S + Sᵀ)/2) with the closed-form backward of Eq. (13)."""

    @staticmethod
    def forward(ctx, S: torch.Tensor, k: int, lam=None, V=None) -> torch.Tensor:
        g, G, e = _ill_parts(
            S, k, check=False, spectrum=None if lam is None else (lam, V)
        )
        ctx.save_for_backward(G)
        ctx.e = e
        return _r_ill_value(g, e)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        (G,) = ctx.saved_tensors
        return (
            grad_out * unscale(G, -3 * ctx.e, "the gradient of R_ill(S)"),
            None,
            None,
            None,
        )


class _RWell(torch.autograd.Function):
    """R_well((S + Sᵀ)/2) with the closed-form backward σ₁ v₁ v₁ᵀ − S/p."""

    @staticmethod
    def forward(ctx, S: torch.Tensor, lam=None, V=None) -> torch.Tensor:
        value, G, e = _well_parts(
            S, check=False, spectrum=None if lam is None else (lam, V)
        )
        ctx.save_for_backward(G)
        ctx.e = e
        return _r_well_value(value, e)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        (G,) = ctx.saved_tensors
        return (
            grad_out
            * unscale(G, ctx.e, "the gradient of R_well(S)", noise=_WELL_NOISE),
            None,
            None,
        )


def r_ill(S, *, k: int | None = None) -> torch.Tensor:
    """R_ill(S) = 1 / (‖S‖_F²/(2k) − σ_k²/2), the κ-maximising regularizer (Eq. (12), Theorem 4.1).

    Chapter: {ref}`ch-regularizers`.

    Parameters
    ----------
    S
        Symmetric positive semi-definite matrix (torch tensor or numpy array, converted to
        float64). Gradients flow back to ``S`` if it requires them.
    k
        The rank of S, as the paper defines it: σ_k is the smallest *nonzero* singular value.
        ``None`` (default) uses :func:`immulib.linalg.numerical_rank` (numpy's ``matrix_rank``
        rule). The authors' released code uses the last dimension of its *input* batch and
        σ_min = 10⁻⁶ on a mini-batch (book chapter "The paper and its released code", item 13).

    Returns
    -------
    torch.Tensor
        A float64 scalar. Its backward is the closed form of Eq. (13),
        (σ_k v_k v_kᵀ − S/k) / g², not autograd through ``eigh``.

    Warns
    -----
    NonUniqueSingularValueWarning
        If σ_k is tied with a neighbour (within ``UNIQUE_RTOL``·σ₁). R_ill is then not
        differentiable and the backward uses σ_k v vᵀ with v the eigenvector ``torch.linalg.eigh``
        returns for that eigenvalue, one element of the subdifferential.

    Raises
    ------
    TypeError, ValueError
        For a non-square, non-symmetric, non-PSD, non-finite or all-zero S, for k not an int
        with 2 <= k <= n, and when all k singular values are equal (κ = 1, R_ill infinite).

    Notes
    -----
    Derived in the chapter "Regularizers for ill- and well-conditioning".
    """
    S = _psd(S, "S")
    lam, V = _spectrum(S, "S")  # one eigendecomposition: PSD check, rank, σ_k and v_k
    return _RIll.apply(S, _check_k(k, S.shape[0], S, lam), lam, V)


def r_well(S) -> torch.Tensor:
    """R_well(S) = σ₁²/2 − ‖S‖_F²/(2p), the κ-minimising regularizer of Nenov et al. (Eq. (3)).

    Chapter: {ref}`ch-regularizers`.

    Parameters
    ----------
    S
        Symmetric positive semi-definite p × p matrix, converted to float64. ``p`` is the
        dimension of S (the paper's "minimum dimension"), not its rank.

    Returns
    -------
    torch.Tensor
        A float64 scalar, nonnegative, zero iff all p singular values are equal. Its backward is
        the closed form σ₁ v₁ v₁ᵀ − S/p (Theorem A.1 (3) as reconstructed in the chapter).

    Warns
    -----
    NonUniqueSingularValueWarning
        If σ₁ is tied with σ₂ (within ``UNIQUE_RTOL``·σ₁); the backward then uses the top
        eigenvector ``torch.linalg.eigh`` returns, one element of the subdifferential of σ₁.

    Raises
    ------
    TypeError, ValueError
        For a non-square, non-symmetric, non-PSD, non-finite or all-zero S.

    Notes
    -----
    Derived in the chapter "Regularizers for ill- and well-conditioning".
    """
    S = _psd(S, "S")
    return _RWell.apply(
        S, *_spectrum(S, "S")
    )  # one eigendecomposition, also the PSD check


# ---------------------------------------------------------------------------------------------
# Theorem 4.2 (θ-gradients) and Theorem 4.3 (the preconditioned step)


def g_ill(H, *, k: int | None = None) -> torch.Tensor:
    """G_ill = ∇_H R_ill(H) = (σ_k v_k v_kᵀ − H/k) / g² (Eq. (13)), detached, float64.

    With H = θᵀKθ, ∇_θ R_ill(H) = 2KθG_ill and K⁻¹∇_θ R_ill(H) = 2θG_ill (Theorems 4.2–4.3).
    ``k`` and the warning on a tied σ_k are as in :func:`r_ill`. Chapter: "Regularizers for
    ill- and well-conditioning".

    Chapter: {ref}`ch-regularizers`.
    """
    H = _psd(H, "H")
    spectrum = _spectrum(H, "H")
    _, G, e = _ill_parts(H, _check_k(k, H.shape[0], H, spectrum[0]), spectrum=spectrum)
    return unscale(G, -3 * e, "G_ill")


def g_well(H) -> torch.Tensor:
    """G_well = ∇_H R_well(H) = σ₁ v₁ v₁ᵀ − H/p (p = dimension of H), detached, float64.

    With H = θᵀKθ, ∇_θ R_well(H) = 2KθG_well and K⁻¹∇_θ R_well(H) = 2θG_well (Theorems 4.2–4.3).
    Warns as :func:`r_well` on a tied σ₁. Chapter: "Regularizers for ill- and well-conditioning".

    Chapter: {ref}`ch-regularizers`.
    """
    _, G, e = _well_parts(_psd(H, "H"))
    return unscale(G, e, "G_well", noise=_WELL_NOISE)


def _theta_K(theta, K) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    H = probe_hessian(theta, K).detach()
    return as_float64(theta, "theta").detach(), as_float64(K, "K").detach(), H


def grad_theta_r_ill(theta, K, *, k: int | None = None) -> torch.Tensor:
    """∇_θ R_ill(θᵀKθ) = 2Kθ(σ_k v_k v_kᵀ − θᵀKθ/k) / g² (Theorem 4.2 (2)), float64.

    ``theta`` is D_in × D_hid, ``K`` the symmetric PSD D_in × D_in Gram matrix, ``k`` the rank of
    θᵀKθ (default: its numerical rank). Chapter: "Regularizers for ill- and well-conditioning".

    Chapter: {ref}`ch-regularizers`.
    """
    theta, K, H = _theta_K(theta, K)
    return 2 * K @ theta @ g_ill(H, k=k)


def grad_theta_r_well(theta, K) -> torch.Tensor:
    """∇_θ R_well(θᵀKθ) = 2Kθ(σ₁ v₁ v₁ᵀ − θᵀKθ/p) (Theorem 4.2 (1), p = D_hid), float64.

    Chapter: "Regularizers for ill- and well-conditioning".

    Chapter: {ref}`ch-regularizers`.
    """
    theta, K, H = _theta_K(theta, K)
    return 2 * K @ theta @ g_well(H)


def preconditioned_step(theta, G, eta: float) -> torch.Tensor:
    """θ' = θ − η K⁻¹∇_θR(θᵀKθ) = θ(I − 2ηG), the preconditioned update of Theorem 4.3.

    ``G`` is :func:`g_ill` or :func:`g_well` of H = θᵀKθ (D_hid × D_hid, symmetric) and ``eta`` a
    positive step size. Because K⁻¹·2KθG = 2θG, K is never inverted. Chapter: "Regularizers for
    ill- and well-conditioning".

    Chapter: {ref}`ch-regularizers`.
    """
    theta = as_float64(theta, "theta", ndim=2)
    G = as_float64(G, "G", ndim=2)
    if G.shape != (theta.shape[1], theta.shape[1]):
        raise ValueError(
            f"G must be {theta.shape[1]} × {theta.shape[1]} to match theta, got {tuple(G.shape)}"
        )
    check_symmetric(G, "G")
    eta = positive(eta, "eta")
    return theta - 2 * eta * theta @ G


def max_step_r_ill(H, *, k: int | None = None) -> float:
    """Step-size bound g² / (2σ_k(1 − 1/k)) for the preconditioned R_ill step (Theorem 4.3 (2)).

    For 0 < η < this bound, θ' = θ(I − 2ηG_ill) maps σ_k to σ_k(1 − c)² with 0 < c < 1 and every
    other nonzero σ_i up, so κ(θ'ᵀKθ') > κ(θᵀKθ) whenever σ_k is unique. The paper's own bound
    is garbled in the available text; this one is derived and checked in the chapter
    "Regularizers for ill- and well-conditioning" (any η below twice the bound also works,
    except exactly at the bound).

    Chapter: {ref}`ch-regularizers`.
    """
    H = _psd(H, "H")
    k = _check_k(k, H.shape[0], H)
    g, _, e = _ill_parts(
        H, k
    )  # g = g_s·2^{2e}, σ_k = sk_s·2^e: the bound is b_s·2^{3e}
    sk = scaled_by_pow2(_spectrum(H, "H")[0][k - 1], -e)
    return float(unscale(g**2 / (2 * sk * (1 - 1 / k)), 3 * e, "the R_ill step bound"))


def safe_step_r_well(H, *, k: int | None = None) -> float:
    """A step-size bound under which the preconditioned R_well step decreases κ (Theorem 4.3 (1)).

    Returns min{ (1 − √(σ_min/σ₁)) / (2σ₁(1 − 1/p)),  p(√(σ₁/σ₂) − 1) / (2σ₂) }, where p is the
    dimension of H and σ_min = σ_k its smallest nonzero singular value (``k``: default the
    numerical rank). For 0 < η < this bound and a unique σ₁, θ' = θ(I − 2ηG_well) gives
    κ(θ'ᵀKθ') < κ(θᵀKθ): σ₁ shrinks but not below σ_min, and no other σ_i grows past σ₁.
    The bound as transcribed from the paper can fail; see the chapter "Regularizers for ill- and
    well-conditioning". Returns 0.0 when κ(H) = 1 (no step can decrease it).

    Chapter: {ref}`ch-regularizers`.
    """
    H = _psd(H, "H")
    p = H.shape[0]
    k = numerical_rank(H) if k is None else _check_k(k, p, H)
    lam = _spectrum(H, "H")[0]
    # rounding can leave a zero eigenvalue slightly negative; the bound treats it as 0
    s1, s2, smin = (
        float(lam[0]),
        float(lam[1]) if p > 1 else 0.0,
        max(float(lam[k - 1]), 0.0),
    )
    if s1 - smin <= UNIQUE_RTOL * s1:
        return 0.0
    first = (1 - math.sqrt(smin / s1)) / (2 * s1 * (1 - 1 / p))
    second = p * (math.sqrt(s1 / s2) - 1) / (2 * s2) if s2 > 0 else math.inf
    return min(first, second)
