"""How well a feature extractor is immunized: the relative immunization ratio and the norm ratio.

* :func:`rir`: Eq. (15), RIR = [κ(H_H(θ))/κ(H_H(I))] / [κ(H_P(θ))/κ(H_P(I))], or with ``theta0``
  Eq. (17), RIR_θ0, whose Hessians H̃(θ) = X̃(θ)ᵀX̃(θ) are built from the features X̃ = Xθ (Eq. (18)).
* :func:`norm_ratio`: Eq. (16), ‖w_t − w*‖²/‖w_0 − w*‖² of the attacker's gradient descent with
  exact line search on the ℓ2 probe over the features Xθ.

Used in the chapter "Immunizing a linear model: House Prices" (``book/05_house_prices.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._validate import as_float64, choice, integer
from .descent import gd_errors
from .linalg import (
    CONVENTIONS,
    condition_number,
    gram,
    pow2_exponent,
    scaled_by_pow2,
    unscale,
)

__all__ = ["RIR", "START_AT_OPTIMUM_RTOL", "norm_ratio", "rir"]

#: ‖w_0 − w*‖ at most this times max(‖w_0‖, ‖w*‖) counts as starting at the optimum.
START_AT_OPTIMUM_RTOL = 1e-12


@dataclass(frozen=True)
class RIR:
    """Eq. (15)/(17): ``i`` = κ_H(θ)/κ_H(ref) ↑, ``ii`` = κ_P(θ)/κ_P(ref) ↓, ``rir`` = i / ii ↑.

    ``kappa_*`` are the four condition numbers; ``ref`` is I (Eq. (15)) or θ0 (Eq. (17)).

    Chapter: {ref}`ch-house-prices`.
    """

    i: float
    ii: float
    rir: float
    kappa_H: float
    kappa_H_ref: float
    kappa_P: float
    kappa_P_ref: float


def _features(X, theta, name: str, *, scale_free: bool = False) -> torch.Tensor:
    """Xθ, computed on X and θ divided by powers of two; ``scale_free``: return it divided by
    a power of two (max entry in [0.5, 1)) for quantities, such as κ under "pinv", that do not
    depend on the scale. Otherwise a ValueError when Xθ is not representable in float64."""
    theta = as_float64(theta, name, ndim=2).detach()
    if theta.shape[0] != X.shape[1]:
        raise ValueError(
            f"{name} must have {X.shape[1]} rows (the input dimension), got {tuple(theta.shape)}"
        )
    eX, et = pow2_exponent(X), pow2_exponent(theta)
    F = scaled_by_pow2(X, -eX) @ scaled_by_pow2(theta, -et)
    if scale_free:
        return scaled_by_pow2(F, -pow2_exponent(F))
    return unscale(F, eX + et, f"the features X{name}")


def rir(XP, XH, theta, *, theta0=None, convention: str = "pinv") -> RIR:
    """The relative immunization ratio of a linear extractor θ (Eq. (15)), or RIR_θ0 (Eq. (17)).

    Chapter: {ref}`ch-house-prices`.

    Parameters
    ----------
    XP, XH
        Inputs of D_P and D_H (rows are samples), same number of columns D_in.
    theta
        The immunized extractor θ_I, D_in × D_hid. H(θ) = (Xθ)ᵀ(Xθ) = θᵀKθ (Eq. (9), (18)).
    theta0
        ``None``: the reference is the identity, H(I) = K (Eq. (15)). Otherwise the reference
        extractor θ0 of Eq. (17): keep a *separate copy* of the initial model; passing the
        immunized θ here gives exactly 1 (the bug of the released code, GitHub issue #1).
    convention
        κ convention (:func:`immulib.linalg.condition_number`); it matters on rank-deficient data.
    """
    choice(convention, "convention", CONVENTIONS)
    XP, XH = as_float64(XP, "XP", ndim=2), as_float64(XH, "XH", ndim=2)
    if XP.shape[1] != XH.shape[1]:
        raise ValueError(
            f"XP and XH must have the same number of columns, got {XP.shape[1]} and {XH.shape[1]}"
        )

    scale_free = (
        convention == "pinv"
    )  # κ under "pinv" is scale-free; the 1e-6 shift is not

    def kappa(X, th, name):
        if th is None:
            F = scaled_by_pow2(X, -pow2_exponent(X)) if scale_free else X
        else:
            F = _features(X, th, name, scale_free=scale_free)
        return condition_number(gram(F), convention=convention)

    kH, kP = kappa(XH, theta, "theta"), kappa(XP, theta, "theta")
    kH0, kP0 = kappa(XH, theta0, "theta0"), kappa(XP, theta0, "theta0")
    i, ii = kH / kH0, kP / kP0
    return RIR(i, ii, i / ii, kH, kH0, kP, kP0)


def norm_ratio(X, y, theta, *, steps: int, w0=None) -> torch.Tensor:
    """Eq. (16): ‖w_t − w*‖²/‖w_0 − w*‖², t = 0 … steps, for the attacker's ℓ2 probe on Xθ.

    The attacker runs gradient descent with exact line search (the paper's choice for Fig. 1) on
    ‖Xθw − y‖²; w* is the minimum-norm least-squares solution (pseudo-inverse) and w_0 = 0 by
    default, so w_0 − w* lies in the row space and the ratio tends to 0 even when Xθ is
    rank-deficient. Uses :func:`immulib.descent.gd_errors` with ``step_size="exact"``.

    When the start is already optimal (‖w_0 − w*‖ <= 1e-12·max(‖w_0‖, ‖w*‖), or both are 0) the
    ratio is 0/0; it is then defined as 0 for every t (there is no distance left to close),
    never NaN.

    Chapter: {ref}`ch-house-prices`.
    """
    X = as_float64(X, "X", ndim=2)
    y = as_float64(y, "y", ndim=1)
    if len(y) != len(X):
        raise ValueError(
            f"y must have {len(X)} entries (one per row of X), got {len(y)}"
        )
    F = _features(X, theta, "theta")
    w_star = torch.linalg.pinv(F) @ y
    w0 = torch.zeros_like(w_star) if w0 is None else as_float64(w0, "w0", ndim=1)
    if w0.shape != w_star.shape:
        raise ValueError(f"w0 must have {len(w_star)} entries, got {len(w0)}")
    steps = integer(steps, "steps", minimum=0)
    e0 = w0 - w_star
    scale = max(float(w0.norm()), float(w_star.norm()))
    if float(e0.norm()) <= START_AT_OPTIMUM_RTOL * scale:
        return torch.zeros(steps + 1, dtype=torch.float64)
    err = gd_errors(gram(F), e0, steps, step_size="exact")
    return err / err[0]
