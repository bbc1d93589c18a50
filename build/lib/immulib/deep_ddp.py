"""Multi-GPU immunization of a deep network with ``torchrun`` and DistributedDataParallel.

Launch one process per GPU (or, for a test, several CPU processes on the gloo backend)::

    torchrun --nproc_per_node 8 -m immulib.deep_ddp --model-name resnet18 --pretrained \\
        --image-folder-dp /data/imagenet --image-folder-dh /data/cars --steps 5000 --lr 1e-5 \\
        --out resnet18_immunized.pt

Every process builds the same θ0, freezes all but the immunized block and the head
(:func:`immulib.deep.freeze`), wraps :class:`immulib.deep.FeaturesAndLogits` in
``DistributedDataParallel`` and runs :func:`immulib.deep.immunization_step` on its own shard of
D_P and D_H (``DistributedSampler``). Each process's Gram matrices come from its own mini-batch,
of ``--batch-size`` samples per task, and DDP averages the gradients. The backend is NCCL on
CUDA and gloo otherwise. Rank 0 saves the immunized model's ``state_dict`` to ``--out``.

``--lambda-p``/``--lambda-h`` take numbers, or ``auto`` for :func:`immulib.deep.balance_lambdas`
(each process computes it on the same seeded batch, so all agree). ``--theta0`` loads θ0's weights
from a ``state_dict`` file (otherwise ``--pretrained`` timm weights or a seeded random init).
Chapter: "Deep networks: immunizing the last block" (``book/07_deep_nets.md``).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Iterator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from . import deep

__all__ = ["main", "parse_args"]


def _lambda(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m immulib.deep_ddp", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-name", required=True, help="timm model, e.g. resnet18 or vit_base_patch16_224")
    p.add_argument("--model-kwargs", default="{}", help="JSON dict of timm overrides (for small test models)")
    p.add_argument("--pretrained", action="store_true", help="start from timm's pre-trained weights")
    p.add_argument("--theta0", default=None, help="state_dict file with θ0's weights")
    p.add_argument("--image-folder-dp", required=True, help="D_P: folder of class folders (or train/ and val/)")
    p.add_argument("--image-folder-dh", required=True, help="D_H: folder of class folders (or train/ and val/)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--method", default="ours", choices=deep.METHODS)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64, help="per process and per task")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--lambda-p", type=_lambda, default="auto")
    p.add_argument("--lambda-h", type=_lambda, default="auto")
    p.add_argument("--ratio-p", type=float, default=1.0, help="for --lambda-p auto")
    p.add_argument("--ratio-h", type=float, default=1.0, help="for --lambda-h auto")
    p.add_argument("--imma-steps", type=int, default=5)
    p.add_argument("--max-grad-norm", type=float, default=None, help="clip the gradient norm of every step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--out", required=True, help="where rank 0 saves the immunized state_dict")
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "img_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def _shard(ds: Dataset, batch_size: int, seed: int, num_workers: int) -> Iterator:
    """Endless batches of this process's shard, reshuffled (seeded) every pass."""
    sampler = DistributedSampler(ds, shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=num_workers)
    if len(loader) == 0:
        raise ValueError(f"a shard of {len(sampler)} samples is smaller than --batch-size {batch_size}")
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def main(argv: list[str] | None = None) -> None:
    """Run one distributed immunization (the process group comes from torchrun's environment)."""
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        rank, local_rank = dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        data_p, _ = deep.image_folder_splits(args.image_folder_dp, img_size=args.img_size, seed=args.seed)
        data_h, _ = deep.image_folder_splits(args.image_folder_dh, img_size=args.img_size, seed=args.seed)
        model = deep.create_model(
            args.model_name, num_classes=deep.num_classes(data_p), in_chans=3, img_size=args.img_size,
            pretrained=args.pretrained, seed=args.seed, **json.loads(args.model_kwargs),
        )
        if args.theta0:
            model.load_state_dict(torch.load(args.theta0, map_location="cpu"))
        common = dict(method=args.method, imma_steps=args.imma_steps)
        lambda_p, lambda_h = args.lambda_p, args.lambda_h
        if "auto" in (lambda_p, lambda_h):
            auto = deep.balance_lambdas(model, data_p, data_h, ratio_p=args.ratio_p, ratio_h=args.ratio_h,
                                        batch_size=args.batch_size, seed=args.seed, device=device, **common)
            lambda_p = auto[0] if lambda_p == "auto" else lambda_p
            lambda_h = auto[1] if lambda_h == "auto" else lambda_h
        model.to(device).eval()  # frozen BatchNorm statistics, as in deep.immunize
        trainable = set(deep.freeze(model))
        net = DistributedDataParallel(deep.FeaturesAndLogits(model), device_ids=[local_rank] if cuda else None)
        optimizer = torch.optim.SGD([p for n, p in model.named_parameters() if n in trainable],
                                    lr=args.lr, momentum=args.momentum)
        batches_p = _shard(data_p, args.batch_size, args.seed, args.num_workers)
        batches_h = _shard(data_h, args.batch_size, args.seed + 1, args.num_workers)
        loss_kwargs = dict(common, lambda_p=lambda_p, lambda_h=lambda_h,
                           num_classes_h=deep.num_classes(data_h) if args.method == "imma" else None)
        for step in range(args.steps):
            parts = deep.immunization_step(net, next(batches_p), next(batches_h), optimizer, device=device,
                                           max_grad_norm=args.max_grad_norm, **loss_kwargs)
            if rank == 0 and (step % 100 == 0 or step == args.steps - 1):
                print(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in parts.items()), flush=True)
        if rank == 0:
            torch.save(model.state_dict(), args.out)
            print(f"λ_P = {lambda_p:.4g}, λ_H = {lambda_h:.4g}; saved {args.out}", flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
