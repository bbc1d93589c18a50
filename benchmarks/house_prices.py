"""Benchmark: the cost of one step of the linear engine, in eigh-equivalents.

Each method of :mod:`immulib.linear` decomposes θᵀK_Pθ and θᵀK_Hθ once per step (both in one
batched call) and reuses the decompositions for every term, bound and recorded κ (θ_0's also for the weights, the ranks and
step 0; of K_P and of the last recorded iterate only the eigenvalues are computed). A step of
Ours costs the two decompositions (from D = ``linear.PARTIAL_MIN_D`` on, the tridiagonal
solver's, since this benchmark runs on the CPU: one Householder reduction of each Hessian, the
few eigenvalues and the two eigenvectors the step reads), five D × D products (θᵀKθ twice,
θ times one combination of the two Hessians) and a rank-3 update; its per-problem step sizes
are computed on the host (numpy), so at D ≤ 100, where torch's per-call cost is what remains,
a step of Ours makes about 92 torch calls with ``eigh`` and 128 with the partial solver (views
included, counted with ``torch.profiler`` on House Prices). This benchmark measures, in
one process, the time per step of a run of each full-batch method (``immulib.linear.run``,
record_every = the whole run, its once-per-run set-up included) and of one ``eigh`` at the same
D just before and after it, three times each, on random problems of sizes D = 64, 256 (and 1024
without ``--quick``) and on House Prices (well-posed setup, D = 71) when the data is there, and
prints the medians of the ratios, and beside them the same ratio for a bare loop of what a step
cannot avoid (θᵀK_Pθ, θᵀK_Hθ, an eigh of each, θ − θC): the floor of any engine built from
these torch calls. The last line is the headline: the largest ratio of a step
of Ours (adaptive) over one ``eigh``, and the largest at D ≥ 256. ``--quick`` finishes in about
10 s on 2 CPU cores. It runs on the CPU only (its problems are CPU tensors).

    python -m benchmarks.house_prices [--quick]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from benchmarks._timing import median_seconds
from immulib import linear


def _problem(D: int, seed: int = 0) -> linear.Problem:
    rng = np.random.default_rng(seed)
    n = 2 * D
    XP = rng.standard_normal((n, D)) @ np.diag(np.linspace(1, 4, D))
    Q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    XH = rng.standard_normal((n, D)) @ np.diag(np.linspace(1, 8, D)) @ Q
    return linear.Problem.from_data(
        XP, XP @ rng.standard_normal(D), XH, XH @ rng.standard_normal(D)
    )


def _house_prices():
    try:
        from immulib import data

        hp = data.load_house_prices(setup="well_posed", download=False)
    except (FileNotFoundError, OSError, ValueError):
        return None
    return linear.Problem.from_data(hp.XP, hp.yP, hp.XH, hp.yH)


def _per_step(prob, fn, steps, repeats):
    """Median over ``repeats`` of ``fn()``'s time divided by ``steps`` eigh of a D × D Gram
    (timed just before and just after each call), and eigh's time."""
    H = prob.KH[0] / prob.KH[0].abs().max()
    ratios, eighs = [], []

    def eigh_time():
        return median_seconds(lambda: torch.linalg.eigh(H), 7)

    for _ in range(repeats):
        before = eigh_time()
        t = median_seconds(fn, 1)
        t_eigh = (before + eigh_time()) / 2
        ratios.append(t / steps / t_eigh)
        eighs.append(t_eigh)
    return statistics.median(ratios), statistics.median(eighs)


def _step_cost(prob, method, kw, steps, repeats):
    """A run's time per step in eigh-equivalents (its set-up included), and eigh's time."""
    return _per_step(
        prob,
        lambda: linear.run(
            prob, method, steps=steps, record_every=10**9, progress=False, **kw
        ),
        steps,
        repeats,
    )


def _floor(prob, steps, repeats):
    """The same unit for a loop that does only what a step of Ours cannot avoid: θᵀK_Pθ and
    θᵀK_Hθ (four products), one eigh of each, and θ − θC (one product); no step sizes, no
    vectors picked, no checks. What a step costs above this is the engine's own work."""
    theta = torch.eye(prob.D, dtype=torch.float64).expand(prob.B, -1, -1).clone()
    C = 1e-3 * prob.KP / prob.KP.abs().amax()

    def loop():
        th = theta
        for _ in range(steps):
            rawP = torch.bmm(torch.bmm(th.mT, prob.KP), th)
            rawH = torch.bmm(torch.bmm(th.mT, prob.KH), th)
            torch.linalg.eigh(rawP)
            torch.linalg.eigh(rawH)
            th = torch.baddbmm(th, th, C, alpha=-1)

    return _per_step(prob, loop, steps, repeats)[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and few repeats (~10 s)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sizes = (64, 256) if args.quick else (64, 256, 1024)
    repeats = 3
    problems = [(f"random D = {D}", _problem(D)) for D in sizes]
    hp = _house_prices()
    if hp is not None:
        problems.insert(0, ("House Prices (well-posed), D = 71", hp))
    methods = [
        ("ours", {}),
        ("ours", {"policy": "paper"}),
        ("constrained", {}),
        ("opt_kappa", {}),
    ]
    headline, where, large = 0.0, "", 0.0
    print(
        f"median of {repeats}; ratio = a run's time per step (its set-up included) / one eigh "
        "of a D × D Gram timed around it; 1 torch thread"
    )
    for name, prob in problems:
        steps = 60 if prob.D <= 100 else 15 if prob.D <= 256 else 8
        cells, t_eigh = [], 0.0
        for method, kw in methods:
            step, t_eigh = _step_cost(prob, method, kw, steps, repeats)
            label = method + ("" if not kw else f" ({kw['policy']})")
            cells.append(f"{label} {step:.2f}")
            if method == "ours" and not kw:
                if step > headline:
                    headline, where = step, name
                if prob.D >= 256:
                    large = max(large, step)
        floor = _floor(prob, steps, repeats)
        print(
            f"{name} (eigh {t_eigh * 1e3:.2f} ms, {steps} steps): "
            + ", ".join(cells)
            + f"; floor (2 eigh + 5 products, nothing else) {floor:.2f}"
        )
    print(
        f"a step of Ours (adaptive) costs at most {headline:.2f} eigh-equivalents "
        f"({where}); at D >= 256 at most {large:.2f}"
    )


if __name__ == "__main__":
    main()
