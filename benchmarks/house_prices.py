"""Benchmark: the cost of one step of the linear engine, in eigh-equivalents.

Each method of :mod:`immulib.linear` decomposes θᵀK_Pθ and θᵀK_Hθ once per step and reuses the
decompositions for every term, bound and recorded κ, so a step should cost about two to three
``torch.linalg.eigh`` of a D × D matrix. This benchmark measures, in one process, the median time
of a step of each full-batch method (``immulib.linear.run``, record_every = the whole run) and of
one ``eigh`` at the same D, on random problems of sizes D = 64, 256 (and 1024 without
``--quick``) and on House Prices (well-posed setup, D = 71) when the data is there, and prints
the ratios. The last line is the headline: the largest ratio of a step of Ours (adaptive) over
one ``eigh``. ``--quick`` finishes in under a minute on 2 CPU cores.

    python -m benchmarks.house_prices [--quick]
"""

from __future__ import annotations

import argparse

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and few repeats (< 1 min)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sizes = (64, 256) if args.quick else (64, 256, 1024)
    steps, repeats = (5, 3) if args.quick else (10, 5)
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
    headline = 0.0
    print(
        f"median of {repeats} runs of {steps} steps, 1 torch thread; ratio = one step / one eigh"
    )
    for name, prob in problems:
        H = prob.KP[0] / prob.KP[0].abs().max()
        t_eigh = median_seconds(lambda H=H: torch.linalg.eigh(H), repeats * 3)
        cells = []
        for method, kw in methods:
            t = median_seconds(
                lambda prob=prob, method=method, kw=kw: linear.run(
                    prob, method, steps=steps, record_every=10**9, progress=False, **kw
                ),
                repeats,
            ) / (steps + 1)
            ratio = t / t_eigh
            label = method + ("" if not kw else f" ({kw['policy']})")
            cells.append(f"{label} {ratio:.2f}")
            if method == "ours" and not kw:
                headline = max(headline, ratio)
        print(f"{name:>36}: eigh {t_eigh * 1e3:7.2f} ms; " + ", ".join(cells))
    print(f"a step of Ours (adaptive) costs at most {headline:.2f} eigh-equivalents")


if __name__ == "__main__":
    main()
