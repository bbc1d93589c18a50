"""Condition numbers, numerical rank, Gram matrices and the probe Hessian.

Everything here works in float64: spectra of Gram matrices span many orders of magnitude, and in
float32 the smallest eigenvalues of a matrix with κ ≈ 10⁷ are pure rounding noise.

Derived in the chapter "Condition numbers and gradient descent" (``book/02_condition_numbers.md``);
the probe Hessian θᵀKθ is derived in "Linear probing and its Hessian".
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

__all__ = [
    "CONVENTIONS",
    "SHIFT",
    "as_float64",
    "check_symmetric",
    "condition_number",
    "gram",
    "numerical_rank",
    "probe_hessian",
    "rank_tolerance",
    "singular_values",
]

Convention = Literal["pinv", "shifted"]
CONVENTIONS: tuple[str, ...] = ("pinv", "shifted")

#: The ridge the authors' released code adds before taking eigenvalues (``"shifted"`` convention).
SHIFT = 1e-6

#: Relative tolerance for "symmetric": max |S - Sᵀ| <= SYM_RTOL * max |S|.
SYM_RTOL = 1e-10


def as_float64(x, name: str, *, ndim: int | None = None) -> torch.Tensor:
    """Return ``x`` as a float64 torch tensor after checking it is a finite, non-empty array.

    Accepts torch tensors, numpy arrays and nested sequences of numbers. Gradients are kept
    (the tensor is converted with ``.to``, not copied through numpy), so differentiable code can
    call this too.
    """
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, (np.ndarray, list, tuple)):
        arr = np.asarray(x)
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
        ):
            raise TypeError(f"{name} must be an array of numbers, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}"
        )
    if t.is_complex():
        raise TypeError(f"{name} must be real, got a complex {t.dtype} tensor")
    t = t.to(torch.float64)
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t.detach()).all()):
        raise ValueError(f"{name} contains NaN or infinite entries")
    return t


def _square(S, name: str) -> torch.Tensor:
    t = as_float64(S, name, ndim=2)
    if t.shape[0] != t.shape[1]:
        raise ValueError(f"{name} must be square, got shape {tuple(t.shape)}")
    return t


def check_symmetric(S: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` unless ``S`` is symmetric up to a relative tolerance of 1e-10."""
    S = S.detach()
    scale = S.abs().max()
    if bool((S - S.T).abs().max() > SYM_RTOL * scale):
        asym = float((S - S.T).abs().max() / scale)
        raise ValueError(
            f"{name} must be symmetric (relative asymmetry {asym:.2e} > {SYM_RTOL:g}); "
            "pass (S + S.T) / 2 if the asymmetry is rounding noise"
        )


def singular_values(S) -> torch.Tensor:
    """Singular values of a real matrix in descending order, float64."""
    return torch.linalg.svdvals(as_float64(S, "S", ndim=2).detach())


def rank_tolerance(sigma: torch.Tensor, shape: tuple[int, int], rank_tol: float | None) -> float:
    """The cut-off below which a singular value counts as zero.

    ``rank_tol=None`` uses numpy's ``matrix_rank`` rule, σ_max · max(m, n) · eps(float64);
    a number is used as an absolute tolerance.
    """
    if rank_tol is None:
        return float(sigma.max()) * max(shape) * float(np.finfo(np.float64).eps)
    if isinstance(rank_tol, bool) or not isinstance(rank_tol, (int, float)):
        raise TypeError(f"rank_tol must be a float or None, got {type(rank_tol).__name__}")
    if not np.isfinite(rank_tol) or rank_tol < 0:
        raise ValueError(f"rank_tol must be a finite number >= 0, got {rank_tol}")
    return float(rank_tol)


def numerical_rank(S, *, rank_tol: float | None = None) -> int:
    """Number of singular values of ``S`` above the rank tolerance (see :func:`rank_tolerance`)."""
    t = as_float64(S, "S", ndim=2)
    sigma = torch.linalg.svdvals(t.detach())
    return int((sigma > rank_tolerance(sigma, tuple(t.shape), rank_tol)).sum())


def condition_number(
    S, *, convention: Convention = "pinv", rank_tol: float | None = None
) -> float:
    """Condition number κ(S) of a square matrix (Eq. (1) of the paper).

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
        For a non-square, empty, non-finite or all-zero S, an unknown convention, or a
        non-symmetric S under ``"shifted"``.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    t = _square(S, "S").detach()
    if not bool(t.abs().max() > 0):
        raise ValueError("S is all zeros: its condition number is undefined")
    if convention == "pinv":
        sigma = torch.linalg.svdvals(t)
        kept = sigma[sigma > rank_tolerance(sigma, tuple(t.shape), rank_tol)]
        return float(kept.max() / kept.min())
    if rank_tol is not None:
        raise ValueError('rank_tol applies only to convention="pinv"')
    check_symmetric(t, "S")
    lam = torch.linalg.eigvalsh((t + t.T) / 2 + SHIFT * torch.eye(t.shape[0], dtype=t.dtype))
    kept = lam[lam > SHIFT]
    if kept.numel() == 0:
        raise ValueError("S has no eigenvalue above the 1e-6 shift: κ is undefined")
    return float(lam.max() / kept.min())


def gram(X) -> torch.Tensor:
    """The uncentred Gram matrix K = XᵀX of a data matrix X (rows are samples), float64.

    This is the paper's "covariance" K (Eq. (9)): no mean is subtracted and there is no 1/N.
    """
    t = as_float64(X, "X", ndim=2)
    K = t.T @ t
    return (K + K.T) / 2  # exactly symmetric, whatever the matmul's rounding


def probe_hessian(theta, K) -> torch.Tensor:
    """The Hessian θᵀKθ of the ℓ2 linear probe on features xᵀθ (Eq. (9), without the factor 2).

    ``theta`` is D_in × D_hid and ``K`` is the symmetric D_in × D_in Gram matrix. Gradients flow
    through ``theta`` (and ``K``) if they require them.
    """
    K = _square(K, "K")
    check_symmetric(K, "K")
    theta = as_float64(theta, "theta", ndim=2)
    if theta.shape[0] != K.shape[0]:
        raise ValueError(
            f"theta must have K.shape[0] = {K.shape[0]} rows, got shape {tuple(theta.shape)}"
        )
    H = theta.T @ K @ theta
    return (H + H.T) / 2
