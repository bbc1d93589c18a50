"""Multi-GPU immunization of a deep network with ``torchrun`` and DistributedDataParallel, and its evaluation.

Launch one process per GPU (or, for a test, CPU processes on the gloo backend). The paper's
ResNet18 setting (``resnet18_cars`` of the authors' configs: 3 epochs, η = 1e-5, batch 64,
λ_P = 5e-5, λ_H = 2e6) on ImageNet as D_P and Stanford Cars as D_H::

    torchrun --nproc_per_node 8 -m immulib.deep_ddp --model-name resnet18 --pretrained \\
        --data-p /data/imagenet --data-h /data/cars --epochs 3 --eta 1e-5 \\
        --lam-P 5e-5 --lam-H 2e6 --out resnet18_immunized.pt --evaluate

and ViT-B/16 (``vit_cars``: 2 epochs, η = 1e-5, λ_P = 3e-6, λ_H = 3e8) with
``--model-name vit_base_patch16_224 --epochs 2 --lam-P 3e-6 --lam-H 3e8``. One epoch is
``len(D_P) // (batch size × processes)`` steps, so an ImageNet epoch at batch 64 on 8 GPUs is
2 502 steps; ``--steps`` overrides the count.

Every process builds the same θ0, freezes all but the immunized block and the head
(:func:`immulib.networks.freeze`), wraps :class:`immulib.networks.FeaturesAndLogits` in
``DistributedDataParallel`` and runs :func:`immulib.deep_train.immunization_step` on its own shard of
D_P and D_H (``DistributedSampler``). Each process's Gram matrices come from its own mini-batch of
``--batch-size`` samples per task, and DDP averages the gradients; features are float32 with
autocast off. The backend is NCCL on CUDA and gloo otherwise. Rank 0 saves the immunized model's
``state_dict`` to ``--out`` (and θ0's to ``--out`` with ``.theta0.pt``, unless θ0 came from a file).

``--evaluate``: rank 0 then measures RIR_θ0 (:func:`immulib.deep_eval.rir_theta0`, ``--n-groups``
groups of ``--group-size``) on the training splits and runs the attackers of
:func:`immulib.deep_eval.attack_curves`, trained on the D_H training split and scored on its
test split, and writes them to ``--out``
with ``.eval.json``. The same evaluation runs later with ``python -m immulib.deep_ddp
--evaluate-only`` and the same arguments (it loads ``--out`` instead of training).

``--lam-P``/``--lam-H`` take numbers, or ``auto`` for
:func:`immulib.deep_objective.balance_lambdas` (each process computes it on the same seeded batch,
so all agree). ``--theta0`` loads θ0's weights from a ``state_dict`` file, always with
``torch.load(weights_only=True)`` (otherwise ``--pretrained`` timm weights or a seeded random
init). ``--data-p``/``--data-h`` are image folders (normalised with the statistics the model's
timm weights declare, :func:`immulib.networks.input_statistics`), or ``mnist`` /
``fashion_mnist`` (resized to ``--img-size``, ``--in-chans`` channels, ``--n-train`` samples). Chapter: ``book/07_deep_nets.md``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from . import deep_eval, image_data
from .deep_objective import METHODS, balance_lambdas
from .deep_train import immunization_step
from .networks import (
    FeaturesAndLogits,
    check_inputs,
    create_model,
    freeze,
    input_statistics,
)

__all__ = ["evaluate", "load_data", "main", "parse_args"]

BUILTIN = ("mnist", "fashion_mnist")


def _lambda(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or 'auto', got {text!r}"
        ) from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(
            f"expected a number >= 0 or 'auto', got {text!r}"
        )
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring).

    Chapter: {ref}`ch-deep-nets`.
    """
    p = argparse.ArgumentParser(
        prog="python -m immulib.deep_ddp", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--model-name",
        required=True,
        help="timm ResNet or ViT, e.g. resnet18 or vit_base_patch16_224",
    )
    p.add_argument(
        "--model-kwargs",
        default="{}",
        help="JSON dict of timm overrides (for small test models)",
    )
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="start from timm's pre-trained weights",
    )
    p.add_argument(
        "--theta0",
        default=None,
        help="state_dict file with θ0's weights (loaded with weights_only=True)",
    )
    p.add_argument(
        "--data-p",
        required=True,
        help="D_P: folder of class folders (or train/ and val/), or mnist",
    )
    p.add_argument(
        "--data-h", required=True, help="D_H: folder like --data-p, or fashion_mnist"
    )
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument(
        "--in-chans",
        type=int,
        default=3,
        help="input channels (builtin data are repeated to this)",
    )
    p.add_argument(
        "--n-train",
        type=int,
        default=None,
        help="builtin data: training samples (default all)",
    )
    p.add_argument(
        "--n-test",
        type=int,
        default=None,
        help="builtin data: test samples (default all)",
    )
    p.add_argument("--method", default="ours", choices=METHODS)
    p.add_argument(
        "--epochs",
        type=float,
        default=None,
        help="passes over D_P (the paper: 3 for ResNet18, 2 for ViT)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="immunization steps (overrides --epochs; default 1000)",
    )
    p.add_argument(
        "--batch-size", type=int, default=64, help="per process and per task"
    )
    p.add_argument(
        "--eta", type=float, default=1e-5, help="SGD step size (the paper: 1e-5)"
    )
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--lam-P", dest="lam_P", type=_lambda, default="auto")
    p.add_argument("--lam-H", dest="lam_H", type=_lambda, default="auto")
    p.add_argument("--ratio-p", type=float, default=1.0, help="for --lam-P auto")
    p.add_argument("--ratio-h", type=float, default=1.0, help="for --lam-H auto")
    p.add_argument(
        "--inner-steps", type=int, default=5, help="IMMA's unrolled probe steps"
    )
    p.add_argument(
        "--max-grad-norm",
        type=float,
        default=None,
        help="clip the gradient norm of every step",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument(
        "--out", required=True, help="where rank 0 saves the immunized state_dict"
    )
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="after training: RIR_θ0 and the attackers (rank 0)",
    )
    p.add_argument(
        "--evaluate-only",
        action="store_true",
        help="only evaluate the model saved at --out",
    )
    p.add_argument(
        "--n-groups", type=int, default=20, help="RIR_θ0 groups (the paper: 20)"
    )
    p.add_argument(
        "--group-size",
        type=int,
        default=100,
        help="RIR_θ0 samples per group (the paper: 100)",
    )
    p.add_argument(
        "--attack-epochs", type=int, default=5, help="epochs of each attacker"
    )
    p.add_argument(
        "--attack-eta",
        type=float,
        default=1e-3,
        help="AdamW step of the fine-tuning attackers",
    )
    p.add_argument(
        "--attackers",
        default=",".join(deep_eval.ATTACKERS),
        help="comma-separated subset",
    )
    args = p.parse_args(argv)
    for name in (
        "batch_size",
        "img_size",
        "in_chans",
        "n_groups",
        "group_size",
        "attack_epochs",
        "inner_steps",
    ):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("steps", "n_train", "n_test"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.epochs is not None and not args.epochs > 0:
        p.error("--epochs must be > 0")
    if not args.eta > 0:
        p.error("--eta must be > 0")
    for a in args.attackers.split(","):
        if a not in deep_eval.ATTACKERS:
            p.error(
                f"--attackers: {a!r} is not one of {', '.join(deep_eval.ATTACKERS)}"
            )
    try:
        args.model_kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as err:
        p.error(f"--model-kwargs is not JSON: {err}")
    return args


def load_data(source: str, args: argparse.Namespace) -> tuple[Dataset, Dataset]:
    """(train, test) for ``--data-p``/``--data-h``: an image folder (normalised for
    ``--model-name``'s weights), or ``mnist``/``fashion_mnist``.

    Chapter: {ref}`ch-deep-nets`.
    """
    if source in BUILTIN:
        from . import data

        loader = data.load_mnist if source == "mnist" else data.load_fashion_mnist
        out = []
        for split, n in (("train", args.n_train), ("test", args.n_test)):
            ds = image_data.from_imageset(loader(split), n=n, seed=args.seed)
            if args.img_size != 28 or args.in_chans != 1:
                ds = image_data.resized(
                    ds, img_size=args.img_size, channels=args.in_chans
                )
            out.append(ds)
        return out[0], out[1]
    if not Path(source).is_dir():
        raise SystemExit(
            f"error: {source!r} is neither a folder of class folders nor one of {BUILTIN}"
        )
    mean, std = input_statistics(args.model_name)  # what the model's weights expect
    return image_data.image_folder_splits(
        source, img_size=args.img_size, seed=args.seed, mean=mean, std=std
    )


def _shard(ds: Dataset, batch_size: int, seed: int, num_workers: int) -> Iterator:
    """Endless batches of this process's shard, reshuffled (seeded) every pass."""
    sampler = DistributedSampler(ds, shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
    )
    if len(loader) == 0:
        raise ValueError(
            f"a shard of {len(sampler)} samples is smaller than --batch-size {batch_size}"
        )
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _build(args, data_p):
    model = create_model(
        args.model_name,
        num_classes=image_data.num_classes(data_p),
        in_chans=args.in_chans,
        img_size=args.img_size,
        pretrained=args.pretrained,
        seed=args.seed,
        **args.model_kwargs,
    )
    if args.theta0:
        model.load_state_dict(
            torch.load(args.theta0, map_location="cpu", weights_only=True)
        )
    return model


def evaluate(theta0, immunized, data, args, device) -> dict:
    """RIR_θ0 on the training splits and the attackers on the held-out D_H split, as a JSON-able dict.

    Chapter: {ref}`ch-deep-nets`.
    """
    (dp_train, dp_test), (dh_train, dh_test) = data
    r = deep_eval.rir_theta0(
        theta0,
        immunized,
        dp_train,
        dh_train,
        n_groups=args.n_groups,
        group_size=args.group_size,
        seed=args.seed,
        device=device,
    )
    out = {
        "rir_theta0": r.__dict__,
        "acc_p_theta0": deep_eval.accuracy(theta0, dp_test, device=device),
        "acc_p_immunized": deep_eval.accuracy(immunized, dp_test, device=device),
        "attacks": {},
    }
    attackers = args.attackers.split(",")
    for tag, m in (("theta0", theta0), ("immunized", immunized)):
        curves = deep_eval.attack_curves(
            m,
            dh_train,
            dh_test,
            attackers=attackers,
            epochs=args.attack_epochs,
            eta=args.attack_eta,
            batch_size=args.batch_size,
            seed=args.seed,
            device=device,
        )
        out["attacks"][tag] = {a: c.tolist() for a, c in curves.items()}
    return out


def main(argv: list[str] | None = None) -> None:
    """Run one distributed immunization (the process group comes from torchrun's environment).

    Chapter: {ref}`ch-deep-nets`.
    """
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.evaluate_only:
        device = torch.device("cuda" if cuda else "cpu")
        data = load_data(args.data_p, args), load_data(args.data_h, args)
        theta0 = _build(args, data[0][0])
        saved0 = Path(args.out).with_suffix(".theta0.pt")
        if not args.theta0 and saved0.exists():
            theta0.load_state_dict(
                torch.load(saved0, map_location="cpu", weights_only=True)
            )
        immunized = _build(args, data[0][0])
        immunized.load_state_dict(
            torch.load(args.out, map_location="cpu", weights_only=True)
        )
        result = evaluate(theta0, immunized, data, args, device)
        Path(args.out).with_suffix(".eval.json").write_text(
            json.dumps(result, indent=1)
        )
        print(
            f"RIR_θ0 {result['rir_theta0']['rir']:.4g}; wrote {Path(args.out).with_suffix('.eval.json')}"
        )
        return
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        data = load_data(args.data_p, args), load_data(args.data_h, args)
        (data_p, _), (data_h, _) = data
        model = _build(args, data_p)
        theta0 = _build(args, data_p) if rank == 0 else None
        common = dict(method=args.method, inner_steps=args.inner_steps)
        lam_P, lam_H = args.lam_P, args.lam_H
        if "auto" in (lam_P, lam_H):
            auto = balance_lambdas(
                model,
                data_p,
                data_h,
                ratio_p=args.ratio_p,
                ratio_h=args.ratio_h,
                batch_size=args.batch_size,
                seed=args.seed,
                device=device,
                **common,
            )
            lam_P = auto[0] if lam_P == "auto" else lam_P
            lam_H = auto[1] if lam_H == "auto" else lam_H
        model.to(
            device
        ).eval()  # frozen BatchNorm statistics, as in deep_train.immunize_model
        trainable = set(freeze(model))
        net = DistributedDataParallel(
            FeaturesAndLogits(model), device_ids=[local_rank] if cuda else None
        )
        optimizer = torch.optim.SGD(
            [p for n, p in model.named_parameters() if n in trainable],
            lr=args.eta,
            momentum=args.momentum,
        )
        batches_p = _shard(data_p, args.batch_size, args.seed, args.num_workers)
        batches_h = _shard(data_h, args.batch_size, args.seed + 1, args.num_workers)
        reference = None
        if args.method == "constrained":
            ref = _build(args, data_p).to(device).eval()
            reference = FeaturesAndLogits(ref)
        loss_kwargs = dict(
            common,
            lam_P=lam_P,
            lam_H=lam_H,
            num_classes_h=image_data.num_classes(data_h)
            if args.method == "imma"
            else None,
        )
        steps = args.steps or (
            max(1, int(args.epochs * len(data_p) // (args.batch_size * world)))
            if args.epochs
            else 1000
        )
        for step in range(steps):
            batch_p, batch_h = next(batches_p), next(batches_h)
            if step == 0:
                check_inputs(model, batch_p[0], batch_p[1], name="--data-p")
                check_inputs(model, batch_h[0], None, name="--data-h")
            try:
                parts = immunization_step(
                    net,
                    batch_p,
                    batch_h,
                    optimizer,
                    device=device,
                    max_grad_norm=args.max_grad_norm,
                    reference=reference,
                    **loss_kwargs,
                )
            except FloatingPointError as err:
                raise SystemExit(
                    f"error: diverged at step {step}: {err}; lower --eta {args.eta:g}, "
                    f"--lam-P {lam_P:g} or --lam-H {lam_H:g}"
                ) from None
            if rank == 0 and (step % 100 == 0 or step == steps - 1):
                print(
                    f"step {step}/{steps}: "
                    + ", ".join(f"{k} {v:.4g}" for k, v in parts.items()),
                    flush=True,
                )
        if rank == 0:
            torch.save(model.state_dict(), args.out)
            if not args.theta0:
                torch.save(
                    theta0.state_dict(), Path(args.out).with_suffix(".theta0.pt")
                )
            print(
                f"λ_P = {lam_P:.4g}, λ_H = {lam_H:.4g}; {steps} steps on {world} process(es); saved {args.out}",
                flush=True,
            )
            if args.evaluate:
                result = evaluate(theta0, model, data, args, device)
                result.update(lam_P=lam_P, lam_H=lam_H, steps=steps, world_size=world)
                Path(args.out).with_suffix(".eval.json").write_text(
                    json.dumps(result, indent=1)
                )
                print(
                    f"RIR_θ0 {result['rir_theta0']['rir']:.4g} ((i) {result['rir_theta0']['i']:.4g}, "
                    f"(ii) {result['rir_theta0']['ii']:.4g}); wrote {Path(args.out).with_suffix('.eval.json')}",
                    flush=True,
                )
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
