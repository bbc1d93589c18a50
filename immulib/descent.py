"""Gradient descent on a quadratic, and the convergence bound of Eq. (2).

The attacker of the paper fits a linear probe with an ℓ2 loss, a quadratic in the probe weights w.
On f(w) = ½ (w − w*)ᵀ A (w − w*) the error e_t = w_t − w* evolves linearly, e_{t+1} = e_t − η_t A e_t,
so the whole run is a few matrix-vector products. Derived in the chapter "Condition numbers and
gradient descent" (``book/02_condition_numbers.md``).
"""

from __future__ import annotations

import torch

from ._validate import as_float64, choice, integer, number, positive
from .linalg import check_symmetric

__all__ = ["gd_errors", "rate_bound"]


def gd_errors(A, e0, steps: int, *, step_size: float | str = "1/L") -> torch.Tensor:
    """Squared distances ‖w_t − w*‖² of gradient descent on ½ (w − w*)ᵀA(w − w*), t = 0 … steps.

    Chapter: {ref}`ch-condition-numbers`.

    Parameters
    ----------
    A
        The symmetric positive semi-definite Hessian, n × n, or a batch of them, B × n × n.
    e0
        The initial error w_0 − w*: length n, or B × n for a batch.
    steps
        Number of gradient steps.
    step_size
        ``"1/L"`` (default): the constant step 1/σ_max(A) of Eq. (2), per problem. ``"exact"``:
        exact line search, η_t = gᵀg / gᵀAg with g = A e_t, the step the paper uses for Fig. 1
        (Eq. (16)). A positive float: that constant step for every problem.

    Returns
    -------
    torch.Tensor
        float64, shape ``(steps + 1,)`` (or ``(B, steps + 1)``); entry t is ‖e_t‖².
    """
    A = as_float64(A, "A")
    e = as_float64(e0, "e0").clone()
    if A.ndim not in (2, 3) or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must be n × n or B × n × n, got shape {tuple(A.shape)}")
    if e.shape != A.shape[:-1]:
        raise ValueError(
            f"e0 must have shape {tuple(A.shape[:-1])} to match A, got {tuple(e.shape)}"
        )
    for i, Ai in enumerate(A.reshape(-1, *A.shape[-2:])):
        check_symmetric(Ai, "A" if A.ndim == 2 else f"A[{i}]")
    steps = integer(steps, "steps", minimum=0)
    if isinstance(step_size, str):
        choice(step_size, "step_size", ("1/L", "exact"))
    else:
        step_size = positive(step_size, "step_size")
    if step_size == "1/L":
        eta = 1.0 / torch.linalg.eigvalsh(A)[..., -1:]
    elif step_size != "exact":
        eta = torch.full(A.shape[:-2] + (1,), float(step_size), dtype=torch.float64)
    out = torch.empty(A.shape[:-2] + (steps + 1,), dtype=torch.float64)
    out[..., 0] = (e * e).sum(-1)
    for t in range(steps):
        g = (A @ e.unsqueeze(-1)).squeeze(-1)
        if step_size == "exact":
            curv = (g * (A @ g.unsqueeze(-1)).squeeze(-1)).sum(-1, keepdim=True)
            gg = (g * g).sum(-1, keepdim=True)
            eta = torch.where(curv > 0, gg / torch.where(curv > 0, curv, 1.0), 0.0)
        e = e - eta * g
        out[..., t + 1] = (e * e).sum(-1)
    return out


def rate_bound(kappa: float, steps: int) -> torch.Tensor:
    """The bound of Eq. (2): (1 − 1/κ)^t for t = 0 … steps, as a float64 tensor.

    Chapter: {ref}`ch-condition-numbers`.
    """
    kappa = number(kappa, "kappa", minimum=1.0)
    steps = integer(steps, "steps", minimum=0)
    t = torch.arange(steps + 1, dtype=torch.float64)
    return (1.0 - 1.0 / kappa) ** t
