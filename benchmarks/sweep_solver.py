"""Benchmark: the MNIST sweep's eigensolvers, full ``eigh`` against the partial and extreme ones.

The sweep (:func:`immulib.pairs.sweep`) runs Ours (adaptive policy) on digit pairs of the
well-posed setup as one batched :class:`immulib.linear.Problem`. A step of Ours reads, of H_P,
all its eigenvalues' extremes and v₁, and of H_H σ_k, v_k and ‖H_H‖_F, so the engine's
``solver=`` can be the batched ``torch.linalg.eigh``, :class:`immulib.linalg.PartialEigensolver`
(the default: every eigenvalue by ``eigvalsh``, the two vectors by warm-started inverse
iteration) or :class:`immulib.linalg.ExtremeEigensolver` (LOBPCG, warm-started from the previous
step). This script runs the engine (``immulib.linear.run``, the pairs' problem built once) with
each, in one process, ``--repeats`` times, and prints the median of each run's time divided by
``steps`` batched ``eigh`` of the B Hessians (measured between the runs), the solvers' fallbacks
to a full ``eigh``, and how far their θ and κ(H_H) are from the ``eigh`` run's. The last line
is the headline. Both modes run the sweep's own 100 steps, so that the once-per-run set-up
(θ_0's two full decompositions, K_P's eigenvalues, the last step's) weighs on the ratio as it
does in the sweep (at 8 steps it added about 0.4). ``--quick``: 10 pairs, 2 repeats (about a
minute on 2 CPU cores); the full mode: all 90 pairs, 1 repeat. A second line prints what one
step of the partial solver is made of, in the same unit: two ``eigvalsh`` and the five D × D
products of a step (θᵀK_Pθ, θᵀK_Hθ and θM) are its floor; the rest is two LU factorisations,
their solves and the small operations. Needs MNIST (``IMMULIB_DATA`` or the cache).

    python -m benchmarks.sweep_solver [--quick] [--device cuda] [--pairs N --steps S --repeats R]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from benchmarks._timing import median_seconds
from immulib import data, linear, pairs
from immulib.linalg import ExtremeEigensolver, PartialEigensolver


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 pairs, 8 steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--pairs", type=int, help="number of pairs (overrides the mode)"
    )
    parser.add_argument("--steps", type=int, help="steps (overrides the mode)")
    parser.add_argument("--repeats", type=int, help="repeats (overrides the mode)")
    args = parser.parse_args(argv)
    n_pairs, steps, repeats = (10, 100, 2) if args.quick else (90, 100, 1)
    n_pairs, steps, repeats = (
        args.pairs or n_pairs,
        args.steps or steps,
        args.repeats or repeats,
    )
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    grams = pairs.digit_grams(
        data.load_mnist("train"), "well_posed", device=args.device
    )
    chosen = pairs.all_pairs()[:n_pairs]
    prob = pairs.problem(grams, chosen)
    D = prob.D
    gen = torch.Generator().manual_seed(0)
    omega = (torch.randn(D, generator=gen, dtype=torch.float64) / D**0.5).to(
        prob.KP.device
    )
    sync = torch.cuda.synchronize if prob.KP.is_cuda else (lambda: None)

    def engine(solver):
        t = time.perf_counter()
        theta, _, _, info = linear.run(
            prob, "ours", steps=steps, omega_init=omega, solver=solver, progress=False
        )
        sync()
        return theta, info, time.perf_counter() - t

    H = prob.KH / prob.KH.abs().amax(dim=(-2, -1), keepdim=True)

    def batched_eigh():
        torch.linalg.eigh(H)
        sync()

    solvers = {
        "eigh": lambda: "eigh",
        "partial": PartialEigensolver,
        "extreme": ExtremeEigensolver,
    }
    ratios = {name: [] for name in solvers}
    fallbacks = dict.fromkeys(solvers, 0)
    matrices = dict.fromkeys(solvers, 0)
    thetas = {}
    for _ in range(repeats):
        for name, make in solvers.items():
            thetas[name], info, t_run = engine(make())
            t_eigh = median_seconds(batched_eigh, 3)
            ratios[name].append(t_run / steps / t_eigh)
            if "solver" in info:
                fallbacks[name] += info["solver"]["fallbacks"]
                matrices[name] += info["solver"]["matrices"]
    pieces = {
        "eigvalsh": lambda: torch.linalg.eigvalsh(H),
        "lu_factor": lambda: torch.linalg.lu_factor_ex(H),
        "D x D product": lambda: torch.bmm(H, H),
    }
    t_eigh = median_seconds(batched_eigh, 3)
    cost = {}
    for name, fn in pieces.items():
        cost[name] = median_seconds(lambda fn=fn: (fn(), sync()), 3) / t_eigh
    floor = 2 * cost["eigvalsh"] + 5 * cost["D x D product"]
    ref = thetas["eigh"]
    kap_ref = pairs._kappas(linear._sym(ref.mT @ prob.KH @ ref))["pinv"]
    med = {name: statistics.median(r) for name, r in ratios.items()}
    print(
        f"{n_pairs} pairs × {steps} steps, D = {D}, device {args.device}, 1 torch thread; "
        f"median of {repeats}; unit: one batched eigh of the {n_pairs} Hessians"
    )
    for name in solvers:
        th = thetas[name]
        kap = pairs._kappas(linear._sym(th.mT @ prob.KH @ th))["pinv"]
        print(
            f"{name}: {med[name]:.2f} per step (runs: "
            + ", ".join(f"{r:.2f}" for r in ratios[name])
            + f"); {fallbacks[name]} fallbacks to eigh in {matrices[name]} matrices; vs eigh: "
            f"max relative |Δθ| = {float((th - ref).abs().max() / ref.abs().max()):.1e}, "
            f"|Δκ(H_H)|/κ = {float(((kap - kap_ref) / kap_ref).abs().max()):.1e}"
        )
    print(
        "pieces, in the same unit: "
        + ", ".join(f"{name} {c:.2f}" for name, c in cost.items())
        + f"; the partial solver's floor (2 eigvalsh + 5 products): {floor:.2f}"
    )
    print(
        f"sweep step with the default (partial) solver: {med['partial']:.2f} batched eigh "
        f"(eigh: {med['eigh']:.2f}, extreme: {med['extreme']:.2f}), "
        f"{fallbacks['partial']} fallbacks"
    )


if __name__ == "__main__":
    main()
