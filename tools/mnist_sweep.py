"""Regenerate book/data/mnist_sweep.csv: the MNIST digit-pair sweep (paper Fig. 2 / Table 2).

    IMMULIB_DATA=/path/to/data python tools/mnist_sweep.py --setup well_posed --methods ours r_ill_only imma opt_kappa
    IMMULIB_DATA=/path/to/data python tools/mnist_sweep.py --setup authors --methods ours --steps 20

Each (setup, method) is run on all 90 ordered pairs with immulib.pairs.sweep and replaces that
(setup, method)'s rows in the CSV, which is written after every method (so a partial file is
usable). The chapter "Linear classification: MNIST digit pairs" reads it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from immulib import data, immunize, pairs

OUT = Path(__file__).resolve().parents[1] / "book" / "data" / "mnist_sweep.csv"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", choices=pairs.SETUPS, default="well_posed")
    parser.add_argument("--methods", nargs="+", choices=immunize.METHODS, default=list(immunize.METHODS))
    parser.add_argument("--steps", type=int, default=100, help="full-batch steps per method (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    grams = pairs.digit_grams(data.load_mnist("train"), args.setup, device=args.device)
    for method in args.methods:
        df = pairs.sweep(method, args.setup, steps=args.steps, seed=args.seed, grams=grams,
                         device=args.device, num_threads=1)
        old = pd.read_csv(args.out) if args.out.is_file() else pd.DataFrame()
        if len(old):
            old = old[~((old.setup == args.setup) & (old.method == method))]
        pd.concat([old, df]).to_csv(args.out, index=False, float_format="%.6g")
        ok = df[df.convention == "pinv"]
        print(f"{args.setup} {method}: {ok.success.sum()}/{len(ok)} successes, mean RIR {ok.rir.mean():.3g}, "
              f"{df.seconds.sum() / len(df) * len(ok):.0f} s", flush=True)


if __name__ == "__main__":
    main()
