"""Training deep networks: pre-training θ0 on D_P (cached), and immunizing its last block (paper §5.2).

* :func:`pretrain` trains every parameter on D_P with AdamW and a one-cycle schedule, recording
  the D_P test accuracy after each epoch; the weights are cached in the user cache
  (:func:`immulib.data.cache_dir` ``/theta0``) under a key made of every setting and a fingerprint
  of the data, and loaded back with ``torch.load(weights_only=True)``.
* :func:`immunize_model` trains a copy of θ0's immunized block and head with SGD + momentum on
  one of the objectives of :mod:`immulib.deep_objective`; θ0 is never modified. The network runs
  in eval mode (BatchNorm statistics frozen) and its features in float32 with autocast off.
  Inputs are checked before the first step (channels, image size, labels, device), and the first
  non-finite loss or feature stops the loop with an error that names η, λ_P and λ_H. Its
  ``method="constrained"`` holds (ii) ≤ 1 on the groups of RIR_θ0 (checks, restoration steps and
  the best feasible iterate, as the linear engine's constrained method).

Chapter: ``book/07_deep_nets.md``; the multi-GPU loop is :mod:`immulib.deep_ddp`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from . import _validate as v
from .deep_objective import (
    METHODS,
    feature_gram,
    immunization_loss,
    log_condition_number,
)
from .image_data import batches, check_dataset, fingerprint, num_classes
from .networks import (
    FeaturesAndLogits,
    architecture,
    check_block_inputs,
    check_inputs,
    freeze,
)
from .results import ImmunizationResult

__all__ = ["immunization_step", "immunize_model", "pretrain", "pretrain_cache_path"]


def _amp(device: torch.device):
    """bfloat16 autocast for pre-training on CUDA (never for spectral features), a no-op elsewhere."""
    return torch.autocast(
        device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"
    )


# ---------------------------------------------------------------------------------------------
# pre-training θ0


def pretrain_cache_path(model: nn.Module, data, settings: dict) -> Path:
    """Where :func:`pretrain` caches θ0: a file named by a hash of the settings, the data and the
    model's initial weights (so a different architecture or seed never reuses a file).

    Chapter: {ref}`ch-deep-nets`.
    """
    from .data import cache_dir

    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(fingerprint(data).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1)[:64].float().numpy().tobytes())
        h.update(str(tuple(t.shape)).encode())
    return (
        cache_dir()
        / "theta0"
        / f"{type(model).__name__.lower()}-{h.hexdigest()[:20]}.pt"
    )


def pretrain(
    model: nn.Module,
    data,
    *,
    test=None,
    epochs: int = 1,
    batch_size: int = 128,
    eta: float = 2e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
    device="cpu",
    cache: bool = True,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Train every parameter of ``model`` in place on ``data``; return the curve (one row per epoch).

    AdamW with peak step ``eta`` and a one-cycle schedule (15 % warm-up, cosine decay), seeded
    shuffles; bfloat16 autocast on CUDA. The returned DataFrame has columns ``epoch``,
    ``train_loss`` (mean over the epoch) and ``test_accuracy`` (on ``test``, NaN if not given),
    and ``attrs["cached"]`` says whether the weights came from the cache. With ``cache=True`` the
    weights and the curve are stored under :func:`pretrain_cache_path` (a temporary file renamed
    when complete) and reused by any later call with the same settings. This stands in for
    ImageNet pre-training in the CPU chapter: θ0 must already solve D_P.

    Chapter: {ref}`ch-deep-nets`.
    """
    from tqdm.auto import tqdm

    architecture(model)
    data, dev = check_dataset(data, "data"), v.device(device)
    epochs, bs = v.integer(epochs, "epochs", 1), v.integer(batch_size, "batch_size", 1)
    eta, wd = v.positive(eta, "eta"), v.nonneg(weight_decay, "weight_decay")
    seed, cache = v.integer(seed, "seed", 0), v.flag(cache, "cache")
    if test is not None:
        check_dataset(test, "test")
    if len(data) < bs:
        raise ValueError(f"batch_size {bs} is larger than data ({len(data)} samples)")
    settings = dict(
        epochs=epochs,
        batch_size=bs,
        eta=eta,
        weight_decay=wd,
        seed=seed,
        test=None if test is None else fingerprint(test),
        torch=torch.__version__.split("+")[0],
    )
    path = pretrain_cache_path(model, data, settings) if cache else None
    if path is not None and path.exists() and path.with_suffix(".json").exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model.to(dev).eval()
        curve = pd.DataFrame(json.loads(path.with_suffix(".json").read_text()))
        curve.attrs["cached"] = True
        return curve
    x0, y0 = next(batches(data, bs, seed))
    check_inputs(model, x0, y0, name="data")
    model.to(dev).train()
    for p in model.parameters():
        p.requires_grad_(True)
    steps_per_epoch = len(data) // bs
    opt = torch.optim.AdamW(model.parameters(), lr=eta, weight_decay=wd)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=eta, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    stream = batches(data, bs, seed)
    rows = []
    bar = tqdm(
        total=epochs * steps_per_epoch,
        desc="pre-train θ0",
        disable=not v.progress(progress),
    )
    for epoch in range(1, epochs + 1):
        total = 0.0
        for _ in range(steps_per_epoch):
            x, y = next(stream)
            with _amp(dev):
                loss = F.cross_entropy(model(x.to(dev)).float(), y.to(dev))
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(
                    f"pre-training loss became {float(loss.detach())} in epoch {epoch}: lower eta={eta}"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
            bar.update()
        acc = float("nan")
        if test is not None:
            from .deep_eval import accuracy

            acc = accuracy(model, test, device=dev)
            model.train()
        rows.append(
            dict(epoch=epoch, train_loss=total / steps_per_epoch, test_accuracy=acc)
        )
    bar.close()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    curve = pd.DataFrame(rows)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({k: t.detach().cpu() for k, t in model.state_dict().items()}, tmp)
        path.with_suffix(".json").write_text(json.dumps(rows))
        os.replace(tmp, path)
    curve.attrs["cached"] = False
    return curve


# ---------------------------------------------------------------------------------------------
# immunization


def immunization_step(
    net: nn.Module,
    batch_p,
    batch_h,
    optimizer: torch.optim.Optimizer,
    *,
    device,
    max_grad_norm: float | None = None,
    reference: nn.Module | None = None,
    **loss_kwargs,
) -> dict[str, float]:
    """One SGD step of :func:`immulib.deep_objective.immunization_loss` on a D_P and a D_H batch.

    ``net`` maps images to (features, logits): a :class:`immulib.networks.FeaturesAndLogits` or the
    same in DistributedDataParallel. Both batches go through the network in one forward pass
    (BatchNorm runs in eval mode, so concatenating them changes nothing), in float32 with autocast
    off. ``reference`` (a FeaturesAndLogits of θ0) gives the constrained method its log κ(H̃_P(θ0))
    on the same batch. ``max_grad_norm`` (optional) clips the gradient norm. Raises
    ``FloatingPointError`` before stepping if the features or the loss are not finite.

    Chapter: {ref}`ch-deep-nets`.
    """
    dev = v.device(device)
    (x_p, y_p), (x_h, y_h) = batch_p, batch_h
    x = torch.cat([x_p, x_h]).to(dev, non_blocking=True)
    y_p, y_h = y_p.to(dev), y_h.to(dev)
    feats, logits = net(x)
    n = x_p.shape[0]
    if not bool(torch.isfinite(feats.detach()).all()):
        raise FloatingPointError("the features are not finite")
    if loss_kwargs.get("method") == "constrained":
        with torch.no_grad():
            f0, _ = reference(x[:n])
            loss_kwargs["log_kappa_p_ref"] = float(
                log_condition_number(feature_gram(f0), k=min(f0.shape))
            )
    loss, parts = immunization_loss(
        feats[:n], logits[:n], y_p, feats[n:], y_h, **loss_kwargs
    )
    parts["loss"] = float(loss.detach())
    if not math.isfinite(parts["loss"]):
        raise FloatingPointError(f"the loss is {parts['loss']}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        bound = v.positive(max_grad_norm, "max_grad_norm")
        parts["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, bound))
    optimizer.step()
    return parts


def _restore(model, params, check, max_steps: int, eta: float):
    """Descent on the measured log (ii) until (ii) ≤ 1: ((i), (ii), steps taken, next step size).

    Each step moves the parameters by ``eta`` · ‖θ‖ along −∇ log (ii) / ‖∇ log (ii)‖ and is kept
    only if the measured (ii) falls; otherwise ``eta`` is halved and the step tried again (each
    try counts towards ``max_steps``). A kept step lets ``eta`` grow by half.
    """
    ii = check.ii(model)
    taken = 0
    while ii > 1.0 and taken < max_steps:
        grads = torch.autograd.grad(check.log_ii(model), params, allow_unused=True)
        grads = [
            torch.zeros_like(p) if g is None else g
            for p, g in zip(params, grads, strict=True)
        ]
        g_norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
        p_norm = math.sqrt(sum(float((p.detach().double() ** 2).sum()) for p in params))
        if not g_norm > 0:
            break
        saved = [p.detach().clone() for p in params]
        while taken < max_steps:
            taken += 1
            with torch.no_grad():
                for p, s, g in zip(params, saved, grads, strict=True):
                    p.copy_(s - (eta * p_norm / g_norm) * g)
            ii_new = check.ii(model)
            if ii_new < ii:
                ii, eta = ii_new, 1.5 * eta
                break
            eta /= 2
        else:
            with torch.no_grad():
                for p, s in zip(params, saved, strict=True):
                    p.copy_(s)
    return check.i(model), ii, taken, eta


def _first_two(ds) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = zip(*(ds[i] for i in range(min(2, len(ds)))), strict=False)
    return torch.stack([torch.as_tensor(t) for t in x]), torch.as_tensor(y)


def _from_block(model, ds, z, name, dev):
    """``ds`` itself, or (its block inputs, its labels) as a TensorDataset in the same order."""
    if z is None:
        return ds
    z = check_block_inputs(model, ds, z, name, device=dev)
    labels = torch.cat([torch.as_tensor(y) for _, y in DataLoader(ds, batch_size=1024)])
    return TensorDataset(z, labels)


def immunize_model(
    theta0: nn.Module,
    data_p,
    data_h,
    *,
    method: str = "ours",
    lam_P: float,
    lam_H: float,
    steps: int = 100,
    batch_size: int = 64,
    eta: float = 0.01,
    momentum: float = 0.9,
    inner_steps: int = 5,
    inner_eta: float = 1.0,
    max_grad_norm: float | None = None,
    regularizer_fns: tuple[Callable, Callable] | None = None,
    block_inputs_p: torch.Tensor | None = None,
    block_inputs_h: torch.Tensor | None = None,
    constraint_check: dict | None = None,
    check_every: int | None = 10,
    restoration_steps: int = 10,
    seed: int = 0,
    device="cpu",
    num_workers: int = 0,
    progress: bool | None = None,
) -> ImmunizationResult:
    """Immunize a copy of θ0's last block (and head) with SGD + momentum; θ0 itself is untouched.

    Each of ``steps`` steps takes a D_P batch and a D_H batch of ``batch_size`` samples (seeded
    shuffles of ``data_p`` and ``data_h``) and applies :func:`immunization_step` with ``method``,
    ``lam_P`` and ``lam_H`` (:func:`immulib.deep_objective.balance_lambdas` is the paper's way of
    choosing them), clipping the gradient norm at ``max_grad_norm`` if given. Paper §5.2, Eq. (11).
    ``block_inputs_p``/``_h`` (:func:`immulib.networks.block_inputs` of θ0 on all of ``data_p`` /
    ``data_h``) skip the frozen part, which is the same for every immunized copy of θ0: the steps
    are then the same up to rounding, and much cheaper.

    ``method="constrained"`` holds Definition 3.1 (b) on an *evaluation* measure, not only on the
    training batches: every ``check_every`` steps (and after the last) it measures (i) and (ii) of
    :func:`immulib.deep_eval.rir_theta0` with the keyword arguments ``constraint_check``
    (``n_groups``, ``group_size``, ``seed``; default 20 groups of min(100, len(data)) samples, seed
    0) on ``data_p``/``data_h``; if (ii) > 1 it takes up to ``restoration_steps`` normalised descent
    steps on log (ii) (backtracking: a step is kept only if the measured (ii) falls) and resets the
    momentum; and it keeps a copy of the feasible iterate ((ii) ≤ 1) with the largest (i). The
    returned model is that iterate, θ0 itself at worst, so ``deep_eval.rir_theta0`` with the same
    groups reports (ii) ≤ 1. ``history`` then has ``check_i``, ``check_ii`` and
    ``restoration_steps`` on the check steps, and ``settings["best_step"]`` says which iterate was
    returned (-1: θ0). ``check_every=None`` switches the checks off: the constraint is then held
    on the training batches only (the switching step of
    :func:`immulib.deep_objective.immunization_loss`), which does not bound the evaluation's (ii).

    Returns an :class:`immulib.results.ImmunizationResult` with ``model`` the immunized network
    (parameters frozen) and ``history`` one row per step (``step``, ``task``, ``loss`` and the
    method's terms). Raises ``FloatingPointError`` at the first non-finite loss, naming η and the λ's.

    Chapter: {ref}`ch-deep-nets`.
    """
    from tqdm.auto import tqdm

    method = v.choice(method, "method", METHODS)
    lam_P, lam_H = v.nonneg(lam_P, "lam_P"), v.nonneg(lam_H, "lam_H")
    dev = v.device(device)
    steps, bs = v.integer(steps, "steps", 1), v.integer(batch_size, "batch_size", 2)
    eta, momentum = v.positive(eta, "eta"), v.nonneg(momentum, "momentum")
    seed = v.integer(seed, "seed", 0)
    show = v.progress(progress)
    architecture(theta0)
    data_p, data_h = check_dataset(data_p, "data_p"), check_dataset(data_h, "data_h")
    for name, ds in (("data_p", data_p), ("data_h", data_h)):
        if len(ds) < bs:
            raise ValueError(
                f"batch_size {bs} is larger than {name} ({len(ds)} samples)"
            )
    if num_classes(data_p, "data_p") != theta0.num_classes:
        raise ValueError(
            f"data_p has {num_classes(data_p, 'data_p')} classes but theta0's head has "
            f"{theta0.num_classes}"
        )
    model = copy.deepcopy(theta0).to(dev).eval()
    names = set(freeze(model))
    optimizer = torch.optim.SGD(
        [p for n, p in model.named_parameters() if n in names],
        lr=eta,
        momentum=momentum,
    )
    net = FeaturesAndLogits(model)
    reference = None
    if method == "constrained":
        ref = copy.deepcopy(theta0).to(dev).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        reference = FeaturesAndLogits(ref)
    stream_p = batches(
        _from_block(model, data_p, block_inputs_p, "block_inputs_p", dev),
        bs,
        seed,
        num_workers,
    )
    stream_h = batches(
        _from_block(model, data_h, block_inputs_h, "block_inputs_h", dev),
        bs,
        seed + 1,
        num_workers,
    )
    if (block_inputs_p is None) != (block_inputs_h is None):
        raise ValueError("give both block_inputs_p and block_inputs_h, or neither")
    if block_inputs_p is not None:
        net = FeaturesAndLogits(model, from_block=True)
        if reference is not None:
            reference = FeaturesAndLogits(reference.model, from_block=True)
    loss_kwargs = dict(
        method=method,
        lam_P=lam_P,
        lam_H=lam_H,
        inner_steps=inner_steps,
        inner_eta=inner_eta,
        num_classes_h=num_classes(data_h, "data_h") if method == "imma" else None,
        regularizer_fns=regularizer_fns,
    )
    check = None
    if method == "constrained" and check_every is not None:
        from .deep_eval import _RIRCheck

        check_every = v.integer(check_every, "check_every", 1)
        restoration_steps = v.integer(restoration_steps, "restoration_steps", 0)
        kw = dict(constraint_check or {})
        unknown = set(kw) - {"n_groups", "group_size", "seed"}
        if unknown:
            raise ValueError(
                f"constraint_check takes n_groups, group_size and seed, got {sorted(unknown)}"
            )
        kw.setdefault("group_size", min(100, len(data_p), len(data_h)))
        zp = zh = None
        if block_inputs_p is not None:
            zp = check_block_inputs(
                model, data_p, block_inputs_p, "block_inputs_p", device=dev
            )
            zh = check_block_inputs(
                model, data_h, block_inputs_h, "block_inputs_h", device=dev
            )
        check = _RIRCheck(
            theta0,
            data_p,
            data_h,
            block_inputs_p=zp,
            block_inputs_h=zh,
            device=dev,
            **kw,
        )
        trainable = [p for n, p in model.named_parameters() if n in names]
        best = dict(
            i=1.0, ii=1.0, step=-1, state=[p.detach().clone() for p in trainable]
        )
        restore_eta = 3e-3
    history = []
    start = time.perf_counter()
    for step in tqdm(range(steps), desc=f"immunize ({method})", disable=not show):
        batch_p, batch_h = next(stream_p), next(stream_h)
        if step == 0:
            x_p, y_p = _first_two(data_p)
            check_inputs(model, x_p, y_p, name="data_p")
            check_inputs(model, _first_two(data_h)[0], None, name="data_h")
        try:
            parts = immunization_step(
                net,
                batch_p,
                batch_h,
                optimizer,
                device=dev,
                max_grad_norm=max_grad_norm,
                reference=reference,
                **loss_kwargs,
            )
        except FloatingPointError as err:
            raise FloatingPointError(
                f"immunization ({method}) diverged at step {step}: {err}. Lower eta={eta:g}, lam_P={lam_P:g} "
                f"or lam_H={lam_H:g}, or set max_grad_norm (now {max_grad_norm})"
            ) from None
        if check is not None and ((step + 1) % check_every == 0 or step == steps - 1):
            i, ii, n_restore, restore_eta = _restore(
                model, trainable, check, restoration_steps, restore_eta
            )
            if n_restore:
                optimizer.state.clear()  # the momentum points back into the infeasible side
            parts.update(check_i=i, check_ii=ii, restoration_steps=n_restore)
            if ii <= 1.0 and i > best["i"]:
                best = dict(
                    i=i, ii=ii, step=step, state=[p.detach().clone() for p in trainable]
                )
        history.append(dict(step=step, **parts))
    if check is not None:  # the best feasible iterate (θ0 itself at worst)
        with torch.no_grad():
            for p, saved in zip(trainable, best["state"], strict=True):
                p.copy_(saved)
    seconds = time.perf_counter() - start
    for p in model.parameters():
        p.requires_grad_(False)
    settings = dict(
        steps=steps,
        batch_size=bs,
        eta=eta,
        momentum=momentum,
        inner_steps=inner_steps,
        inner_eta=inner_eta,
        max_grad_norm=max_grad_norm,
        seed=seed,
        device=str(dev),
    )
    if check is not None:
        settings.update(
            check_every=check_every,
            restoration_steps=restoration_steps,
            constraint_check=kw,
            best_step=best["step"],
            best_i=best["i"],
            best_ii=best["ii"],
        )
    return ImmunizationResult(
        method=method,
        history=pd.DataFrame(history),
        lam_P=lam_P,
        lam_H=lam_H,
        seconds=seconds,
        settings=settings,
        model=model,
    )
