"""Benchmark: the MNIST sweep's eigensolvers, full ``eigh`` against the partial, tridiagonal and extreme ones.

The sweep (:func:`immulib.pairs.sweep`) runs Ours (adaptive policy) on digit pairs of the
well-posed setup, ``batch_size`` pairs (default 10) at a time as one batched
:class:`immulib.linear.Problem`. A step of Ours reads, of H_P, all its eigenvalues' extremes and
v₁, and of H_H σ_k, v_k and ‖H_H‖_F, so the engine's ``solver=`` can be the batched
``torch.linalg.eigh``, :class:`immulib.linalg.PartialEigensolver` (the default on a GPU: every
eigenvalue by ``eigvalsh``, the two vectors by warm-started inverse iteration),
:class:`immulib.linalg.TridiagonalEigensolver` (the default on the CPU: one Householder
tridiagonalisation per matrix, the few eigenvalues and the one vector the step reads from it)
or :class:`immulib.linalg.ExtremeEigensolver` (LOBPCG, warm-started from the previous step). This
script runs the engine (``immulib.linear.run``) on the pairs in the sweep's chunks (the
problems built once, a fresh solver per chunk) with each solver, in one process, ``--repeats``
times, and prints the median of each sweep's time divided by ``steps`` batched ``eigh`` of
every chunk's Hessians (measured between the runs), the solvers' fallbacks to a full ``eigh``,
and how far their θ and κ(H_H) are from the ``eigh`` run's. The last line is the headline. Both
modes run the sweep's own 100 steps, so that the once-per-run set-up (θ_0's two full
decompositions, K_P's eigenvalues, the last step's) weighs on the ratio as it does in the
sweep (at 8 steps it added about 0.4). ``--quick``: 10 pairs, 2 repeats (about a minute on 2
CPU cores); the full mode: all 90 pairs, 1 repeat (about 5 minutes). ``--batch-size 0`` runs
every pair in one batch instead: with 90 pairs each D × D batch is 36 MB, allocated afresh
(and page-faulted) several times a step, and the ratio rises by about 0.6 on a CPU. A second
line prints what one step of the partial solver is made of, in the same unit for one chunk: two
``eigvalsh`` and the five D × D products of a step (θᵀK_Pθ, θᵀK_Hθ and θM) are its floor; the
rest is two LU factorisations, their solves and the small operations. On the CPU the same line
gives the tridiagonal solver's floor: two Householder reductions (``sytrd``) and the five
products. Needs MNIST
(``IMMULIB_DATA`` or the cache).

    python -m benchmarks.sweep_solver [--quick] [--device cuda] [--pairs N --steps S --repeats R]
        [--batch-size B]
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time
import warnings

import torch

from benchmarks._timing import median_seconds
from immulib import data, linear, pairs
from immulib.linalg import (
    ExtremeEigensolver,
    PartialEigensolver,
    TridiagonalEigensolver,
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="10 pairs, 100 steps, 2 repeats (about a minute)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--pairs", type=int, help="number of pairs (overrides the mode)"
    )
    parser.add_argument("--steps", type=int, help="steps (overrides the mode)")
    parser.add_argument("--repeats", type=int, help="repeats (overrides the mode)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=inspect.signature(pairs.sweep).parameters["batch_size"].default,
        help="pairs run together, as pairs.sweep's batch_size (0: all in one batch)",
    )
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
    batch = args.batch_size or len(chosen)
    # the pairs in the sweep's own chunks (pairs.sweep runs batch_size pairs at a time)
    chunks = [
        pairs.problem(grams, chosen[i : i + batch])
        for i in range(0, len(chosen), batch)
    ]
    D = chunks[0].D
    gen = torch.Generator().manual_seed(0)
    omega = (torch.randn(D, generator=gen, dtype=torch.float64) / D**0.5).to(
        chunks[0].KP.device
    )
    sync = torch.cuda.synchronize if chunks[0].KP.is_cuda else (lambda: None)

    def engine(make):
        """Every chunk with a fresh solver, as the sweep runs them: (θ of every pair, the
        solvers' fallbacks and matrices, the time)."""
        thetas, fallbacks, matrices, t = [], 0, 0, 0.0
        for prob in chunks:
            start = time.perf_counter()
            theta, _, _, info = linear.run(
                prob,
                "ours",
                steps=steps,
                omega_init=omega,
                solver=make(),
                progress=False,
            )
            sync()
            t += time.perf_counter() - start
            thetas.append(theta)
            if "solver" in info:
                fallbacks += info["solver"]["fallbacks"]
                matrices += info["solver"]["matrices"]
        return torch.cat(thetas), fallbacks, matrices, t

    Hs = [prob.KH / prob.KH.abs().amax(dim=(-2, -1), keepdim=True) for prob in chunks]
    H = Hs[0]

    def batched_eigh():
        for M in Hs:
            torch.linalg.eigh(M)
        sync()

    solvers = {
        "eigh": lambda: "eigh",
        "partial": PartialEigensolver,
        "extreme": ExtremeEigensolver,
    }
    if not chunks[0].KP.is_cuda:  # a CPU solver
        solvers["tridiagonal"] = TridiagonalEigensolver
    default = "partial" if chunks[0].KP.is_cuda else "tridiagonal"
    ratios = {name: [] for name in solvers}
    fallbacks = dict.fromkeys(solvers, 0)
    matrices = dict.fromkeys(solvers, 0)
    thetas = {}
    for _ in range(repeats):
        for name, make in solvers.items():
            thetas[name], n_fall, n_mat, t_run = engine(make)
            t_eigh = median_seconds(batched_eigh, 3)
            ratios[name].append(t_run / steps / t_eigh)
            fallbacks[name] += n_fall
            matrices[name] += n_mat
    pieces = {
        "eigvalsh": lambda: torch.linalg.eigvalsh(H),
        "lu_factor": lambda: torch.linalg.lu_factor_ex(H),
        "D x D product": lambda: torch.bmm(H, H),
    }
    if not H.is_cuda:  # the tridiagonal solver's own reduction, one matrix at a time
        from scipy.linalg import lapack

        pieces["sytrd"] = lambda: [
            lapack.dsytrd(M.numpy().T, lower=1, lwork=64 * D) for M in H
        ]
    t_eigh = median_seconds(lambda: (torch.linalg.eigh(H), sync()), 3)
    cost = {}
    for name, fn in pieces.items():
        cost[name] = median_seconds(lambda fn=fn: (fn(), sync()), 3) / t_eigh
    floor = 2 * cost["eigvalsh"] + 5 * cost["D x D product"]
    ref = thetas["eigh"]
    KH = torch.cat([prob.KH for prob in chunks])
    kap_ref = pairs._kappas(linear._sym(ref.mT @ KH @ ref))["pinv"]
    med = {name: statistics.median(r) for name, r in ratios.items()}
    print(
        f"{n_pairs} pairs × {steps} steps, D = {D}, device {args.device}, 1 torch thread, "
        f"{batch} pairs at a time; median of {repeats}; unit: a batched eigh of each "
        "chunk's Hessians (one eigh of every pair's H_H)"
    )
    for name in solvers:
        th = thetas[name]
        kap = pairs._kappas(linear._sym(th.mT @ KH @ th))["pinv"]
        print(
            f"{name}: {med[name]:.2f} per step (runs: "
            + ", ".join(f"{r:.2f}" for r in ratios[name])
            + f"); {fallbacks[name]} fallbacks to eigh in {matrices[name]} matrices; vs eigh: "
            f"max relative |Δθ| = {float((th - ref).abs().max() / ref.abs().max()):.1e}, "
            f"|Δκ(H_H)|/κ = {float(((kap - kap_ref) / kap_ref).abs().max()):.1e}"
        )
    print(
        f"pieces, per chunk of {len(chunks[0].KH)} pairs, in units of its batched eigh: "
        + ", ".join(f"{name} {c:.2f}" for name, c in cost.items())
        + f"; the partial solver's floor (2 eigvalsh + 5 products): {floor:.2f}"
        + (
            f", the tridiagonal one's (2 sytrd + 5 products): "
            f"{2 * cost['sytrd'] + 5 * cost['D x D product']:.2f}"
            if "sytrd" in cost
            else ""
        )
    )
    others = ", ".join(f"{n}: {med[n]:.2f}" for n in solvers if n != default)
    print(
        f"sweep step with the default ({default}) solver: {med[default]:.2f} batched eigh "
        f"({others}), {fallbacks[default]} fallbacks"
    )


if __name__ == "__main__":
    main()
