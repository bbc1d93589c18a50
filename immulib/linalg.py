"""Condition numbers, numerical rank, Gram matrices and the probe Hessian.

Everything here works in float64: spectra of Gram matrices span many orders of magnitude, and in
float32 the smallest eigenvalues of a matrix with κ ≈ 10⁷ are pure rounding noise.

Derived in the chapter "Condition numbers and gradient descent" (``book/02_condition_numbers.md``);
the probe Hessian θᵀKθ is derived in "Linear probing and its Hessian".
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from ._validate import as_float64, choice, nonneg

__all__ = [
    "CONVENTIONS",
    "SHIFT",
    "as_float64",
    "check_symmetric",
    "condition_number",
    "gram",
    "numerical_rank",
    "pow2_exponent",
    "probe_hessian",
    "rank_tolerance",
    "scaled_by_pow2",
    "singular_values",
    "unscale",
]

Convention = Literal["pinv", "shifted"]
CONVENTIONS: tuple[str, ...] = ("pinv", "shifted")

#: The ridge the authors' released code adds before taking eigenvalues (``"shifted"`` convention).
SHIFT = 1e-6

#: Relative tolerance for "symmetric": max |S - Sᵀ| <= SYM_RTOL * max |S|.
SYM_RTOL = 1e-10


# ---------------------------------------------------------------------------------------------
# extreme scales: work on x / 2^e, whose largest entry is in [0.5, 1), and scale back exactly

#: Binary exponents of float64: a normal number m·2^e has -1021 <= e <= 1024 (frexp convention).
_MIN_EXP, _MAX_EXP = np.finfo(np.float64).minexp + 1, np.finfo(np.float64).maxexp


def pow2_exponent(x) -> int:
    """The binary exponent e with max|x| = f·2^e, 0.5 <= f < 1 (0 for an all-zero x).

    Dividing by 2^e is exact, so spectra computed on x / 2^e and scaled back are the spectra of
    x, without the overflow of squares at 1e200 or their underflow at 1e-200.

    Chapter: {ref}`ch-condition-numbers`.
    """
    m = (
        float(x.detach().abs().max())
        if isinstance(x, torch.Tensor)
        else float(np.max(np.abs(x)))
    )
    return math.frexp(m)[1] if m > 0 else 0


def scaled_by_pow2(x: torch.Tensor, e: int) -> torch.Tensor:
    """x · 2^e computed exactly (in steps, so that 2^e itself never overflows).

    Chapter: {ref}`ch-condition-numbers`.
    """
    while e:
        step = max(-1000, min(1000, e))
        x = x * 2.0**step
        e -= step
    return x


def unscale(
    x_s: torch.Tensor, e: int, what: str, *, noise: float = 0.0
) -> torch.Tensor:
    """x_s · 2^e, or a ``ValueError`` naming ``what`` if that overflows or underflows float64.

    ``noise``: when max|x_s| <= noise the result is rounding noise of a zero and is returned
    (possibly as 0) without the underflow check.

    Chapter: {ref}`ch-condition-numbers`.
    """
    m = float(x_s.detach().abs().max())
    if m > noise:
        _representable(m, e, what, _RESCALE_HINT)
    return scaled_by_pow2(x_s, e)


def _representable(max_abs_scaled: float, e: int, what: str, hint: str) -> None:
    """Raise ValueError unless a result whose largest entry is max_abs_scaled · 2^e is a normal float64."""
    if max_abs_scaled == 0:
        return
    total = math.frexp(max_abs_scaled)[1] + e
    if total > _MAX_EXP:
        raise ValueError(
            f"{what} overflows float64 (its largest entry would be about 2^{total}); {hint}"
        )
    if total < _MIN_EXP:
        raise ValueError(
            f"{what} underflows float64 (its largest entry would be about 2^{total}); {hint}"
        )


_RESCALE_HINT = (
    "rescale the input (e.g. divide it by its largest entry: κ is scale-free)"
)


def _square(S, name: str) -> torch.Tensor:
    t = as_float64(S, name, ndim=2)
    if t.shape[0] != t.shape[1]:
        raise ValueError(f"{name} must be square, got shape {tuple(t.shape)}")
    return t


def check_symmetric(S: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` unless ``S`` is symmetric up to a relative tolerance of 1e-10.

    Chapter: {ref}`ch-condition-numbers`.
    """
    S = S.detach()
    scale = S.abs().max()
    if bool((S - S.T).abs().max() > SYM_RTOL * scale):
        asym = float((S - S.T).abs().max() / scale)
        raise ValueError(
            f"{name} must be symmetric (relative asymmetry {asym:.2e} > {SYM_RTOL:g}); "
            "pass (S + S.T) / 2 if the asymmetry is rounding noise"
        )


