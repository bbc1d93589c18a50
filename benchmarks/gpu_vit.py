"""Full-scale GPU ViT immunization in one script (issue 13): agreement, ViT-B/16 run, throughput, DDP.

Four parts, each printed as it finishes:

1. **CPU/CUDA agreement** (skipped without CUDA): the same small seeded ResNet gives the same
   float32 features, κ of their Gram matrix and RIR_θ0 on CPU and CUDA, within ``FEATURE_RTOL`` and
   ``LOG_KAPPA_ATOL`` (features are computed with autocast and TF32 off on every device).
2. **ViT immunization**: ViT-B/16 at 224 px (``--quick``: a tiny ViT at 32 px), random init (or
   timm's ImageNet weights when a Hugging Face cache has them), pre-trained on D_P = MNIST (resized,
   3 channels) for ``--pretrain-seconds``, then its last block immunized against D_H =
   Fashion-MNIST with Ours and the constrained method; RIR_θ0 over 20 groups of 100 (the paper's),
   D_P accuracy before and after, and the linear-probe attack curve on θ0 and on each immunized model.
3. **Throughput and memory**: immunization steps/s and images/s at batch 64 per task for ResNet18
   and ViT-B/16, peak GPU memory, against the same step without the regularizers (supervised
   loss only): the overhead ratio of R_ill/R_well.
4. **DDP**: ``torchrun --nproc_per_node 1 -m immulib.deep_ddp ... --evaluate`` (NCCL on CUDA, gloo
   on CPU) runs a few steps end to end and its evaluation.

On a GPU the figures are appended to ``benchmarks/gpu_results.json`` (GPU name, date, commit);
on a CPU nothing is written. The last line is the headline. ``--quick`` runs everything at tiny
size on the CPU in under a minute on 2 cores (the CI test and the performance page run it).
Data: ``IMMULIB_DATA`` (or the user cache) must hold MNIST and Fashion-MNIST.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from immulib import (
    data,
    deep_eval,
    deep_objective,
    deep_train,
    image_data,
    networks,
    regularizers,
)
from immulib.linalg import condition_number

ROOT = Path(__file__).resolve().parent.parent

FEATURE_RTOL = 1e-4  # max |f_cpu − f_cuda| / max |f_cpu|
LOG_KAPPA_ATOL = 0.05  # |log κ_cpu − log κ_cuda| of a 100-sample feature Gram matrix
RESULTS = ROOT / "benchmarks" / "gpu_results.json"


def settings(quick: bool) -> dict:
    if quick:
        return dict(
            vit="vit_tiny_patch16_224",
            vit_kw=dict(patch_size=8, depth=2, embed_dim=32, num_heads=2),
            resnet_kw=dict(channels=(8, 16, 32, 64), stem_width=8),
            img=32,
            batch=16,
            n_train=256,
            n_test=128,
            steps=4,
            n_groups=3,
            group_size=16,
            probe_epochs=2,
            repeats=2,
            ddp_steps=2,
        )
    return dict(
        vit="vit_base_patch16_224",
        vit_kw={},
        resnet_kw={},
        img=224,
        batch=64,
        n_train=4096,
        n_test=1000,
        steps=100,
        n_groups=20,
        group_size=100,
        probe_epochs=5,
        repeats=10,
        ddp_steps=5,
    )


def load(cfg):
    def task(loader, n_train, n_test):
        tr = image_data.from_imageset(loader("train"), n=n_train, seed=0)
        te = image_data.from_imageset(loader("test"), n=n_test, seed=0)
        return [
            image_data.resized(d, img_size=cfg["img"], channels=3) for d in (tr, te)
        ]

    return task(data.load_mnist, cfg["n_train"], cfg["n_test"]), task(
        data.load_fashion_mnist, cfg["n_train"], cfg["n_test"]
    )


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def agreement(cfg, dp, dh, devices=("cpu", "cuda")) -> dict:
    """Part 1: features, κ and RIR_θ0 of one seeded model on CPU and on CUDA (``devices``)."""
    if "cuda" in devices and not torch.cuda.is_available():
        print("1. CPU/CUDA agreement: skipped (no CUDA on this machine)", flush=True)
        return {"skipped": True}
    m = networks.create_model(
        "resnet18",
        num_classes=10,
        in_chans=3,
        img_size=cfg["img"],
        seed=0,
        **cfg["resnet_kw"],
    )
    m.eval()
    other = networks.create_model(
        "resnet18",
        num_classes=10,
        in_chans=3,
        img_size=cfg["img"],
        seed=1,
        **cfg["resnet_kw"],
    ).eval()
    idx = list(range(cfg["group_size"]))
    out = {}
    for tag, dev in zip(("cpu", "cuda"), devices, strict=False):
        f, _ = deep_eval.extract_features(m, dp, indices=idx, device=dev)
        k = math.log(condition_number(deep_objective.feature_gram(f)))
        r = deep_eval.rir_theta0(
            m, other, dp, dh, n_groups=2, group_size=cfg["group_size"], device=dev
        )
        out[tag] = (f, k, r.rir)
        m.cpu(), other.cpu()
    f_err = float(
        (out["cpu"][0] - out["cuda"][0]).abs().max() / out["cpu"][0].abs().max()
    )
    k_err = abs(out["cpu"][1] - out["cuda"][1])
    r_err = abs(math.log(out["cpu"][2] / out["cuda"][2]))
    ok = (
        f_err <= FEATURE_RTOL
        and k_err <= LOG_KAPPA_ATOL
        and r_err <= 2 * LOG_KAPPA_ATOL
    )
    print(
        f"1. CPU/CUDA agreement: features max rel. error {f_err:.1e} (≤ {FEATURE_RTOL:g}), |Δ log κ| {k_err:.1e} "
        f"(≤ {LOG_KAPPA_ATOL:g}), |Δ log RIR_θ0| {r_err:.1e}: {'agree' if ok else 'DISAGREE'}",
        flush=True,
    )
    return {
        "feature_rel_error": f_err,
        "log_kappa_error": k_err,
        "log_rir_error": r_err,
        "agree": ok,
    }


def vit_run(cfg, dp, dh, dev, pretrain_seconds) -> dict:
    """Part 2: pre-train a ViT on MNIST for a time budget, immunize (Ours, constrained), measure."""
    (dp_tr, dp_te), (dh_tr, dh_te) = dp, dh
    pretrained = bool(
        os.environ.get("HF_HOME")
        or Path.home().joinpath(".cache", "huggingface", "hub").is_dir()
    )
    try:
        theta0 = networks.create_model(
            cfg["vit"],
            num_classes=10,
            in_chans=3,
            img_size=cfg["img"],
            seed=0,
            pretrained=pretrained,
            **cfg["vit_kw"],
        )
    except Exception:  # no weights in the cache: random initialisation
        pretrained = False
        theta0 = networks.create_model(
            cfg["vit"],
            num_classes=10,
            in_chans=3,
            img_size=cfg["img"],
            seed=0,
            **cfg["vit_kw"],
        )
    theta0.to(dev).train()
    opt = torch.optim.AdamW(
        theta0.parameters(), lr=1e-4 if pretrained else 3e-4, weight_decay=0.05
    )
    stream = image_data.batches(dp_tr, cfg["batch"], 0)
    t, n_steps = time.perf_counter(), 0
    while time.perf_counter() - t < pretrain_seconds:
        x, y = next(stream)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = F.cross_entropy(theta0(x.to(dev)).float(), y.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n_steps += 1
    theta0.eval()
    for p in theta0.parameters():
        p.requires_grad_(False)
    acc0 = deep_eval.accuracy(theta0, dp_te, device=dev)
    z = {
        k: networks.block_inputs(theta0, d, device=dev)
        for k, d in (("p", dp_tr), ("h", dh_tr))
    }
    z = {k: v.to("cpu") for k, v in z.items()}
    out = {
        "model": cfg["vit"],
        "img_size": cfg["img"],
        "imagenet_weights": pretrained,
        "pretrain_steps": n_steps,
        "pretrain_seconds": pretrain_seconds,
        "acc_p_theta0": acc0,
    }

    def probe(m):
        return deep_eval.attack_curves(
            m,
            dh_tr,
            dh_te,
            attackers=["probe"],
            epochs=cfg["probe_epochs"],
            batch_size=cfg["batch"],
            device=dev,
        )["probe"].tolist()

    out["probe_theta0"] = probe(theta0)
    print(
        f"2. {cfg['vit']} at {cfg['img']} px ({'ImageNet weights' if pretrained else 'random init'}), "
        f"pre-trained {n_steps} steps in {pretrain_seconds:g} s: D_P accuracy {100 * acc0:.2f} %",
        flush=True,
    )
    for method in ("ours", "constrained"):
        lp, lh = deep_objective.balance_lambdas(
            theta0, dp_tr, dh_tr, method=method, batch_size=cfg["batch"], device=dev
        )
        res = deep_train.immunize_model(
            theta0,
            dp_tr,
            dh_tr,
            method=method,
            lam_P=lp,
            lam_H=lh,
            steps=cfg["steps"],
            batch_size=cfg["batch"],
            eta=1e-3,
            max_grad_norm=10.0,
            block_inputs_p=z["p"],
            block_inputs_h=z["h"],
            device=dev,
            progress=False,
        )
        r = deep_eval.rir_theta0(
            theta0,
            res.model,
            dp_tr,
            dh_tr,
            n_groups=cfg["n_groups"],
            group_size=cfg["group_size"],
            block_inputs_p=z["p"],
            block_inputs_h=z["h"],
            device=dev,
        )
        acc = deep_eval.accuracy(res.model, dp_te, device=dev)
        out[method] = {
            "lam_P": lp,
            "lam_H": lh,
            "steps": cfg["steps"],
            "seconds": res.seconds,
            "i": r.i,
            "ii": r.ii,
            "rir_theta0": r.rir,
            "acc_p": acc,
            "probe": probe(res.model),
        }
        print(
            f"   {method}: RIR_θ0 {r.rir:.3g} ((i) {r.i:.3g}, (ii) {r.ii:.3g}), D_P accuracy {100 * acc0:.2f} → "
            f"{100 * acc:.2f} %, probe after 1 epoch {100 * out[method]['probe'][1]:.1f} % "
            f"(θ0 {100 * out['probe_theta0'][1]:.1f} %)",
            flush=True,
        )
    return out


def throughput(cfg, dev) -> dict:
    """Part 3: immunization steps/s with and without the regularizers, and peak GPU memory."""
    out = {}
    for name, kw in (("resnet18", cfg["resnet_kw"]), (cfg["vit"], cfg["vit_kw"])):
        model = networks.create_model(
            name, num_classes=1000, in_chans=3, img_size=cfg["img"], seed=0, **kw
        )
        model.to(dev).eval()
        params = [
            p for n, p in model.named_parameters() if n in set(networks.freeze(model))
        ]
        opt = torch.optim.SGD(params, lr=1e-6, momentum=0.9)
        net = networks.FeaturesAndLogits(model)
        g = torch.Generator().manual_seed(0)
        b = cfg["batch"]
        bp = (
            torch.randn(b, 3, cfg["img"], cfg["img"], generator=g),
            torch.randint(0, 1000, (b,), generator=g),
        )
        bh = (
            torch.randn(b, 3, cfg["img"], cfg["img"], generator=g),
            torch.randint(0, 1000, (b,), generator=g),
        )

        def ours():
            deep_train.immunization_step(
                net, bp, bh, opt, device=dev, method="ours", lam_P=1e-9, lam_H=1.0
            )

        def plain():  # the same forward of both batches, the supervised loss only
            feats, logits = net(torch.cat([bp[0], bh[0]]).to(dev))
            loss = F.cross_entropy(logits[:b], bp[1].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        row = {}
        for variant, fn in (("regularized", ours), ("plain", plain)):
            times, peak = [], 0
            for rep in range(cfg["repeats"] + 1):
                sync(dev)
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                t = time.perf_counter()
                fn()
                sync(dev)
                if rep:
                    times.append(time.perf_counter() - t)
                if dev.type == "cuda":
                    peak = max(peak, torch.cuda.max_memory_allocated(dev))
            med = statistics.median(times)
            row[variant] = {
                "steps_per_s": 1 / med,
                "images_per_s": 2 * b / med,
                "peak_mib": peak / 2**20,
            }
        row["overhead"] = (
            row["plain"]["steps_per_s"] / row["regularized"]["steps_per_s"]
        )
        out[name] = row
        mem = (
            f", peak GPU memory {row['regularized']['peak_mib']:.0f} MiB"
            if dev.type == "cuda"
            else ""
        )
        print(
            f"3. {name} at {cfg['img']} px, batch {b} per task: {row['regularized']['steps_per_s']:.2f} steps/s "
            f"({row['regularized']['images_per_s']:.0f} images/s){mem}; without regularizers "
            f"{row['plain']['steps_per_s']:.2f} steps/s: overhead × {row['overhead']:.2f}",
            flush=True,
        )

    return out


def ddp_smoke(cfg, dev) -> dict:
    """Part 4: torchrun with one process, a few steps, and the evaluation."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "immunized.pt"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "1",
            "-m",
            "immulib.deep_ddp",
            "--model-name",
            "resnet18",
            "--model-kwargs",
            json.dumps(cfg["resnet_kw"]),
            "--data-p",
            "mnist",
            "--data-h",
            "fashion_mnist",
            "--img-size",
            str(cfg["img"]),
            "--in-chans",
            "3",
            "--n-train",
            str(cfg["n_train"]),
            "--n-test",
            str(cfg["n_test"]),
            "--steps",
            str(cfg["ddp_steps"]),
            "--batch-size",
            str(cfg["batch"]),
            "--eta",
            "1e-3",
            "--num-workers",
            "0",
            "--out",
            str(out),
            "--evaluate",
            "--n-groups",
            "2",
            "--group-size",
            str(cfg["group_size"]),
            "--attack-epochs",
            "1",
        ]
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
        t = time.perf_counter()
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
        )
        seconds = time.perf_counter() - t
        ok = proc.returncode == 0 and out.with_suffix(".eval.json").is_file()
        report = json.loads(out.with_suffix(".eval.json").read_text()) if ok else {}
    backend = "nccl" if dev.type == "cuda" else "gloo"
    print(
        f"4. torchrun --nproc_per_node 1 ({backend}): {'ok' if ok else 'FAILED'} in {seconds:.0f} s"
        + (
            f", RIR_θ0 {report['rir_theta0']['rir']:.3g}"
            if ok
            else "\n" + proc.stderr[-2000:]
        ),
        flush=True,
    )
    return {
        "ok": ok,
        "backend": backend,
        "seconds": seconds,
        "rir_theta0": report.get("rir_theta0", {}).get("rir"),
        "returncode": proc.returncode,
    }


def commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=10,
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny models on the CPU: < 1 min on 2 cores",
    )
    p.add_argument(
        "--device", default=None, help="default: cuda if available (cpu with --quick)"
    )
    p.add_argument(
        "--pretrain-seconds",
        type=float,
        default=None,
        help="θ0's pre-training budget (120; 3 quick)",
    )
    p.add_argument(
        "--results",
        default=str(RESULTS),
        help="JSON file the GPU figures are appended to",
    )
    args = p.parse_args(argv)
    warnings.filterwarnings(
        "ignore", category=regularizers.NonUniqueSingularValueWarning
    )
    dev = torch.device(
        args.device
        or ("cpu" if args.quick or not torch.cuda.is_available() else "cuda")
    )
    if dev.type == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = settings(args.quick)
    budget = (
        args.pretrain_seconds
        if args.pretrain_seconds is not None
        else (3.0 if args.quick else 120.0)
    )
    start = time.perf_counter()
    dp, dh = load(cfg)
    figures = {
        "agreement": agreement(cfg, dp[0], dh[0]),
        "vit": vit_run(cfg, dp, dh, dev, budget),
        "throughput": throughput(cfg, dev),
        "ddp": ddp_smoke(cfg, dev),
    }
    figures["seconds"] = time.perf_counter() - start
    v = figures["vit"]
    overhead = figures["throughput"][cfg["vit"]]["overhead"]
    headline = (
        f"{cfg['vit']} {cfg['img']} px on {dev.type}: RIR_θ0 Ours {v['ours']['rir_theta0']:.3g}, "
        f"constrained {v['constrained']['rir_theta0']:.3g}; regularizer overhead × {overhead:.2f}; "
        f"DDP {'ok' if figures['ddp']['ok'] else 'failed'}; {figures['seconds']:.0f} s"
    )
    if dev.type == "cuda":
        path = Path(args.results)
        record = (
            json.loads(path.read_text())
            if path.is_file()
            else {"about": "", "results": []}
        )
        record["results"].append(
            {
                "benchmark": "gpu_vit",
                "device": torch.cuda.get_device_name(dev),
                "date": datetime.date.today().isoformat(),
                "commit": commit(),
                "headline": headline,
                "figures": figures,
            }
        )
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1, default=float) + "\n")
        os.replace(tmp, path)
        print(f"appended to {path}")
    print(headline)
    return figures


if __name__ == "__main__":
    main()
