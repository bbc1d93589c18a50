"""Attackers that fit the harmful linear probe on immunized features, and how many steps they need.

The paper's attacker runs gradient descent on the ℓ2 probe ½‖Fw − y‖² over the features F = X_Hθ
(Eq. (8)); its speed is governed by κ(FᵀF) = κ(H_H(θ)) (Eq. (2)), which is what condition-number
immunization raises. An attacker who holds D_H need not run plain gradient descent:

* ``"gd_exact"``: gradient descent with exact line search (the paper's Fig. 1 attacker);
* ``"gd_fixed"``: gradient descent with a fixed step ``eta`` (tune it with :func:`tune`);
* ``"adam"``: Adam with learning rate ``eta`` on the same loss;
* ``"jacobi"``: diagonal (Jacobi) preconditioning, i.e. exact-line-search descent on the rescaled
  features F·diag(FᵀF)^{-1/2};
* ``"whiten"``: whitening the features with K_H(θ)^{-1/2} = (FᵀF)^{-1/2} (on the range of F; the
  identity on its null space, :func:`immulib.optimal.optimal_theta`), after which every nonzero
  singular value is 1 and one exact-line-search step solves the problem;
* ``"lstsq"``: the closed-form least-squares solution (one "step").

Every attacker starts from the same seeded w_0 ~ N(0, I/d) and returns the whole trajectory
w_0 … w_T (float64), so the caller can score it on training or test data with :func:`probe_loss`
or :func:`probe_accuracy` and count :func:`steps_to_target`. Used in the chapter "Adaptive
attackers" (``book/09_adaptive_attackers.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from tqdm.auto import tqdm

from . import _validate
from ._validate import as_float64, integer, positive, rows_targets, threads
from .linalg import gram
from .optimal import optimal_theta

__all__ = [
    "ATTACKERS",
    "NEEDS_ETA",
    "attack",
    "probe_accuracy",
    "probe_loss",
    "steps_to_target",
    "tune",
]

ATTACKERS: tuple[str, ...] = (
    "gd_exact",
    "gd_fixed",
    "adam",
    "jacobi",
    "whiten",
    "lstsq",
)
#: Attackers that need a step size ``eta``.
NEEDS_ETA: tuple[str, ...] = ("gd_fixed", "adam")


def _eta(eta, attacker: str) -> float:
    if attacker not in NEEDS_ETA:
        if eta is not None:
            raise ValueError(
                f"eta applies only to the attackers {NEEDS_ETA}, not {attacker!r}"
            )
        return math.nan
    if eta is None:
        raise ValueError(f"attacker {attacker!r} needs a step size eta")
    return positive(eta, "eta")


def _exact_descent(
    F: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, steps: int, bar
) -> torch.Tensor:
    """Iterates of exact-line-search gradient descent on ½‖Fw − y‖² (the step of Eq. (16))."""
    A, b = gram(F), F.T @ y
    W = torch.empty(steps + 1, len(w0), dtype=torch.float64)
    W[0] = w = w0
    for t in range(steps):
        g = A @ w - b
        curv = g @ (A @ g)
        eta = (g @ g) / curv if curv > 0 else 0.0
        W[t + 1] = w = w - eta * g
        bar.update(1)
    return W


def attack(
    F,
    y,
    attacker: str,
    *,
    steps: int,
    eta: float | None = None,
    seed: int = 0,
    num_threads: int | None = 1,
    progress: bool | None = None,
) -> torch.Tensor:
    """Run one attacker on the ℓ2 probe ½‖Fw − y‖² and return its iterates w_0 … w_T.

    Chapter: {ref}`ch-attackers`.

    Parameters
    ----------
    F, y
        The attacker's training features F = X_Hθ (N × d) and targets y (N), converted to float64.
        For classification, y holds the labels as ±1 (the paper's ℓ2 probe, Eq. (8)).
    attacker
        One of :data:`ATTACKERS` (module docstring).
    steps
        T, the number of updates. ``"lstsq"`` is one step: w_1 = F⁺y, and w_t = w_1 after it.
    eta
        The step size of ``"gd_fixed"`` (on ½‖Fw − y‖²) and the learning rate of ``"adam"``; must
        be omitted otherwise.
    seed
        Seeds w_0 ~ N(0, I/d), shared by all attackers for the same seed.
    num_threads
        torch threads while attacking (default 1: on small problems more threads only add
        overhead, which is large on a loaded machine); ``None`` keeps the current setting.
    progress
        Show a ``tqdm`` bar over the steps; ``None`` (default): unless ``TQDM_DISABLE`` is set.

    Returns
    -------
    torch.Tensor
        float64, shape ``(steps + 1, d)``; row t is w_t.
    """
    if attacker not in ATTACKERS:
        raise ValueError(f"attacker must be one of {ATTACKERS}, got {attacker!r}")
    F, y = rows_targets(F, y)
    steps = integer(steps, "steps", minimum=1)
    eta = _eta(eta, attacker)
    seed = integer(seed, "seed", minimum=0)
    progress = _validate.progress(progress)
    d = F.shape[1]
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(d, generator=gen, dtype=torch.float64) / math.sqrt(d)
    bar = tqdm(total=steps, disable=not progress, desc=attacker, leave=False)
    with threads(num_threads):
        try:
            return _attack(F, y, attacker, steps, eta, w0, bar)
        finally:
            bar.close()


def _attack(F, y, attacker, steps, eta, w0, bar) -> torch.Tensor:
    d = F.shape[1]
    if attacker == "gd_exact":
        return _exact_descent(F, y, w0, steps, bar)
    if attacker in ("jacobi", "whiten"):
        A = gram(F)
        if attacker == "jacobi":
            diag = torch.diagonal(A)
            P = torch.diag(torch.where(diag > 0, diag, 1.0).rsqrt())
        else:  # (FᵀF)^{-1/2} on the range of F, I on its null space: invertible
            P = optimal_theta(A)
        # change of variables w = Pv with P invertible, so v_0 = P⁻¹w_0 starts at the shared w_0
        v0 = torch.linalg.solve(P, w0)
        return _exact_descent(F @ P, y, v0, steps, bar) @ P.T
    W = torch.empty(steps + 1, d, dtype=torch.float64)
    W[0] = w0
    if attacker == "lstsq":
        W[1:] = torch.linalg.pinv(F) @ y
        bar.update(steps)
        return W
    w = w0.clone().requires_grad_(True)
    opt = (torch.optim.SGD if attacker == "gd_fixed" else torch.optim.Adam)([w], lr=eta)
    for t in range(steps):
        opt.zero_grad()
        loss = 0.5 * ((F @ w - y) ** 2).sum()
        loss.backward()
        opt.step()
        W[t + 1] = w.detach()
        bar.update(1)
    return W


def _check_W(W, d: int) -> torch.Tensor:
    W = as_float64(W, "W", ndim=2).detach()
    if W.shape[1] != d:
        raise ValueError(
            f"W must have {d} columns (one per feature of F), got shape {tuple(W.shape)}"
        )
    return W


def probe_loss(F, y, W) -> torch.Tensor:
    """The mean squared error (1/N)‖Fw_t − y‖² of every iterate (row) of ``W``, float64.

    Chapter: {ref}`ch-attackers`.
    """
    F, y = rows_targets(F, y)
    W = _check_W(W, F.shape[1])
    return ((W @ F.T - y) ** 2).mean(1)


def probe_accuracy(F, y, W) -> torch.Tensor:
    """The accuracy of sign(Fw_t) against labels ``y`` in {−1, +1}, for every row of ``W``.

    Chapter: {ref}`ch-attackers`.
    """
    F, y = rows_targets(F, y)
    if not bool(((y == 1) | (y == -1)).all()):
        raise ValueError("y must hold labels -1 and +1 for probe_accuracy")
    W = _check_W(W, F.shape[1])
    return (torch.sign(W @ F.T) == y).to(torch.float64).mean(1)


def steps_to_target(curve, target: float, *, higher_is_better: bool) -> int | None:
    """The first t with curve[t] >= target (``higher_is_better``) or <= target; ``None`` if never.

    Chapter: {ref}`ch-attackers`.
    """
    c = as_float64(curve, "curve", ndim=1)
    if (
        isinstance(target, bool)
        or not isinstance(target, (int, float))
        or not math.isfinite(target)
    ):
        raise TypeError(f"target must be a finite number, got {target!r}")
    if not isinstance(higher_is_better, bool):
        raise TypeError(
            f"higher_is_better must be a bool, got {type(higher_is_better).__name__}"
        )
    hit = (c >= target) if higher_is_better else (c <= target)
    idx = torch.nonzero(hit)
    return int(idx[0]) if len(idx) else None


def tune(
    F,
    y,
    attacker: str,
    grid: Iterable[float],
    *,
    steps: int,
    score: Callable[[torch.Tensor], float],
    seed: int = 0,
    progress: bool | None = None,
) -> tuple[float, torch.Tensor]:
    """Pick the step size of ``attacker`` from ``grid`` by a grid search; return (eta, iterates).

    ``score(W)`` maps a trajectory to a number, lower is better (e.g. the steps to a target, with
    a large value when the target is not reached); ties go to the earlier entry of ``grid``.
    Diverging runs (non-finite iterates) are skipped.

    Chapter: {ref}`ch-attackers`.
    """
    if attacker not in NEEDS_ETA:
        raise ValueError(
            f"attacker must be one of {NEEDS_ETA} (the attackers with a step size), got {attacker!r}"
        )
    grid = list(grid)
    if not grid:
        raise ValueError("grid must contain at least one step size")
    if not callable(score):
        raise TypeError(f"score must be callable, got {type(score).__name__}")
    best = None
    for eta in tqdm(
        grid,
        disable=not _validate.progress(progress),
        desc=f"tuning {attacker}",
        leave=False,
    ):
        W = attack(F, y, attacker, steps=steps, eta=eta, seed=seed, progress=False)
        if not bool(torch.isfinite(W).all()):
            continue
        s = float(score(W))
        if best is None or s < best[0]:
            best = (s, eta, W)
    if best is None:
        raise ValueError(f"every step size in grid diverged for {attacker!r}")
    return best[1], best[2]
