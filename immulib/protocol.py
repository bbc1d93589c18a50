"""One protocol for comparing immunization methods fairly: the same step budget, the same small
grid per method, one stated selection criterion measured on the training rows.

Baselines given fewer, clipped steps than the method they are compared with (150 clipped steps
against 400 for Ours, say) are starved of budget. Here every method gets ``steps`` full-batch
steps and :data:`GRIDS` gives each method the same number of settings of its own knobs (step
size, trust region, weights); the setting kept is the one :func:`criterion` ranks first:

1. settings that satisfy Definition 3.1 (b), (ii) ≤ 1 + ``tol``, on the training rows, by the
   largest (i) (the harder the harmful probe, the better: what the attacker feels);
2. if none does, the largest RIR (the paper's own criterion).

A grid of four points can keep a setting at its end, where a wider grid might do better. The
protocol then **widens** it the same way for every method (:func:`widen`, at most ``widen_times``
times, default :data:`WIDEN`): one more setting, each knob that sits at an end of the values
tried moved one geometric grid step further out, and the selection is repeated; it stops when
the kept setting is no longer at an end, or the new one diverges.

Results are then reported on held-out rows (:func:`immulib.evaluate.score`). Chapters
{ref}`ch-house-prices` and {ref}`ch-mnist-pairs` use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._validate import choice, integer, nonneg
from .linear import METHODS, Problem, run, starts

__all__ = [
    "GRIDS",
    "LIMITS",
    "WIDEN",
    "at_end",
    "criterion",
    "method_of",
    "run_seeds",
    "search",
    "select",
    "stopped",
    "tune",
    "widen",
]

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

#: Knob bounds besides positivity, as open intervals: a widening step that would leave one goes
#: halfway to its bound instead.
LIMITS: dict[str, tuple[float, float]] = {"rho": (0.0, 1.0)}

#: How many times :func:`search` widens a grid whose kept setting lies at an end.
WIDEN = 2


def _rows(rows, keys: tuple[str, ...], name: str = "rows") -> list[dict]:
    """``rows`` checked: a non-empty list of dicts that each carry ``keys``."""
    if not isinstance(rows, (list, tuple)) or not rows:
        raise ValueError(f"{name} must be a non-empty list of dicts, got {rows!r:.80}")
    for n, r in enumerate(rows):
        missing = [k for k in keys if not isinstance(r, dict) or k not in r]
        if missing:
            raise ValueError(
                f"{name}[{n}] must be a dict with the keys {', '.join(keys)} "
                f"(missing {', '.join(missing)}), got {r!r:.80}"
            )
    return list(rows)


def _numeric_values(tried: list[dict]) -> dict[str, list[float]]:
    """The distinct values, ascending, of each numeric knob that varies over ``tried``."""
    keys = {k for s in tried for k, v in s.items() if isinstance(v, (int, float))}
    values = {k: sorted({float(s[k]) for s in tried if k in s}) for k in keys}
    return {k: v for k, v in values.items() if len(v) >= 2}


def at_end(tried: list[dict], knobs: dict) -> bool:
    """Whether ``knobs`` sets some knob to the smallest or the largest value ``tried`` gives it.

    Chapter: {ref}`ch-mnist-pairs`.
    """
    return any(
        float(knobs[k]) in (v[0], v[-1])
        for k, v in _numeric_values(tried).items()
        if k in knobs
    )


def widen(tried: list[dict], knobs: dict) -> dict | None:
    """The next setting beyond an end of the grid ``tried``, or None if ``knobs`` (the kept
    setting) sets no knob at an end: every knob at its largest value is multiplied by the
    ratio of its two largest values, every knob at its smallest divided by the ratio of its
    two smallest; a value that would leave the knob's range (:data:`LIMITS`) goes halfway to
    the bound instead. The other knobs keep their values.

    Chapter: {ref}`ch-house-prices`.
    """
    new, moved = dict(knobs), False
    for k, v in _numeric_values(tried).items():
        if k not in knobs:
            continue
        x = float(knobs[k])
        lo, hi = LIMITS.get(k, (0.0, math.inf))
        if x == v[-1]:
            y = x * (v[-1] / v[-2])
            y = (x + hi) / 2 if y >= hi else y
        elif x == v[0]:
            y = x / (v[1] / v[0])
            y = (x + lo) / 2 if y <= lo else y
        else:
            continue
        new[k], moved = float(f"{y:.6g}"), True
    return new if moved else None


def search(
    grid: list[dict],
    evaluate: Callable[[dict], dict],
    *,
    widen_times: int = WIDEN,
    tol: float = 1e-6,
) -> tuple[dict, list[dict]]:
    """Evaluate every setting of ``grid`` (``evaluate(knobs)`` → a dict with ``i`` and ``ii``,
    measured on the training rows; a FloatingPointError marks a diverged setting, kept in the
    list with ``diverged=True`` and never chosen), keep the one :func:`criterion` ranks first,
    and while it lies at an end of the settings tried (at most ``widen_times`` times) evaluate
    :func:`widen`'s next setting (its row has ``widened=True``) and select again. Returns
    (chosen knobs, rows).

    Chapter: {ref}`ch-house-prices`.
    """
    integer(widen_times, "widen_times", 0)
    rows: list[dict] = []

    def add(knobs, widened):
        try:
            rows.append(
                dict(knobs=knobs, diverged=False, widened=widened, **evaluate(knobs))
            )
        except FloatingPointError:
            rows.append(
                dict(
                    knobs=knobs, diverged=True, widened=widened, i=math.nan, ii=math.nan
                )
            )
        return not rows[-1]["diverged"]

    for knobs in grid:
        add(knobs, False)
    for n in range(widen_times + 1):
        ok = [r for r in rows if not r["diverged"]]
        if not ok:
            raise FloatingPointError(f"every setting diverged: {grid}")
        kept = select(ok, tol=tol)["knobs"]
        nxt = widen([r["knobs"] for r in rows], kept) if n < widen_times else None
        if nxt is None or any(r["knobs"] == nxt for r in rows) or not add(nxt, True):
            return kept, rows
    raise AssertionError("unreachable")


def stopped(rows: list[dict], knobs: dict) -> str:
    """Why :func:`search` kept ``knobs`` where it did, from its ``rows`` (each with ``knobs``,
    ``diverged`` and ``widened``): ``"inside the values tried"`` (no knob at an end of the
    settings that ran), ``"next setting diverged"`` (at an end of those, but a setting further
    out diverged) or ``"widened N times, still at an end"`` (the widening budget ran out, N the
    widened settings: a wider grid might do better).

    Chapter: {ref}`ch-mnist-pairs`.
    """
    rows = _rows(rows, ("knobs", "diverged", "widened"))
    if not isinstance(knobs, dict):
        raise TypeError(f"knobs must be a dict of knob values, got {knobs!r:.80}")
    stable = [r["knobs"] for r in rows if not r["diverged"]]
    if not at_end(stable, knobs):
        return "inside the values tried"
    if not at_end([r["knobs"] for r in rows], knobs):
        return "next setting diverged"
    n = sum(bool(r["widened"]) for r in rows)
    return f"widened {n} time{'' if n == 1 else 's'}, still at an end"


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
    rows = _rows(rows, ("i", "ii"))
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
    :func:`immulib.linear.run`, equal bit for bit to one :func:`immulib.immunize` call per
    seed);
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
    widen_times: int = WIDEN,
) -> tuple[dict, list[dict]]:
    """Run every setting of ``grid`` (default ``GRIDS[entry]``) for ``steps`` steps from the
    identity start of ``seed``, score each θ with ``score`` (a dict with ``i`` and ``ii``, measured
    on the training rows) and keep the one :func:`criterion` ranks first, widening the grid at
    its ends (:func:`search`). A setting that diverges is kept in the list with
    ``diverged=True`` and never chosen. Returns (chosen knobs, rows).

    Chapter: {ref}`ch-house-prices`.
    """
    steps = integer(steps, "steps", 1)
    grid = GRIDS[choice(entry, "entry", GRIDS)] if grid is None else grid

    def evaluate(knobs):
        theta, _ = run_seeds(prob, entry, knobs, seeds=[seed], steps=steps)
        return score(theta[0])

    return search(grid, evaluate, widen_times=widen_times, tol=tol)
