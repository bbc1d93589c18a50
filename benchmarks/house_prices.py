"""Benchmark: Algorithm 1's closed-form preconditioned step against autograd through eigh.

Both compute the same θ-direction of Algorithm 1 on House Prices (well-posed setup, θ near I):

* closed form (immulib): ∇_θL + 2θ(λ_P G_well + λ_H G_ill), G from one eigendecomposition each,
  K⁻¹ never formed (:func:`immulib.immunize.algorithm1_direction`);
* baseline: R_well and R_ill of :mod:`immulib.reference` (``torch.linalg.eigvalsh``, differentiated
  by autograd), then preconditioned with ``torch.linalg.solve(K, ·)``.

Prints the median time per direction of each (several repeats, same process), their agreement,
and on the last line the headline: the speed-up ratio baseline / closed form. ``--quick`` runs
fewer repeats (< 1 min on 2 CPU cores). Also reports Algorithm 1's full run (RIR, seconds).
Needs the House Prices data (``IMMULIB_DATA`` or the cache); falls back to random data.

    python -m benchmarks.house_prices [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

from immulib import immunize as im
from immulib import linalg, metrics, reference


def load():
    from immulib import data

    try:
        hp = data.load_house_prices(setup="well_posed", download=False)
        return hp.XP, hp.yP, hp.XH, "House Prices (well-posed setup)"
    except (FileNotFoundError, OSError):
        rng = np.random.default_rng(0)
        XP, XH = rng.standard_normal((200, 71)), rng.standard_normal((200, 71)) @ np.diag(np.linspace(1, 20, 71))
        return XP, rng.standard_normal(200), XH, "random data (House Prices not found)"


def autograd_direction(XP, yP, XH, theta, omega, lam_P, lam_H):
    """The same direction, by autograd through eigvalsh and an explicit K⁻¹ solve."""
    KP, KH = XP.T @ XP, XH.T @ XH
    th = theta.clone().requires_grad_(True)
    sup = ((XP @ th @ omega - yP) ** 2).mean()
    (g_sup,) = torch.autograd.grad(sup, th)
    (g_well,) = torch.autograd.grad(reference.r_well_eigh(th.T @ KP @ th), th)
    H_H = th.T @ KH @ th
    (g_ill,) = torch.autograd.grad(reference.r_ill_eigh(H_H, k=H_H.shape[0]), th)
    return g_sup + lam_P * torch.linalg.solve(KP, g_well) + lam_H * torch.linalg.solve(KH, g_ill)


def median_time(fn, repeats, inner):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t) / inner)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (< 1 min on 2 CPU cores)")
    args = parser.parse_args(argv)
    repeats, inner = (5, 10) if args.quick else (15, 20)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    XP, yP, XH, name = load()
    XP, yP, XH = (torch.as_tensor(a, dtype=torch.float64) for a in (XP, yP, XH))
    d = XP.shape[1]
    gen = torch.Generator().manual_seed(0)
    theta = torch.eye(d, dtype=torch.float64) + 0.01 * torch.randn(d, d, generator=gen, dtype=torch.float64)
    omega = torch.randn(d, generator=gen, dtype=torch.float64) / d**0.5
    lam_P, lam_H = 1e-4, 1e3
    print(f"data: {name}, D = {d}; {repeats} repeats × {inner} directions each, 1 torch thread")

    closed = im.algorithm1_direction(XP, yP, XH, theta, omega, lam_P, lam_H, k_H=d)
    auto = autograd_direction(XP, yP, XH, theta, omega, lam_P, lam_H)
    print(f"agreement: max |closed − autograd| / max |autograd| = "
          f"{float((closed - auto).abs().max() / auto.abs().max()):.1e}")

    t_closed = median_time(lambda: im.algorithm1_direction(XP, yP, XH, theta, omega, lam_P, lam_H, k_H=d),
                           repeats, inner)
    t_auto = median_time(lambda: autograd_direction(XP, yP, XH, theta, omega, lam_P, lam_H), repeats, inner)
    print(f"closed form (immulib):          median {t_closed * 1e3:.2f} ms per direction")
    print(f"autograd through eigh + solve:  median {t_auto * 1e3:.2f} ms per direction")

    runs = [im.immunize(XP, yP, XH, progress=False, record_every=10**6, seed=s) for s in range(2 if args.quick else 5)]
    rirs = [metrics.rir(XP, XH, r.theta).rir for r in runs]
    print(f"Algorithm 1 (immunize, defaults): RIR {np.mean(rirs):.1f}, median "
          f"{statistics.median(r.seconds for r in runs):.2f} s per seed; κ(K_P) = {linalg.condition_number(XP.T @ XP):.3g}")
    print(f"speed-up of the closed-form direction over autograd-through-eigh: {t_auto / t_closed:.2f}x")


if __name__ == "__main__":
    main()
