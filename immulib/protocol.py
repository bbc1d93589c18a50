"""One protocol for comparing immunization methods fairly: the same step budget, the same small
grid per method, one stated selection criterion measured on the training rows.

The review of the first edition found baselines starved of budget (150 clipped steps against
400 for Ours). Here every method gets ``steps`` full-batch steps and :data:`GRIDS` gives each
method the same number of settings of its own knobs (step size, trust region, weights); the
setting kept is the one :func:`criterion` ranks first:

1. settings that satisfy Definition 3.1 (b), (ii) ≤ 1 + ``tol``, on the training rows, by the
   largest (i) (the harder the harmful probe, the better: what the attacker feels);
2. if none does, the largest RIR (the paper's own criterion).

Results are then reported on held-out rows (:func:`immulib.evaluate.score`). Chapters
{ref}`ch-house-prices` and {ref}`ch-mnist-pairs` use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._validate import choice, integer, nonneg
from .linear import METHODS, Problem, run, starts

__all__ = ["GRIDS", "criterion", "method_of", "run_seeds", "select", "tune"]

#: Four settings per method, of the knobs that method has (the rest at their defaults).
GRIDS: dict[str, list[dict]] = {
    "r_well_only": [dict(rho=r) for r in (0.3, 0.5, 0.7, 0.9)],
    "r_ill_only": [dict(delta=d) for d in (0.003, 0.01, 0.03, 0.1)],
    "ours_paper": [dict(policy="paper", eta=e) for e in (0.001, 0.005, 0.02, 0.05)],
    "ours": [dict(delta=d) for d in (0.003, 0.01, 0.03, 0.1)],
    "constrained": [dict(eta=e) for e in (0.03, 0.1, 0.2, 0.3)],
    "opt_kappa": [dict(eta=e, mu=m) for e in (0.003, 0.03) for m in (0.1, 1.0)],
    "imma": [dict(eta=e, mu=m) for e in (0.003, 0.03) for m in (0.1, 1.0)],
}


def criterion(i: float, ii: float, *, tol: float = 1e-6) -> tuple[int, float]:
    """Sort key (larger is better): feasible settings ((ii) ≤ 1 + tol) by log (i), then the rest by
    log RIR. Non-finite values rank last.

    Chapter: {ref}`ch-house-prices`.
    """
    tol = nonneg(tol, "tol")
    if not (math.isfinite(i) and math.isfinite(ii) and i > 0 and ii > 0):
        return (-1, -math.inf)
    if ii <= 1 + tol:
        return (1, math.log(i))
    return (0, math.log(i / ii))


def select(rows: list[dict], *, tol: float = 1e-6) -> dict:
    """The row of ``rows`` (each with keys ``i`` and ``ii``) that :func:`criterion` ranks first.

    Chapter: {ref}`ch-house-prices`.
    """
    if not rows:
        raise ValueError("rows must not be empty")
    return max(rows, key=lambda r: criterion(float(r["i"]), float(r["ii"]), tol=tol))


def method_of(entry: str) -> str:
    """The ``immulib.linear.METHODS`` name of a :data:`GRIDS` entry ("ours_paper" → "ours").

    Chapter: {ref}`ch-house-prices`.
    """
    return choice(entry.split("_paper")[0], "entry", METHODS)


def run_seeds(
    prob: Problem,
    entry: str,
    knobs: dict,
    *,
    seeds,
    init: str = "identity",
    steps: int = 400,
    record_every: int | None = None,
) -> tuple[torch.Tensor, object]:
    """Run a :data:`GRIDS` entry with ``knobs`` from the starts of ``seeds`` (one batched
    :func:`immulib.linear.run`, equal to one :func:`immulib.immunize` call per seed);
    returns (θ (len(seeds), D, D), history).

    Chapter: {ref}`ch-house-prices`.
    """
    seeds = list(seeds)
    th0, om0 = starts(prob.D, seeds, init)
    theta, _, history, _ = run(
        prob.repeat(len(seeds)),
        method_of(entry),
        steps=steps,
        theta_init=th0,
        omega_init=om0,
        record_every=record_every or steps,
        progress=False,
        **knobs,
    )
    return theta, history


def tune(
    prob: Problem,
    entry: str,
    score: Callable[[torch.Tensor], dict],
    *,
    steps: int = 400,
    grid: list[dict] | None = None,
    seed: int = 0,
    tol: float = 1e-6,
) -> tuple[dict, list[dict]]:
    """Run every setting of ``grid`` (default ``GRIDS[entry]``) for ``steps`` steps from the
    identity start of ``seed``, score each θ with ``score`` (a dict with ``i`` and ``ii``, measured
    on the training rows) and keep the one :func:`criterion` ranks first. A setting that diverges
    is kept in the list with ``diverged=True`` and never chosen. Returns (chosen knobs, rows).

    Chapter: {ref}`ch-house-prices`.
    """
    steps = integer(steps, "steps", 1)
    grid = GRIDS[choice(entry, "entry", GRIDS)] if grid is None else grid
    rows = []
    for knobs in grid:
        try:
            theta, _ = run_seeds(prob, entry, knobs, seeds=[seed], steps=steps)
            rows.append(dict(knobs=knobs, diverged=False, **score(theta[0])))
        except FloatingPointError:
            rows.append(dict(knobs=knobs, diverged=True, i=math.nan, ii=math.nan))
    ok = [r for r in rows if not r["diverged"]]
    if not ok:
        raise FloatingPointError(f"every setting of {entry!r} diverged: {grid}")
    return select(ok, tol=tol)["knobs"], rows
