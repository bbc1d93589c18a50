"""Benchmark: the MNIST digit-pair sweep of Algorithm 1, fast path against a straightforward implementation.

Both run Algorithm 1 ("ours", full batch, the step sizes of immulib.immunize) on MNIST digit pairs
of the well-posed setup (pixel support of immulib.pairs.pixel_support):

* baseline: :func:`immulib.immunize.immunize` called once per pair on that pair's images, which
  forms the Gram matrices from the images and takes full ``eigh``/``eigvalsh`` decompositions of
  θᵀK_Pθ and θᵀK_Hθ at every step;
* fast (immulib.pairs): Gram matrices once per digit, warm-started extreme eigenpairs, pairs
  batched along a leading dimension (:func:`immulib.pairs.sweep`).

Prints the median per-pair time of each (several repeats, same process, same pairs and steps),
their agreement (``sup="P"``, the loss immunize uses), the full 90-pair sweep time of the fast
path (not with ``--quick``), and on the last line the headline: the speed-up baseline / fast.
``--quick`` uses 2 pairs, 20 steps and 3 repeats (< 1 min on 2 CPU cores). Needs MNIST
(``IMMULIB_DATA`` or the cache).

    python -m benchmarks.mnist_pairs [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

from immulib import data, immunize, pairs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 pairs, 20 steps, 3 repeats (< 1 min)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    n_pairs, steps, repeats = (2, 20, 3) if args.quick else (4, 100, 3)
    torch.set_num_threads(1)
    mnist = data.load_mnist("train")
    t0 = time.perf_counter()
    grams = pairs.digit_grams(mnist, "well_posed", device=args.device)
    t_grams = time.perf_counter() - t0
    chosen = list(pairs.SUBSET[:n_pairs])

    def baseline(grams=grams, chosen=chosen, steps=steps):
        pix = grams.pixels
        thetas = []
        for a, b in chosen:
            ia, ib = pairs.pair_indices(mnist, a, b, seed=0)
            XP, XH = ((mnist.images[i].reshape(len(i), -1)[:, pix] / 255 - pairs.MEAN) / pairs.STD for i in (ia, ib))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                thetas.append(immunize.immunize(XP, np.ones(len(XP)), XH, steps=steps, record_every=steps,
                                                progress=False).theta)
        return torch.stack(thetas)

    def fast(grams=grams, chosen=chosen, steps=steps):
        return pairs.run_batch(grams, chosen, "ours", steps=steps, sup="P")[0].cpu()

    times = {"baseline": [], "fast": []}
    for _ in range(repeats):
        for name, fn in (("baseline", baseline), ("fast", fast)):
            t = time.perf_counter()
            out = fn()
            times[name].append((time.perf_counter() - t) / n_pairs)
            if name == "baseline":
                ref = out
            else:
                err = float(((out - ref).abs().amax((1, 2)) / ref.abs().amax((1, 2))).max())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"MNIST digit pairs, well-posed setup ({len(grams.pixels)} pixels), Algorithm 1, {steps} steps, "
          f"{n_pairs} pairs, median of {repeats}, device {args.device}, 1 torch thread")
    print(f"  ten digit Gram matrices (once): {t_grams:.2f} s")
    print(f"  baseline immulib.immunize, one pair at a time: {med['baseline']:.2f} s per pair")
    print(f"  fast immulib.pairs, pairs batched:              {med['fast']:.2f} s per pair")
    print(f"  max relative difference of θ: {err:.1e}")
    if not args.quick:
        t = time.perf_counter()
        df = pairs.sweep("ours", "well_posed", grams=grams, steps=steps, device=args.device, progress=False)
        full = time.perf_counter() - t
        print(f"  full sweep of Ours, 90 pairs x {steps} steps (a-vs-b head): {full:.0f} s "
              f"({full / 90:.2f} s per pair), {int(df.success.sum())}/90 successes")
        print(f"  baseline estimate for the same sweep: {90 * med['baseline']:.0f} s")
        ga = pairs.digit_grams(mnist, "authors", device=args.device)
        kw = dict(grams=ga, chosen=chosen[:2], steps=10)
        t = time.perf_counter()
        ref = baseline(**kw)
        t_b = (time.perf_counter() - t) / 2
        t = time.perf_counter()
        out = fast(**kw)
        t_f = (time.perf_counter() - t) / 2
        err = float(((out - ref).abs().amax((1, 2)) / ref.abs().amax((1, 2))).max())
        print(f"  authors' setup (784 pixels, rank-deficient), 2 pairs x 10 steps, one run: immunize "
              f"{t_b:.1f} s per pair, fast {t_f:.1f} s per pair ({t_b / t_f:.1f}x), max rel. difference {err:.1e}")
    print(f"speed-up of the fast path over immulib.immunize per pair ({steps} steps): "
          f"{med['baseline'] / med['fast']:.1f}x")


if __name__ == "__main__":
    main()