def singular_values(S) -> torch.Tensor:
    """Singular values of a real matrix in descending order, float64.

    Chapter: {ref}`ch-condition-numbers`.
    """
    return torch.linalg.svdvals(as_float64(S, "S", ndim=2).detach())


def rank_tolerance(
    sigma: torch.Tensor, shape: tuple[int, int], rank_tol: float | None
) -> float:
    """The cut-off below which a singular value counts as zero.

    ``rank_tol=None`` uses numpy's ``matrix_rank`` rule, σ_max · max(m, n) · eps(float64);
    a number is used as an absolute tolerance.

    Chapter: {ref}`ch-condition-numbers`.
    """
    if rank_tol is None:
        return float(sigma.max()) * max(shape) * float(np.finfo(np.float64).eps)
    return nonneg(rank_tol, "rank_tol")


def _scaled_svdvals(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Singular values of t / 2^e and e (so σ(t) = σ · 2^e), detached."""
    e = pow2_exponent(t)
    return torch.linalg.svdvals(scaled_by_pow2(t.detach(), -e)), e


def _scaled_tolerance(sigma_s: torch.Tensor, e: int, shape, rank_tol) -> float:
    if rank_tol is None:
        return rank_tolerance(
            sigma_s, shape, None
        )  # relative: the same in scaled units
    tol = rank_tolerance(sigma_s, shape, rank_tol)
    return float(scaled_by_pow2(torch.tensor(tol, dtype=torch.float64), -e))


def numerical_rank(S, *, rank_tol: float | None = None) -> int:
    """Number of singular values of ``S`` above the rank tolerance (see :func:`rank_tolerance`).

    Computed on S / 2^e (max entry in [0.5, 1)), so the rank does not depend on S's scale.

    Chapter: {ref}`ch-condition-numbers`.
    """
    t = as_float64(S, "S", ndim=2)
    sigma, e = _scaled_svdvals(t)
    return int((sigma > _scaled_tolerance(sigma, e, tuple(t.shape), rank_tol)).sum())


def condition_number(
    S, *, convention: Convention = "pinv", rank_tol: float | None = None
) -> float:
    """Condition number κ(S) of a square matrix (Eq. (1) of the paper).

    Chapter: {ref}`ch-condition-numbers`.

    Parameters
    ----------
    S
        Square real matrix (torch tensor or numpy array); converted to float64.
    convention
        ``"pinv"`` (default): Eq. (1), κ = ‖S‖₂‖S†‖₂ = σ_max / σ_min, where σ_min is the smallest
        singular value above the rank tolerance, so a rank-deficient S has a finite κ measured
        on its range. ``"shifted"``: the authors' released code. It requires a symmetric S, takes
        the eigenvalues of S + 10⁻⁶·I and divides the largest by the smallest one that exceeds
        10⁻⁶. On a full-rank S whose eigenvalues are all far above 10⁻⁶ both conventions agree;
        on a rank-deficient S they can differ by many orders of magnitude.
    rank_tol
        Only for ``"pinv"``: absolute tolerance for "nonzero". ``None`` uses numpy's
        ``matrix_rank`` rule, σ_max · n · eps.

    Raises
    ------
    ValueError
        For a non-square, empty, non-finite or all-zero S, an unknown convention, a
        non-symmetric S under ``"shifted"``, or a ``rank_tol`` that is not below σ_max.

    Notes
    -----
    Under ``"pinv"`` κ is computed on S / 2^e (e: the binary exponent of max|S|), so it is the
    same for S scaled by 1e-200 or 1e200. The ``"shifted"`` convention is not scale-free by
    definition (its 10⁻⁶ is absolute).
    """
    choice(convention, "convention", CONVENTIONS)
    t = _square(S, "S").detach()
    if not bool(t.abs().max() > 0):
        raise ValueError("S is all zeros: its condition number is undefined")
    if convention == "pinv":
        sigma, e = _scaled_svdvals(t)  # κ is scale-free: compute it on S / 2^e
        kept = sigma[sigma > _scaled_tolerance(sigma, e, tuple(t.shape), rank_tol)]
        if kept.numel() == 0:
            smax = float(scaled_by_pow2(sigma.max(), e))
            raise ValueError(
                f"rank_tol={rank_tol!r} is not below σ_max(S) = {smax:.6g}: every singular value "
                "counts as zero and κ is undefined; pass a smaller rank_tol, or None"
            )
        return float(kept.max() / kept.min())
    if rank_tol is not None:
        raise ValueError('rank_tol applies only to convention="pinv"')
    check_symmetric(t, "S")
    lam = torch.linalg.eigvalsh(
        (t + t.T) / 2 + SHIFT * torch.eye(t.shape[0], dtype=t.dtype)
    )
    kept = lam[lam > SHIFT]
    if kept.numel() == 0:
        raise ValueError("S has no eigenvalue above the 1e-6 shift: κ is undefined")
    return float(lam.max() / kept.min())


def gram(X) -> torch.Tensor:
    """The uncentred Gram matrix K = XᵀX of a data matrix X (rows are samples), float64.

    This is the paper's "covariance" K (Eq. (9)): no mean is subtracted and there is no 1/N.
    It is computed as 2^{2e}·(X/2^e)ᵀ(X/2^e), with 2^e the power of two at max|X|: bit-identical
    to XᵀX whenever that is representable, and a ``ValueError`` (never inf or 0) when the result
    would overflow or underflow float64 (X's entries near 1e±154 and beyond).

    Chapter: {ref}`ch-probe-hessian`.
    """
    t = as_float64(X, "X", ndim=2)
    e = pow2_exponent(t)
    ts = scaled_by_pow2(t, -e)
    K = ts.T @ ts
    _representable(
        float(K.detach().abs().max()), 2 * e, "the Gram matrix XᵀX", _RESCALE_HINT
    )
    K = scaled_by_pow2(K, 2 * e)
    return (K + K.T) / 2  # exactly symmetric, whatever the matmul's rounding


def probe_hessian(theta, K) -> torch.Tensor:
    """The Hessian θᵀKθ of the ℓ2 linear probe on features xᵀθ (Eq. (9), without the factor 2).

    ``theta`` is D_in × D_hid and ``K`` is the symmetric D_in × D_in Gram matrix. Gradients flow
    through ``theta`` (and ``K``) if they require them. Computed on θ and K divided by powers
    of two, like :func:`gram`: a ``ValueError`` instead of inf or 0 when the result would not
    be representable in float64.

    Chapter: {ref}`ch-probe-hessian`.
    """
    K = _square(K, "K")
    check_symmetric(K, "K")
    theta = as_float64(theta, "theta", ndim=2)
    if theta.shape[0] != K.shape[0]:
        raise ValueError(
            f"theta must have K.shape[0] = {K.shape[0]} rows, got shape {tuple(theta.shape)}"
        )
    et, eK = pow2_exponent(theta), pow2_exponent(K)
    ts = scaled_by_pow2(theta, -et)
    H = ts.T @ scaled_by_pow2(K, -eK) @ ts
    _representable(
        float(H.detach().abs().max()),
        2 * et + eK,
        "the probe Hessian θᵀKθ",
        _RESCALE_HINT,
    )
    H = scaled_by_pow2(H, 2 * et + eK)
    return (H + H.T) / 2
