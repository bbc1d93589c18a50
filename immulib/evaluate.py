"""Score a linear extractor from the attacker's side: (i), (ii), RIR, the D_P optimum kept, and
the number of steps an attacker needs to fit the probe on the immunized features.

Condition numbers are a proxy. What immunization promises is that fitting the harmful probe on
the features F = X_Hθ takes the attacker *longer* than on the raw inputs, while fitting the
pre-training probe on X_Pθ does not (Definition 3.1). :func:`score` measures both directly, on
the training rows and on held-out rows; :func:`score_table` scores several extractors at once
and adds the identity row and the ratios against it.

The attacker (one per task and split)
-------------------------------------
On a split with inputs X and targets y, the attacker minimises the ℓ2 probe loss
L(w) = ½‖Xθw − y‖² (Eq. (8)) over w, starting from **w_0 = 0**, and we count the steps t until
the relative suboptimality

    s_t = (L(w_t) − L*) / (L(w_0) − L*)  ≤  ``target``,

L* = min_w L(w). Starting from 0 makes L(w_0) = ½‖y‖² the same for every θ, and for an
invertible θ L* is the same too, so every extractor is scored against the same absolute loss.
Two attackers:

* ``exact``: gradient descent with exact line search (the paper's Fig. 1 attacker, Eq. (16));
* ``fixed``: gradient descent with a fixed step η = c/λ_max(FᵀF), the attacker tuning c over
  ``fixed_grid`` (default :data:`FIXED_GRID`, c < 2 so every step converges) and keeping the fastest.

A count of ``max_steps + 1`` means "not reached within ``max_steps``" (a lower bound on the true
count, not a measurement); :func:`steps_text`, :func:`ratio_text` and :func:`median_text` write
counts, ratios and medians of ratios so that such a bound is never shown as a measurement. On
"held-out" rows the attacker fits its probe on those rows (data the defender never saw): the
question is whether the immunization carries over to fresh data from the same task.

How it is fast
--------------
With the thin SVD F = UΣVᵀ and u_t = Σ Vᵀ(w_t − w*) the residual of the fit in the singular
basis, L(w_t) − L* = ½‖u_t‖², u_0 = −Uᵀy, and a gradient step with step η multiplies u_j by
(1 − ησ_j²). One SVD per split and task, then each exact-line-search step is a few length-d
vector operations; for a fixed step s_t is a sum of decaying exponentials in closed form, found
by bisection. Singular values below numpy's rank rule (σ_max·max(N, d)·eps) count as zero: those
directions carry no signal the probe can fit (the pseudo-inverse convention of Eq. (1)).

Used in the chapters "The best a linear immunizer can do" (``book/08_optimal_immunizer.md``) and
every chapter that scores a method (05, 06, 09, 10).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import torch

from ._validate import as_float64, choice, flag, integer, nonneg, number, rows_targets
from .linalg import CONVENTIONS
from .metrics import rir

__all__ = [
    "FIXED_GRID",
    "STEP_COLUMNS",
    "attack_curve",
    "attack_steps",
    "compress",
    "error_spectrum",
    "identity_targets",
    "median_text",
    "ratio_text",
    "score",
    "score_table",
    "steps_text",
]

#: The fixed-step attacker's grid: η = c/λ_max(FᵀF) for c in this tuple.
FIXED_GRID: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 1.9)

#: The step-count columns of :func:`score`, in order.
STEP_COLUMNS: tuple[str, ...] = tuple(
    f"steps_{task}_{split}_{attacker}"
    for split in ("train", "test")
    for task in ("H", "P")
    for attacker in ("exact", "fixed")
)


# ---------------------------------------------------------------------------------------------
# the attacker in the singular basis


def _spectrum(F: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray, float]:
    """(σ² on the numerical range, u_0 = Uᵀy there, L* = ½‖y − UUᵀy‖²) of the probe on F."""
    U, sigma, _ = torch.linalg.svd(F, full_matrices=False)
    keep = sigma > sigma.max() * max(F.shape) * float(np.finfo(np.float64).eps)
    U, sigma = U[:, keep], sigma[keep]
    u0 = U.T @ y
    resid = y - U @ u0
    return ((sigma**2).cpu().numpy(), u0.cpu().numpy(), 0.5 * float(resid @ resid))


def _line_search(lam: np.ndarray, u: np.ndarray, steps: int):
    """Yield Σu_t²/Σu_0² for t = 1..steps of exact-line-search descent (u_0 = u, Σu_0² > 0);
    at the optimum (gᵀAg = 0) the value stays where it is."""
    u = u.copy()
    s0 = float(u @ u)
    lam2 = lam * lam
    for _ in range(steps):
        u2 = u * u
        num, den = float(lam @ u2), float(lam2 @ u2)  # η = gᵀg/gᵀAg with g_j = σ_j u_j
        if den > 0.0:
            u *= 1.0 - (num / den) * lam
        yield float(u @ u) / s0


def _steps_exact(lam: np.ndarray, u: np.ndarray, target: float, max_steps: int) -> int:
    """Steps of exact-line-search descent until Σu²/Σu_0² ≤ target (max_steps + 1 if never)."""
    if float(u @ u) == 0.0 or target >= 1.0:
        return 0
    for t, s in enumerate(_line_search(lam, u, max_steps), start=1):
        if s <= target:
            return t
    return max_steps + 1


def _steps_fixed(
    lam: np.ndarray,
    u: np.ndarray,
    target: float,
    max_steps: int,
    grid: tuple[float, ...],
) -> int:
    """Fewest steps over η = c/λ_max (c in grid) of fixed-step descent; closed form + bisection."""
    w = u * u
    s0 = float(w.sum())
    if s0 == 0.0 or target >= 1.0:
        return 0
    best = max_steps + 1
    for c in grid:
        log_r = 2.0 * np.log(
            np.abs(1.0 - (c / lam.max()) * lam) + 1e-300
        )  # ratio² per step, < 1

        def s(t: int, log_r=log_r) -> float:
            return float(w @ np.exp(t * log_r)) / s0

        if s(max_steps) > target:  # s_t decreases in t, so never reached
            continue
        lo, hi = 0, max_steps  # s(lo) > target >= s(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if s(mid) <= target else (mid, hi)
        best = min(best, hi)
    return best


def attack_steps(
    F,
    y,
    *,
    target: float = 1e-3,
    max_steps: int = 3000,
    fixed_grid: Iterable[float] = FIXED_GRID,
) -> dict[str, int]:
    """Steps the two attackers of the module docstring need on the ℓ2 probe over features ``F``.

    Returns ``{"exact": t, "fixed": t}``, each the first t with relative suboptimality ≤
    ``target``, or ``max_steps + 1`` if it is not reached within ``max_steps`` steps.

    Chapter: {ref}`ch-optimal`.
    """
    F, y = rows_targets(F, y)
    target = _target(target)
    max_steps = integer(max_steps, "max_steps", minimum=1)
    grid = _grid(fixed_grid)
    lam, u, _ = _spectrum(F, y)
    return {
        "exact": _steps_exact(lam, u, target, max_steps),
        "fixed": _steps_fixed(lam, u, target, max_steps, grid),
    }


def attack_curve(F, y, *, steps: int = 100, step: float | None = None) -> np.ndarray:
    """The attacker's relative suboptimality s_0 = 1, s_1, …, s_steps on the ℓ2 probe over ``F``.

    ``step=None`` is gradient descent with exact line search (the ``exact`` attacker of the
    module docstring); a number c is a fixed step η = c/λ_max(FᵀF), 0 < c < 2. The count of
    :func:`attack_steps` is the first t with s_t ≤ ``target``, so a target can be read off
    this curve (e.g. the identity's s_N: the target that the identity reaches in N steps).

    Chapter: {ref}`ch-house-prices`.
    """
    F, y = rows_targets(F, y)
    steps = integer(steps, "steps", minimum=0)
    if step is not None:
        step = number(step, "step", minimum=0.0, strict=True, maximum=2.0)
        if step >= 2.0:
            raise ValueError(
                f"step must be < 2 (η = c/λ_max diverges at c >= 2), got {step}"
            )
    lam, u, _ = _spectrum(F, y)
    s0 = float(u @ u)
    out = np.ones(steps + 1)
    if s0 == 0.0:
        return np.zeros(steps + 1)
    if step is not None:
        r2 = (1.0 - (step / lam.max()) * lam) ** 2
        w = u * u
        for t in range(1, steps + 1):
            w = w * r2
            out[t] = float(w.sum()) / s0
        return out
    out[1:] = list(_line_search(lam, u, steps))
    return out


def error_spectrum(F, y) -> pd.DataFrame:
    """Where the attacker's starting error sits along the spectrum of FᵀF.

    With the thin SVD F = UΣVᵀ, the attacker starting from w_0 = 0 has the error u_0 = −Uᵀy in
    the singular basis (module docstring): a gradient step with η = c/λ_max multiplies its j-th
    component by 1 − c·ν_j, ν_j = σ_j²/σ_max². The number of steps to a target is set by how
    the weights w_j = u_{0,j}²/‖u_0‖² spread over ν, not by κ = 1/ν_min alone. One row per
    direction on the numerical range, ν descending, with columns ``nu`` and ``weight``
    (summing to 1; all 0 when y has no component in the range of F).

    Chapter: {ref}`ch-house-prices`.
    """
    F, y = rows_targets(F, y)
    lam, u, _ = _spectrum(F, y)
    w = u * u
    total = float(w.sum())
    order = np.argsort(-lam, kind="stable")
    return pd.DataFrame(
        {
            "nu": lam[order] / lam.max(),
            "weight": w[order] / total if total > 0 else np.zeros_like(w),
        }
    )


# ---------------------------------------------------------------------------------------------
# checks


def _target(target, name: str = "target") -> float:
    return number(target, name, minimum=0.0, strict=True, maximum=1.0)


def _grid(grid) -> tuple[float, ...]:
    if isinstance(grid, (str, bytes)) or not isinstance(grid, Iterable):
        raise TypeError(
            f"fixed_grid must be an iterable of numbers, got {type(grid).__name__}"
        )
    grid = tuple(number(c, "fixed_grid entry", minimum=0.0, strict=True) for c in grid)
    if not grid:
        raise ValueError("fixed_grid must contain at least one step factor c")
    if max(grid) >= 2.0:
        raise ValueError(
            f"fixed_grid entries must be < 2 (η = c/λ_max diverges at c >= 2), got {max(grid)}"
        )
    return grid


def _theta(theta, name: str, D: int, device) -> torch.Tensor:
    t = as_float64(theta, name, ndim=2).detach().to(device)
    if t.shape[0] != D:
        raise ValueError(
            f"{name} must have {D} rows (the input dimension), got shape {tuple(t.shape)}"
        )
    return t


def _test_split(XP_test, yP_test, XH_test, yH_test):
    given = [a is not None for a in (XP_test, yP_test, XH_test, yH_test)]
    if any(given) and not all(given):
        raise ValueError(
            "pass all four of XP_test, yP_test, XH_test, yH_test, or none of them"
        )
    return all(given)


def compress(X, y) -> tuple[torch.Tensor, torch.Tensor]:
    """The same least-squares probe on at most D + 1 rows: ``(X̃, ỹ)`` with X̃ᵀX̃ = XᵀX,
    X̃ᵀỹ = Xᵀy and ‖ỹ‖ = ‖y‖, for ``X`` (n, D) and ``y`` (n,).

    With the thin QR [X y] = QR, X̃ and ỹ are the first D columns and the last column of R.
    Then ‖X̃θw − ỹ‖ = ‖Xθw − y‖ for every θ and w, so everything :func:`score` computes from the
    rows (the singular values of Xθ, the attacker's starting error Uᵀy, the best loss, the Gram
    matrices of (i), (ii), RIR) is the same up to rounding, at a cost that no longer grows with
    n: score MNIST's thousands of images once per split, not once per θ. Rows with n ≤ D are
    returned as they are. One difference: the rank rule of the module docstring counts
    max(rows, d), so singular values within a factor n/(D + 1) of numpy's cut-off (noise, a
    few 1e-12 of σ_max for MNIST) may fall on the other side of it.

    Chapter: {ref}`ch-mnist-pairs`.
    """
    X, y = rows_targets(X, y, "X")
    if len(X) <= X.shape[1]:
        return X, y
    R = torch.linalg.qr(torch.cat([X, y[:, None]], 1), mode="r").R
    return R[:, :-1].contiguous(), R[:, -1].contiguous()


def identity_targets(
    XP,
    yP,
    XH,
    yH,
    *,
    XP_test=None,
    yP_test=None,
    XH_test=None,
    yH_test=None,
    steps: int = 100,
) -> dict[str, float]:
    """The targets that the identity's line-search attacker reaches in ``steps`` steps: its
    relative suboptimality after ``steps`` steps on D_H and on D_P, measured on the held-out
    rows if they are given, else on the training rows, as :func:`score`'s ``target`` and
    ``target_P`` (so ``score(**rows, **identity_targets(**rows))`` works on the rows of
    :func:`immulib.pairs.splits`). The identity then needs exactly ``steps`` steps on those rows
    (or fewer, on a curve that is flat at the end), and a column of steps never reads "not
    reached" for the identity, as a fixed target out of its reach would.

    Chapter: {ref}`ch-house-prices`.
    """
    steps = integer(steps, "steps", minimum=1)
    if _test_split(XP_test, yP_test, XH_test, yH_test):
        XP, yP, XH, yH = XP_test, yP_test, XH_test, yH_test
    return dict(
        target=float(attack_curve(XH, yH, steps=steps)[steps]),
        target_P=float(attack_curve(XP, yP, steps=steps)[steps]),
    )


# ---------------------------------------------------------------------------------------------
# one row, a table


def _best_loss(F: torch.Tensor, y: torch.Tensor) -> float:
    return _spectrum(F, y)[2]


def score(
    theta,
    XP,
    yP,
    XH,
    yH,
    *,
    XP_test=None,
    yP_test=None,
    XH_test=None,
    yH_test=None,
    theta_ref=None,
    target: float = 1e-3,
    target_P: float | None = None,
    max_steps: int = 3000,
    fixed_grid: Iterable[float] = FIXED_GRID,
    convention: str = "pinv",
    tol: float = 1e-6,
) -> dict[str, float | int | bool]:
    """One table row: how an extractor θ looks to the attacker and to the legitimate user.

    Chapter: {ref}`ch-optimal`.

    Parameters
    ----------
    theta
        The extractor, D_in × D_hid (torch tensor or numpy array; float64 internally).
    XP, yP, XH, yH
        Training rows of D_P and D_H (the rows the defender used).
    XP_test, yP_test, XH_test, yH_test
        Held-out rows (all four or none). Without them the ``*_test`` columns are NaN and
        ``slower_than_identity`` falls back to the training rows.
    theta_ref
        The reference θ0 of (i), (ii), RIR (Eq. (17)), ``loss_P_kept`` and ``theta_dist``;
        ``None`` is the identity (Eq. (15)).
    target, max_steps, fixed_grid
        The attackers' target relative suboptimality, step budget and fixed-step grid
        (module docstring; a step count of ``max_steps + 1`` means "not reached").
    target_P
        The D_P attackers' own target (default ``target``): e.g. one the identity reaches,
        ``attack_curve(XP_test, yP_test, steps=N)[N]``, where ``target`` is out of its reach.
    convention
        κ convention of (i), (ii), RIR (:func:`immulib.linalg.condition_number`).
    tol
        Relative tolerance of the flags: (ii) ≤ 1 + tol and loss_P_kept ≤ 1 + tol.

    Returns
    -------
    dict
        ``i``, ``ii``, ``rir`` (:func:`immulib.metrics.rir` against ``theta_ref``), ``kappa_P``,
        ``kappa_H`` (κ(θᵀK_Pθ), κ(θᵀK_Hθ) on the training rows), ``loss_P_kept`` (min_ω of the
        D_P least-squares loss on X_Pθ over that on X_Pθ_ref, training rows; 1 = the D_P optimum
        is kept, Definition 3.1 (c)), ``theta_dist`` (‖θ − θ_ref‖_F), the eight
        :data:`STEP_COLUMNS` ``steps_{H,P}_{train,test}_{exact,fixed}``, and two flags:
        ``def31`` (Definition 3.1 holds: i > 1, ii ≤ 1 + tol, loss_P_kept ≤ 1 + tol) and
        ``slower_than_identity`` (the exact-line-search D_H attacker needs more steps on the
        held-out rows than on the identity's features, X_H_test itself).
    """
    XP, yP = rows_targets(XP, yP, "XP", "yP")
    D, dev = XP.shape[1], XP.device
    XH, yH = rows_targets(XH, yH, "XH", "yH", columns=D, columns_of="XP")
    theta = _theta(theta, "theta", D, dev)
    ref = (
        torch.eye(D, dtype=torch.float64, device=dev)
        if theta_ref is None
        else _theta(theta_ref, "theta_ref", D, dev)
    )
    has_test = _test_split(XP_test, yP_test, XH_test, yH_test)
    target, max_steps, grid = (
        _target(target),
        integer(max_steps, "max_steps", minimum=1),
        _grid(fixed_grid),
    )
    goal = {
        "H": target,
        "P": target if target_P is None else _target(target_P, "target_P"),
    }
    choice(convention, "convention", CONVENTIONS)
    tol = nonneg(tol, "tol")

    r = rir(
        XP, XH, theta, theta0=None if theta_ref is None else ref, convention=convention
    )
    splits = {"train": (XP, yP, XH, yH)}
    if has_test:
        splits["test"] = (
            *rows_targets(
                XP_test, yP_test, "XP_test", "yP_test", columns=D, columns_of="XP"
            ),
            *rows_targets(
                XH_test, yH_test, "XH_test", "yH_test", columns=D, columns_of="XP"
            ),
        )
    spectra = {  # one SVD per split and task, for the attackers and (train, P) the D_P loss
        (split, task): _spectrum(X @ theta, y)
        for split, (Xp, yp, Xh, yh) in splits.items()
        for task, X, y in (("H", Xh, yh), ("P", Xp, yp))
    }
    loss, loss_ref = spectra[("train", "P")][2], _best_loss(XP @ ref, yP)
    floor = 1e-12 * 0.5 * float(yP @ yP)  # "zero loss": both fit D_P exactly
    kept = (
        1.0
        if loss <= floor and loss_ref <= floor
        else (loss / loss_ref if loss_ref > floor else math.inf)
    )
    dist = (
        float(torch.linalg.norm(theta - ref)) if theta.shape == ref.shape else math.nan
    )
    row: dict[str, float | int | bool] = {
        "i": r.i,
        "ii": r.ii,
        "rir": r.rir,
        "kappa_P": r.kappa_P,
        "kappa_H": r.kappa_H,
        "loss_P_kept": kept,
        "theta_dist": dist,
    }
    for split in ("train", "test"):
        for task in ("H", "P"):
            if split not in splits:
                row[f"steps_{task}_{split}_exact"] = row[
                    f"steps_{task}_{split}_fixed"
                ] = math.nan
                continue
            lam, u, _ = spectra[(split, task)]
            row[f"steps_{task}_{split}_exact"] = _steps_exact(
                lam, u, goal[task], max_steps
            )
            row[f"steps_{task}_{split}_fixed"] = _steps_fixed(
                lam, u, goal[task], max_steps, grid
            )
    flag_split = "test" if has_test else "train"
    Xh, yh = splits[flag_split][2:]
    lam, u, _ = _spectrum(Xh, yh)
    row["def31"] = bool(r.i > 1 and r.ii <= 1 + tol and kept <= 1 + tol)
    row["slower_than_identity"] = bool(
        row[f"steps_H_{flag_split}_exact"] > _steps_exact(lam, u, target, max_steps)
    )
    return row


def score_table(thetas: Mapping[str, object], XP, yP, XH, yH, **kwargs) -> pd.DataFrame:
    """Score every extractor of ``thetas`` (name → θ) with :func:`score`; one row per name.

    Adds an ``"identity"`` row first (unless ``thetas`` has one) and, for every step column
    ``c``, the ratio column ``c + "_vs_identity"`` (steps over the identity's steps; > 1: the
    attacker is slower than on the raw inputs). ``kwargs`` are :func:`score`'s keywords.

    Chapter: {ref}`ch-optimal`.
    """
    if not isinstance(thetas, Mapping) or not thetas:
        raise TypeError(
            "thetas must be a non-empty mapping from a method name to its extractor θ"
        )
    for name in thetas:
        if not isinstance(name, str):
            raise TypeError(f"thetas must be keyed by method names (str), got {name!r}")
    D = as_float64(XP, "XP", ndim=2).shape[1]
    named = dict(thetas) if "identity" in thetas else {"identity": np.eye(D), **thetas}
    table = pd.DataFrame.from_dict(
        {name: score(theta, XP, yP, XH, yH, **kwargs) for name, theta in named.items()},
        orient="index",
    )
    table.index.name = "method"
    for c in STEP_COLUMNS:
        table[c + "_vs_identity"] = table[c] / table.loc["identity", c]
    return table


# ---------------------------------------------------------------------------------------------
# step counts as a reader should see them: a count past the budget is a bound, not a measurement


def _counts(x, name: str, max_steps: int, one: bool = False) -> np.ndarray:
    """``x`` (one count, or unless ``one`` a 1-D sequence of them) as an int array, each in
    [0, max_steps + 1]."""
    if isinstance(x, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{name} must be a step count or a sequence of them, got {x!r}")
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be a step count or a sequence of them, got {type(x).__name__}"
        ) from None
    if one and a.ndim:
        raise ValueError(f"{name} must be one step count, got shape {a.shape}")
    if a.ndim > 1 or a.size == 0:
        raise ValueError(
            f"{name} must be one count or a non-empty 1-D sequence of them"
        )
    if not (
        np.isfinite(a) & (a == np.round(a)) & (a >= 0) & (a <= max_steps + 1)
    ).all():
        raise ValueError(
            f"{name} must hold step counts of attack_steps/score with max_steps={max_steps}: "
            f"integers in [0, {max_steps + 1}] ({max_steps + 1} = not reached), got {x!r}"
        )
    return a.astype(np.int64).reshape(-1)


def steps_text(steps, max_steps: int) -> str:
    """A step count of :func:`attack_steps` / :func:`score` as text: ``">max_steps"`` where it is
    ``max_steps + 1`` (the target was not reached within the budget), else the count.

    Chapter: {ref}`ch-optimal`.
    """
    max_steps = integer(max_steps, "max_steps", minimum=1)
    (n,) = _counts(steps, "steps", max_steps, one=True)
    return f">{max_steps}" if n > max_steps else str(int(n))


def ratio_text(steps, base, max_steps: int, *, words: bool = False) -> str:
    """``steps / base`` (e.g. a method's steps over the identity's) as text, to 3 significant
    digits, marked where the budget censors it.

    A count of ``max_steps + 1`` means "more than ``max_steps``", so the ratio is then a bound:
    ``"≥r"`` ("at least r" with ``words``) where only ``steps`` missed the target, ``"≤r"`` ("at
    most r") where only ``base`` did, and ``"–"`` ("not determined") where both did.
    ``steps`` may be the counts of several runs against the same ``base``: their median is shown,
    a bound when a middle count is censored (half of the runs or more missed).

    Chapter: {ref}`ch-optimal`.
    """
    max_steps = integer(max_steps, "max_steps", minimum=1)
    words = flag(words, "words")
    counts = np.sort(_counts(steps, "steps", max_steps))
    (b,) = _counts(base, "base", max_steps, one=True)
    if b == 0:
        raise ValueError("base must be >= 1 (a ratio to 0 steps is not defined), got 0")
    m = len(counts)
    middle = counts[(m - 1) // 2 : m // 2 + 1]  # one count (odd m) or two (even m)
    missed, base_missed = bool(middle[-1] > max_steps), bool(b > max_steps)
    return _marked(middle.mean() / b, missed, base_missed, words)


def _marked(value: float, up: bool, down: bool, words: bool) -> str:
    """``value`` to 3 significant digits, marked as a lower bound where only ``up`` (the truth
    can be larger), an upper bound where only ``down``, and as not determined where both."""
    if up and down:
        return "not determined" if words else "–"
    text = f"{value:.3g}"
    if up:
        return ("at least " if words else "≥") + text
    if down:
        return ("at most " if words else "≤") + text
    return text


def _bound_mask(mask, name: str, n: int) -> np.ndarray:
    if mask is None:
        return np.zeros(n, dtype=bool)
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise TypeError(f"{name} must be a boolean mask, got dtype {m.dtype}")
    if m.shape != (n,):
        raise ValueError(f"{name} must have the shape of values ({n},), got {m.shape}")
    return m


def median_text(values, *, lower=None, upper=None, words: bool = False) -> str:
    """The median of ``values`` as text (3 significant digits), marked where a censored value
    can move it: e.g. per-pair step ratios against each pair's own identity count, some of
    whose counts missed the target.

    ``lower`` (boolean mask) marks the values that are only lower bounds (the true value is at
    least the one given: a count of ``max_steps + 1`` on top of a ratio), ``upper`` those that
    are only upper bounds (the count below the ratio missed). Sorted, the median is the middle
    value (or the mean of the two middle ones); it is exact when no bound can move a middle
    value, i.e. every lower bound lies above the middle and every upper bound below it, since
    raising the first and lowering the second then leave the middle where it is. Otherwise it
    is shown as ``"≥m"`` ("at least m" with ``words``) when only lower bounds can move it, where
    the true median is at least m; ``"≤m"`` ("at most m") when only upper bounds can; ``"–"``
    ("not determined") when both can. With one value this is :func:`ratio_text`'s rule.

    Chapter: {ref}`ch-mnist-pairs`.
    """
    words = flag(words, "words")
    v = as_float64(values, "values", ndim=1).cpu().numpy()
    lo_b = _bound_mask(lower, "lower", v.size)
    up_b = _bound_mask(upper, "upper", v.size)
    if (lo_b & up_b).any():
        raise ValueError(
            "a value cannot be both a lower and an upper bound (its count and its base both "
            "missed: leave it out, or mark it as not determined)"
        )
    # ties: a lower bound sorts after the equal values, an upper bound before them, so that
    # a bound counts as in the middle only where moving it can move the median
    order = np.lexsort((lo_b.astype(int) - up_b.astype(int), v))
    n = v.size
    mid = order[(n - 1) // 2 : n // 2 + 1]
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    up_moves = bool((pos[lo_b] <= n // 2).any())  # a lower bound at or below the middle
    down_moves = bool((pos[up_b] >= (n - 1) // 2).any())
    return _marked(v[mid].mean(), up_moves, down_moves, words)
