"""Regenerate immulib/tables/mnist_sweep.csv: the MNIST digit-pair sweep (paper Fig. 2 / Table 2).

    IMMULIB_DATA=/path/to/data python -m tools.mnist_sweep --setup well_posed --score
    IMMULIB_DATA=/path/to/data python -m tools.mnist_sweep --setup authors --pairs subset
    IMMULIB_DATA=/path/to/data python -m tools.mnist_sweep --setup authors --entries ours_paper r_ill_only
    IMMULIB_DATA=/path/to/data python -m tools.mnist_sweep --setup authors --entries imma constrained --score

Each (setup, method entry) of :data:`immulib.protocol.GRIDS` is run on the chosen pairs with
:func:`immulib.pairs.sweep` at that method's default knobs (Ours (paper): ``policy="paper"``)
and replaces the rows of the pairs it ran (same setup, entry and seed) in the CSV, which is
written after every entry (so a partial file is usable). Times on 2 cores, one used: the
well-posed setup on all 90 pairs with ``--score`` ~12 min (~7 min as two processes, the
entries split between them), the authors' setup on the ten pairs ~30 min with
``--score``, Ours (paper) and R_ill only on all 90 pairs of the authors' setup (the third line)
~70 min, and IMMA and the constrained method on all 90 pairs with ``--score`` (the fourth line)
~65 and ~55 min (each entry's pairs can run in a process of its own, with ``--out`` to a file of
its own, merged afterwards with :func:`tools.tables.replace_rows`). The chapter "Linear
classification: MNIST digit pairs" reads it.

``--score`` also scores every θ from the attacker's side (:class:`tools.attacker.PairAttacker`:
the steps an attacker needs on the pair's training and test images, beside the identity's, with
targets by chapter 05's rule, and ``max_attack_steps``, the attacker's budget); the authors' setup
on the ten pairs with ``--score`` (the second line plus ``--score``) and the fourth line with
other entries are how the file's authors'-setup rows carry those columns, for every method on
all 90 pairs (one entry takes 38–56 min on one core with ``--score``, Opt κ the longest); the
first line carries them for the well-posed rows.

The **fair protocol** (every method tuned by one grid rule, three seeds, all 90 pairs, every θ
scored by the attacker on the test images) is the other tool, ``python -m tools.mnist_tune
--workers 2`` (~11 min on 2 cores), which writes ``mnist_tuned.csv``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from immulib import data, pairs, protocol
from tools.attacker import PairAttacker
from tools.tables import replace_rows

OUT = Path(__file__).resolve().parents[1] / "immulib" / "tables" / "mnist_sweep.csv"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", choices=pairs.SETUPS, default="well_posed")
    parser.add_argument(
        "--entries",
        nargs="+",
        choices=list(protocol.GRIDS),
        default=list(protocol.GRIDS),
    )
    parser.add_argument("--pairs", choices=("all", "subset"), default="all")
    parser.add_argument(
        "--steps",
        type=int,
        default=100,
        help="full-batch steps per method (default 100)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="pairs run together (default 10, or 5 in the authors' setup: a batch of ten "
        "784 x 784 Hessians is 49 MB, and temporaries that large cost page faults)",
    )
    parser.add_argument(
        "--score",
        action="store_true",
        help="score every θ from the attacker's side on the pair's training and test images "
        "(tools.attacker: the steps_* columns, the identity's *_id, def31, dist, ...)",
    )
    parser.add_argument("--ref-steps", type=int, default=100)
    parser.add_argument("--max-attack-steps", type=int, default=3000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    train = data.load_mnist("train")
    grams = pairs.digit_grams(train, args.setup, device=args.device)
    if args.batch_size is None:
        args.batch_size = 5 if args.setup == "authors" else 10
    attacker = (
        PairAttacker(
            train,
            data.load_mnist("test"),
            grams.pixels,
            ref_steps=args.ref_steps,
            max_steps=args.max_attack_steps,
        )
        if args.score
        else None
    )
    for entry in args.entries:
        t0 = time.perf_counter()
        knobs = {"policy": "paper"} if entry == "ours_paper" else {}
        thetas = {}
        df = pairs.sweep(
            protocol.method_of(entry),
            args.setup,
            pairs=args.pairs,
            steps=args.steps,
            seed=args.seed,
            batch_size=args.batch_size,
            grams=grams,
            device=args.device,
            num_threads=1,
            thetas=thetas if attacker else None,
            **knobs,
        )
        if attacker:  # the same columns on both κ conventions' rows of a pair
            cols = {ab: attacker(ab, args.seed, t) for ab, t in thetas.items()}
            scored = pd.DataFrame(
                [cols[(a, b)] for a, b in zip(df.a, df.b, strict=True)], index=df.index
            )
            df = pd.concat([df, scored], axis=1)
            # a step count above the attacker's budget means "not reached"
            df["max_attack_steps"] = args.max_attack_steps
        df["entry"] = entry
        replace_rows(args.out, df, ("setup", "entry", "seed", "a", "b"))
        ok = df[df.convention == "pinv"]
        print(
            f"{args.setup} {entry}: {ok.success.sum()}/{len(ok)} successes, mean RIR {ok.rir.mean():.3g}, "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
