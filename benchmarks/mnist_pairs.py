"""Benchmark: the MNIST digit-pair sweep, the batched engine against one ``immunize`` call per pair.

Both run Ours (adaptive policy, full batch) on MNIST digit pairs of the well-posed setup with the
supervised loss on D_P (``sup="P"``, the loss :func:`immulib.immunize` uses), so they compute the
same θ (checked):

* baseline: :func:`immulib.immunize` once per pair on that pair's images (it forms the Gram
  matrices from the images and runs the engine with B = 1);
* batched: :func:`immulib.pairs.run_batch` on all pairs at once (ten Gram matrices computed once,
  the pairs stacked along the leading dimension of one :class:`immulib.linear.Problem`).

Also prints the batched step's cost in batched-``eigh`` equivalents. The last line is the
headline: the speed-up baseline / batched. ``--quick``: 4 pairs, 10 steps, 3 repeats (< 1 min on
2 CPU cores). Needs MNIST (``IMMULIB_DATA`` or the cache).

    python -m benchmarks.mnist_pairs [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch

import immulib
from benchmarks._timing import median_seconds
from immulib import data, pairs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="4 pairs, 10 steps, 3 repeats (< 1 min)"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    n_pairs, steps, repeats = (4, 10, 3) if args.quick else (10, 50, 3)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    mnist = data.load_mnist("train")
    grams = pairs.digit_grams(mnist, "well_posed", device=args.device)
    chosen = pairs.all_pairs()[:n_pairs]
    feats = {}
    for a, b in chosen:
        ia, ib = pairs.pair_indices(mnist, a, b)
        feats[(a, b)] = (
            pairs.digit_features(mnist.images[ia], grams.pixels),
            pairs.digit_features(mnist.images[ib], grams.pixels),
        )

    def one_by_one():
        return [
            immulib.immunize(
                XP,
                np.ones(len(XP)),
                XH,
                steps=steps,
                progress=False,
                record_every=10**9,
            ).theta
            for XP, XH in feats.values()
        ]

    def batched():
        return pairs.run_batch(
            grams, chosen, "ours", steps=steps, sup="P", record_every=10**9
        )[0]

    ref, fast = one_by_one(), batched()
    err = max(
        float((fast[j].cpu() - ref[j]).abs().max() / ref[j].abs().max())
        for j in range(n_pairs)
    )
    t_ref, t_fast = (
        median_seconds(one_by_one, repeats),
        median_seconds(batched, repeats),
    )
    H = grams.K[:n_pairs] / grams.K[:n_pairs].abs().amax(dim=(-2, -1), keepdim=True)
    t_eigh = median_seconds(lambda: torch.linalg.eigh(H), repeats * 3)
    print(
        f"{n_pairs} pairs × {steps} steps, D = {len(grams.pixels)}, device {args.device}; "
        f"agreement max relative |Δθ| = {err:.1e}"
    )
    print(
        f"one immunize per pair: {t_ref / n_pairs:.3f} s per pair; batched: {t_fast / n_pairs:.3f} s per pair"
    )
    print(
        f"batched step = {t_fast / (steps + 1) / t_eigh:.2f} batched eigh of the {n_pairs} Grams"
    )
    print(
        f"speed-up of the batched engine over one immunize call per pair: {t_ref / t_fast:.2f}x"
    )


if __name__ == "__main__":
    main()
