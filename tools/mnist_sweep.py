"""Regenerate immulib/tables/mnist_sweep.csv: the MNIST digit-pair sweep (paper Fig. 2 / Table 2).

    IMMULIB_DATA=/path/to/data python -m tools.mnist_sweep --setup well_posed
    IMMULIB_DATA=/path/to/data python -m tools.mnist_sweep --setup authors --pairs subset
    IMMULIB_DATA=/path/to/data python -m tools.mnist_sweep --setup authors --entries ours_paper r_ill_only

Each (setup, method entry) of :data:`immulib.protocol.GRIDS` is run on the chosen pairs with
:func:`immulib.pairs.sweep` at that method's default knobs (Ours (paper): ``policy="paper"``)
and replaces the rows of the pairs it ran (same setup, entry and seed) in the CSV, which is
written after every entry (so a partial file is usable). Times on 2 cores, one used: the
well-posed setup on all 90 pairs ~9 min, the authors' setup on the ten pairs ~35 min, and Ours
(paper) and R_ill only on all 90 pairs of the authors' setup (the third line) ~70 min. The
chapter "Linear classification: MNIST digit pairs" reads it.

The **fair protocol** (every method tuned by one grid rule, three seeds, all 90 pairs, every θ
scored by the attacker on the test images) is the other tool, ``python -m tools.mnist_tune
--workers 2`` (~11 min on 2 cores), which writes ``mnist_tuned.csv``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from immulib import data, pairs, protocol
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
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    grams = pairs.digit_grams(data.load_mnist("train"), args.setup, device=args.device)
    for entry in args.entries:
        t0 = time.perf_counter()
        knobs = {"policy": "paper"} if entry == "ours_paper" else {}
        df = pairs.sweep(
            protocol.method_of(entry),
            args.setup,
            pairs=args.pairs,
            steps=args.steps,
            seed=args.seed,
            grams=grams,
            device=args.device,
            num_threads=1,
            **knobs,
        )
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
