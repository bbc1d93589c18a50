"""The slow reference for R_ill and R_well: their formulas on ``eigvalsh``, differentiated by autograd.

:mod:`immulib.regularizers` computes R_ill (Eq. (12)) and R_well (Eq. (3)) with a closed-form
backward pass (Eq. (13) and its R_well counterpart). This module writes the same two formulas
the plain way, on the eigenvalues of ``torch.linalg.eigvalsh``, and lets autograd differentiate
through the eigendecomposition. It is the reference the closed forms are tested against
(``tests/test_regularizers.py``) and the baseline the benchmarks time them against
(``benchmarks/house_prices.py``, ``benchmarks/gpu_step.py``); it is itself tested against
finite differences in float64 (``tests/test_reference.py``).

Use :func:`immulib.regularizers.r_ill` and :func:`~immulib.regularizers.r_well` for real work:
they check their input, warn where the gradient does not exist and do not backpropagate
through ``eigh``. These functions do neither and are only as fast as autograd allows.

Chapter: {ref}`ch-regularizers`.
"""

from __future__ import annotations

import torch

from ._validate import as_float64
from .linalg import numerical_rank

__all__ = ["r_ill_eigh", "r_well_eigh"]


def _square(S) -> torch.Tensor:
    S = as_float64(S, "S", ndim=2)
    if S.shape[0] != S.shape[1]:
        raise ValueError(f"S must be square, got shape {tuple(S.shape)}")
    return (
        S + S.mT
    ) / 2  # the gradient is then that of a function of symmetric matrices


def r_ill_eigh(S, *, k: int | None = None) -> torch.Tensor:
    """R_ill(S) = 1 / (‖S‖_F²/(2k) − σ_k²/2) through ``eigvalsh`` and autograd (Eq. (12)).

    ``S`` is a square PSD matrix (converted to float64, gradients kept; it is symmetrised as
    (S + Sᵀ)/2). ``k`` is the rank of S, ``None`` meaning its numerical rank
    (:func:`immulib.linalg.numerical_rank`); σ_k is the k-th largest eigenvalue. The slow
    reference for :func:`immulib.regularizers.r_ill`. Chapter: {ref}`ch-regularizers`.
    """
    S = _square(S)
    n = S.shape[0]
    if k is None:
        k = numerical_rank(S.detach())
    elif isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int or None, got {type(k).__name__}")
    if not 2 <= k <= n:
        raise ValueError(f"k must satisfy 2 <= k <= {n}, got {k}")
    sigma = torch.linalg.eigvalsh(S).flip(-1)  # descending
    return 1 / ((S * S).sum() / (2 * k) - sigma[k - 1] ** 2 / 2)


def r_well_eigh(S) -> torch.Tensor:
    """R_well(S) = σ₁²/2 − ‖S‖_F²/(2p) through ``eigvalsh`` and autograd (Eq. (3)).

    ``S`` is a square PSD p × p matrix (converted to float64, gradients kept, symmetrised);
    p is its dimension. The slow reference for :func:`immulib.regularizers.r_well`.
    Chapter: {ref}`ch-regularizers`.
    """
    S = _square(S)
    sigma_1 = torch.linalg.eigvalsh(S)[-1]
    return sigma_1**2 / 2 - (S * S).sum() / (2 * S.shape[0])
