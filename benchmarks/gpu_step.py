"""One immunization step of ViT-B/16: closed-form regularizer backward vs autograd through eigvalsh.

Compares, in the same process and on the same model and batches, one step of the paper's deep-net
objective L(D_P) + λ_P·R_well(H̃_P) + λ_H·R_ill(H̃_H) (``immulib.deep_train.immunization_step`` with
the last block and head trainable, float64 768 × 768 Gram matrices) with two implementations of
the regularizers:

The implementation is swapped through the library's own argument
``immulib.deep_train.immunization_step(..., regularizer_fns=(r_ill, r_well))``:

* **closed form**: ``immulib.regularizers.r_ill`` / ``r_well``, whose backward is Eq. (13) and
  σ₁v₁v₁ᵀ − S/p (one ``eigh`` in the forward pass, none in the backward);
* **eigh autograd** (the baseline, written below): the same formulas on the eigenvalues of
  ``torch.linalg.eigvalsh`` with autograd, as the authors' code does.

Prints images per second (median over ``--repeats`` timed steps, both tasks' images counted) and,
on CUDA, peak GPU memory; the last line is the throughput ratio closed form / eigh autograd.
Default: ViT-B/16 at 224 pixels with random weights and synthetic images, batch 64 per task,
on CUDA if available (features in float32 with autocast off). ``--quick``: a tiny ViT on CPU-sized
inputs that finishes in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from immulib import deep_train, networks, regularizers
from immulib.reference import r_ill_eigh, r_well_eigh


def run(args) -> None:
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if args.quick:
        name, kw, img, batch = (
            "vit_tiny_patch16_224",
            dict(patch_size=8, depth=2),
            32,
            16,
        )
    else:
        name, kw, img, batch = "vit_base_patch16_224", {}, 224, args.batch_size
    model = (
        networks.create_model(
            name, num_classes=1000, in_chans=3, img_size=img, seed=0, **kw
        )
        .to(device)
        .eval()
    )
    trainable = set(networks.freeze(model))
    params = [p for n, p in model.named_parameters() if n in trainable]
    opt = torch.optim.SGD(
        params, lr=1e-6, momentum=0.9
    )  # tiny steps: the spectrum stays comparable
    net = networks.FeaturesAndLogits(model)
    g = torch.Generator().manual_seed(0)
    batch_p = (
        torch.randn(batch, 3, img, img, generator=g),
        torch.randint(0, 1000, (batch,), generator=g),
    )
    batch_h = (
        torch.randn(batch, 3, img, img, generator=g),
        torch.randint(0, 1000, (batch,), generator=g),
    )
    variants = {
        "closed form": (regularizers.r_ill, regularizers.r_well),
        "eigh autograd": (r_ill_eigh, r_well_eigh),
    }
    times = {v: [] for v in variants}
    peak = {v: 0 for v in variants}
    print(
        f"{name} at {img} px, batch {batch} per task, device {device} "
        f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} CPU threads'}), "
        f"feature dimension {model.num_features}, {args.repeats} timed steps per variant (after 1 warm-up)"
    )
    for rep in range(args.repeats + 1):
        for variant, fns in variants.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            t = time.perf_counter()
            deep_train.immunization_step(
                net,
                batch_p,
                batch_h,
                opt,
                device=device,
                method="ours",
                lam_P=1e-9,
                lam_H=1.0,
                regularizer_fns=fns,
            )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                peak[variant] = max(
                    peak[variant], torch.cuda.max_memory_allocated(device)
                )
            if rep > 0:
                times[variant].append(time.perf_counter() - t)
    rate = {}
    for variant in variants:
        med = statistics.median(times[variant])
        rate[variant] = 2 * batch / med
        mem = (
            f"{peak[variant] / 2**20:.0f} MiB"
            if device.type == "cuda"
            else "n/a on CPU"
        )
        print(
            f"{variant:14s}: median step {1000 * med:8.1f} ms, {rate[variant]:8.1f} images/s, peak GPU memory {mem}"
        )
    print(
        f"closed-form vs eigh-autograd regularizer backward, one immunization step: "
        f"{rate['closed form'] / rate['eigh autograd']:.2f}x images/s"
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny ViT, small batch: < 1 min on 2 CPU cores",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=64, help="per task (full mode)")
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed steps per variant (default 10; 5 with --quick)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (5 if args.quick else 10)
    warnings.filterwarnings(
        "ignore", category=regularizers.NonUniqueSingularValueWarning
    )
    run(args)


if __name__ == "__main__":
    main()
