"""Benchmark: the MNIST sweep's eigensolvers, full ``eigh`` against the warm-started extreme one.

The sweep (:func:`immulib.pairs.sweep`) runs Ours (adaptive policy) on digit pairs of the
well-posed setup as one batched :class:`immulib.linear.Problem`. Each step needs, of each of its
two Hessians, only the two largest and the smallest eigenpair, so the engine's ``solver=`` can be
the default batched ``torch.linalg.eigh`` or :class:`immulib.linalg.ExtremeEigensolver` (LOBPCG,
warm-started from the previous step, exact-inverse preconditioned at the small end). This script
runs the engine (``immulib.linear.run``, the pairs' problem built once) with both, in one
process, three times, and prints the median of each run's time divided by ``steps`` batched
``eigh`` of the B Hessians (measured between the runs), the fallbacks to a full ``eigh`` of the
extreme solver, and how far its θ and κ(H_H) are from the ``eigh`` run's. The last line is the
headline. ``--quick``: 10 pairs, 8 steps (about a minute on 2 loaded CPU cores); the full mode:
all 90 pairs, 20 steps. Needs MNIST (``IMMULIB_DATA`` or the cache).

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
from immulib.linalg import ExtremeEigensolver


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
    n_pairs, steps, repeats = (10, 8, 3) if args.quick else (90, 20, 3)
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

    r_eigh, r_ext, fallbacks, iters, calls = [], [], 0, 0, 0
    for _ in range(repeats):
        ref, _, t_ref = engine(None)
        solver = ExtremeEigensolver()
        fast, info, t_fast = engine(solver)
        t_eigh = median_seconds(batched_eigh, 3)
        r_eigh.append(t_ref / steps / t_eigh)
        r_ext.append(t_fast / steps / t_eigh)
        fallbacks += info["solver"]["fallbacks"]
        iters += info["solver"]["iterations"]
        calls += info["solver"]["calls"]
    err = float((fast - ref).abs().max() / ref.abs().max())
    kap = [pairs._kappas(linear._sym(t.mT @ prob.KH @ t))["pinv"] for t in (ref, fast)]
    kerr = float(((kap[1] - kap[0]) / kap[0]).abs().max())
    med_eigh, med_ext = statistics.median(r_eigh), statistics.median(r_ext)
    print(
        f"{n_pairs} pairs × {steps} steps, D = {D}, device {args.device}, 1 torch thread; "
        f"median of {repeats}; unit: one batched eigh of the {n_pairs} Hessians"
    )
    print(
        f"run with eigh: {med_eigh:.2f} per step (runs: "
        + ", ".join(f"{r:.2f}" for r in r_eigh)
        + f"); with the extreme solver: {med_ext:.2f} (runs: "
        + ", ".join(f"{r:.2f}" for r in r_ext)
        + ")"
    )
    print(
        f"extreme solver: {iters / max(calls, 1):.1f} LOBPCG iterations per call, "
        f"{fallbacks} fallbacks to eigh in {calls * n_pairs} matrices; "
        f"vs eigh: max relative |Δθ| = {err:.1e}, |Δκ(H_H)|/κ = {kerr:.1e}"
    )
    print(
        f"sweep step with the extreme solver: {med_ext:.2f} batched eigh "
        f"(with eigh: {med_eigh:.2f}), {fallbacks} fallbacks"
    )


if __name__ == "__main__":
    main()
