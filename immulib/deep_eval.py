"""Evaluating an immunized network: accuracy, RIR_θ0 (Eq. (17)) and four attackers on held-out D_H.

* :func:`extract_features`: float32 features with autocast off (:class:`immulib.networks.FeaturesAndLogits`);
* :func:`accuracy`: the model's own head on a dataset;
* :func:`rir_theta0`: Eq. (17) over groups of samples, as the paper (20 groups of 100), returned as
  the :class:`immulib.metrics.RIR` dataclass (means over the groups) with :func:`rir_theta0_groups`
  giving one RIR per group;
* :func:`attack_curves`: the attacker's D_H test accuracy after each epoch, for

  - ``"probe"``: a linear probe on the frozen features (the paper's Fig. 3), plain mini-batch SGD
    with step ``1 / λ_max`` of the features' Gram matrix (scaling the features cannot slow it);
  - ``"probe_std"``: the same probe on features standardised with the attacker's training mean and
    standard deviation (a cheap preprocessing step that undoes per-feature scales);
  - ``"finetune_block"``: a new head plus the immunized block trained with AdamW;
  - ``"finetune_all"``: a new head plus the whole network trained with AdamW;

  and :func:`epochs_to_target`, the first epoch at which a curve reaches a target accuracy.

All forward passes run in eval mode (BatchNorm statistics frozen, no dropout). Chapter:
``book/07_deep_nets.md``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from . import _validate as v
from .deep_objective import feature_gram
from .image_data import check_dataset, num_classes
from .linalg import condition_number
from .metrics import RIR
from .networks import (
    FeaturesAndLogits,
    architecture,
    block_inputs,
    check_block_inputs,
    exact_float32,
    forward_from_block,
    forward_to_block,
)

__all__ = [
    "ATTACKERS",
    "accuracy",
    "attack_curves",
    "epochs_to_target",
    "extract_features",
    "rir_theta0",
    "rir_theta0_groups",
]

#: The attackers of :func:`attack_curves`, weakest first.
ATTACKERS: tuple[str, ...] = ("probe", "probe_std", "finetune_block", "finetune_all")


@torch.no_grad()
def extract_features(
    model: nn.Module, data, *, indices=None, batch_size: int = 256, device="cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of ``data`` (or of ``data[indices]``) on the CPU, features float32.

    The features are computed in float32 with autocast (and TF32) off, even inside an autocast
    region, so a Gram matrix made from them has no bfloat16 rounding floor. Eval mode.

    Chapter: {ref}`ch-deep-nets`.
    """
    net = FeaturesAndLogits(model)
    dev = v.device(device)
    data = check_dataset(data, "data")
    if indices is not None:
        data = Subset(data, [int(i) for i in indices])
    model.to(dev).eval()
    feats, labels = [], []
    for x, y in DataLoader(data, batch_size=v.integer(batch_size, "batch_size", 1)):
        f, _ = net(x.to(dev))
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def accuracy(
    model: nn.Module,
    data,
    *,
    block_inputs: torch.Tensor | None = None,
    batch_size: int = 256,
    device="cpu",
) -> float:
    """Fraction of ``data`` that ``model`` (features and its own head) classifies correctly.

    ``block_inputs`` (:func:`immulib.networks.block_inputs` of ``data`` through θ0) skips the frozen part.

    Chapter: {ref}`ch-deep-nets`.
    """
    dev = v.device(device)
    data = check_dataset(data, "data")
    bs = v.integer(batch_size, "batch_size", 1)
    model.to(dev).eval()
    labels = torch.cat(
        [torch.as_tensor(y) for _, y in DataLoader(data, batch_size=1024)]
    )
    if block_inputs is not None:
        z = check_block_inputs(model, data, block_inputs, "block_inputs", device=dev)
        net = FeaturesAndLogits(model, from_block=True)
        pred = torch.cat(
            [
                net(z[s : s + bs].to(dev))[1].argmax(1).cpu()
                for s in range(0, len(z), bs)
            ]
        )
    else:
        net = FeaturesAndLogits(model)
        pred = torch.cat(
            [
                net(x.to(dev))[1].argmax(1).cpu()
                for x, _ in DataLoader(data, batch_size=bs)
            ]
        )
    return float((pred == labels).double().mean())


@torch.no_grad()
def _suffix_features(
    model: nn.Module, z: torch.Tensor, dev, batch_size: int = 256
) -> torch.Tensor:
    model.to(dev).eval()
    net = FeaturesAndLogits(model, from_block=True)
    return torch.cat(
        [
            net(z[s : s + batch_size].to(dev))[0].float().cpu()
            for s in range(0, len(z), batch_size)
        ]
    )


def _shares_parameters(a: nn.Module, b: nn.Module) -> bool:
    ptrs = {p.data_ptr() for p in a.parameters()}
    return any(p.data_ptr() in ptrs for p in b.parameters())


def rir_theta0_groups(
    theta0: nn.Module,
    immunized: nn.Module,
    data_p,
    data_h,
    *,
    n_groups: int = 20,
    group_size: int = 100,
    seed: int = 0,
    batch_size: int = 256,
    block_inputs_p: torch.Tensor | None = None,
    block_inputs_h: torch.Tensor | None = None,
    device="cpu",
) -> list[RIR]:
    """RIR_θ0 of Eq. (17) for each of ``n_groups`` groups of ``group_size`` samples (one RIR each).

    For each group, D_P and D_H samples are drawn (without replacement, seeded) and the same samples
    go through θ0 and θ_I: (i) = κ(H̃_H(θ_I)) / κ(H̃_H(θ0)), (ii) = κ(H̃_P(θ_I)) / κ(H̃_P(θ0)),
    RIR_θ0 = (i) / (ii), κ the pseudo-inverse condition number (Eq. (1)) of the float64 Gram matrix
    of float32 features (rank ≤ group_size). The frozen part is run once for both models, or not at
    all with ``block_inputs_p``/``_h`` (:func:`immulib.networks.block_inputs` of θ0 on all of
    ``data_p``/``data_h``).

    ``theta0`` must be a separate copy taken *before* immunization: the authors' released
    evaluation passes the same model twice and always reports 1.0 (their GitHub issue #1), so a
    ``ValueError`` is raised if the two models are the same object or share any parameter.

    Chapter: {ref}`ch-deep-nets`.
    """
    architecture(theta0), architecture(immunized)
    if theta0 is immunized or _shares_parameters(theta0, immunized):
        raise ValueError(
            "theta0 and immunized are the same model (or share parameters): RIR_θ0 would be 1 by "
            "construction. Keep a copy of θ0 taken before immunization (copy.deepcopy(model))."
        )
    dev = v.device(device)
    parts = _group_inputs(
        theta0, data_p, data_h, n_groups, group_size, seed, batch_size,
        (block_inputs_p, block_inputs_h), dev,
    )  # fmt: skip
    same_prefix = _same_frozen_part(theta0, immunized)
    kappa = {}
    for which, (ds, idx, z, rows) in enumerate(parts):
        for tag, model in (("0", theta0), ("I", immunized)):
            if tag == "I" and not same_prefix:
                z = block_inputs(
                    model, ds, indices=idx, batch_size=batch_size, device=dev
                )
            feats = _suffix_features(model, z, dev, batch_size)
            kappa[tag, which] = [condition_number(feature_gram(feats[r])) for r in rows]
    out = []
    for g in range(len(parts[0][3])):
        kH, kH0, kP, kP0 = (
            kappa["I", 1][g],
            kappa["0", 1][g],
            kappa["I", 0][g],
            kappa["0", 0][g],
        )
        out.append(RIR(kH / kH0, kP / kP0, (kH / kH0) / (kP / kP0), kH, kH0, kP, kP0))
    return out


def _group_inputs(
    theta0, data_p, data_h, n_groups, group_size, seed, batch_size, given, dev
) -> list[tuple]:
    """The checked arguments of the RIR_θ0 groups, the groups drawn, and θ0's block inputs on
    them: for D_P and for D_H, ``(dataset, idx, z, rows)`` with ``idx`` the samples some group
    uses, ``z`` θ0's block inputs on them (``given``'s, checked against θ0, where passed) and
    ``rows`` each group's positions in ``idx``."""
    n_groups = v.integer(n_groups, "n_groups", 1)
    group_size = v.integer(group_size, "group_size", 2)
    data = (check_dataset(data_p, "data_p"), check_dataset(data_h, "data_h"))
    for name, ds in zip(("data_p", "data_h"), data, strict=True):
        if group_size > len(ds):
            raise ValueError(
                f"group_size {group_size} is larger than {name} ({len(ds)} samples)"
            )
    groups = _draw_groups(len(data[0]), len(data[1]), n_groups, group_size, seed)
    out = []
    for which, (ds, z_all) in enumerate(zip(data, given, strict=True)):
        idx = np.unique(np.concatenate([g[which] for g in groups]))
        row = {int(j): r for r, j in enumerate(idx)}
        if z_all is None:
            z = block_inputs(theta0, ds, indices=idx, batch_size=batch_size, device=dev)
        else:
            name = "block_inputs_" + "ph"[which]
            z = check_block_inputs(theta0, ds, z_all, name, device=dev).to(dev)
            z = z[torch.as_tensor(idx, device=dev)]
        out.append((ds, idx, z, [[row[int(j)] for j in g[which]] for g in groups]))
    return out


def _draw_groups(n_p: int, n_h: int, n_groups: int, group_size: int, seed) -> list:
    """The (D_P indices, D_H indices) of each RIR_θ0 group, seeded (without replacement)."""
    rng = np.random.default_rng(v.integer(seed, "seed", 0))
    return [
        (
            rng.choice(n_p, group_size, replace=False),
            rng.choice(n_h, group_size, replace=False),
        )
        for _ in range(n_groups)
    ]


class _RIRCheck:
    """(i) and (ii) of :func:`rir_theta0` on fixed groups, for models that share θ0's frozen part.

    θ0's condition numbers are computed once; each call then runs only the immunized block and
    head on the groups' block inputs, with the same code as :func:`rir_theta0_groups`, so the
    numbers are the ones :func:`rir_theta0` reports with the same arguments (bit for bit on one
    device). :meth:`log_ii` is log (ii) as a differentiable function of the block's parameters.
    """

    def __init__(
        self,
        theta0: nn.Module,
        data_p,
        data_h,
        *,
        n_groups: int = 20,
        group_size: int = 100,
        seed: int = 0,
        batch_size: int = 256,
        block_inputs_p: torch.Tensor | None = None,
        block_inputs_h: torch.Tensor | None = None,
        device="cpu",
    ):
        self.dev, self.batch_size = v.device(device), batch_size
        self.parts = [
            (z, rows)
            for _, _, z, rows in _group_inputs(
                theta0, data_p, data_h, n_groups, group_size, seed, batch_size,
                (block_inputs_p, block_inputs_h), self.dev,
            )
        ]  # fmt: skip
        self.ref = [self._kappas(theta0, which) for which in (0, 1)]
        self.log_ref = torch.log(torch.tensor(self.ref[0], dtype=torch.float64))

    def _kappas(self, model: nn.Module, which: int) -> list[float]:
        z, rows = self.parts[which]
        feats = _suffix_features(model, z, self.dev, self.batch_size)
        return [condition_number(feature_gram(feats[r])) for r in rows]

    def _ratio(self, model: nn.Module, which: int) -> float:
        pairs = zip(self._kappas(model, which), self.ref[which], strict=True)
        return float(np.mean([k / k0 for k, k0 in pairs]))

    def i(self, model: nn.Module) -> float:
        """(i): the mean over the groups of κ(H̃_H(θ)) / κ(H̃_H(θ0))."""
        return self._ratio(model, 1)

    def ii(self, model: nn.Module) -> float:
        """(ii): the mean over the groups of κ(H̃_P(θ)) / κ(H̃_P(θ0))."""
        return self._ratio(model, 0)

    def log_ii(self, model: nn.Module) -> torch.Tensor:
        """log (ii) = log mean_g κ_g(H̃_P(θ)) / κ_g(H̃_P(θ0)), differentiable (eigvalsh)."""
        from .deep_objective import log_condition_number

        z, rows = self.parts[0]
        feats, _ = FeaturesAndLogits(model, from_block=True)(z)
        log_k = torch.stack(
            [log_condition_number(feature_gram(feats[r])) for r in rows]
        )
        diff = log_k - self.log_ref.to(log_k.device)
        return torch.logsumexp(diff, 0) - float(np.log(len(rows)))


def _same_frozen_part(a: nn.Module, b: nn.Module) -> bool:
    """Whether ``a`` and ``b`` agree on every weight and buffer outside the immunized block and head."""
    if type(a) is not type(b):
        return False
    sa, sb = a.state_dict(), b.state_dict()
    if set(sa) != set(sb) or any(sa[n].shape != sb[n].shape for n in sa):
        return False
    block = "layer4." if architecture(a) == "resnet" else f"blocks.{len(a.blocks) - 1}."
    head = {f"{n}." for n, m in a.named_modules() if m is a.get_classifier()}
    return all(
        torch.equal(sa[n].cpu(), sb[n].cpu())
        for n in sa
        if not n.startswith(block) and not any(n.startswith(h) for h in head)
    )


def rir_theta0(
    theta0: nn.Module, immunized: nn.Module, data_p, data_h, **kwargs
) -> RIR:
    """RIR_θ0 (Eq. (17)) as the paper reports it: the means over the groups of :func:`rir_theta0_groups`.

    ``i``, ``ii`` and ``rir`` are the means of the per-group values (so ``rir`` is the mean of the
    per-group ratios, not ``i / ii``); the ``kappa_*`` fields are the geometric means of the
    groups' condition numbers.

    Chapter: {ref}`ch-deep-nets`.
    """
    groups = rir_theta0_groups(theta0, immunized, data_p, data_h, **kwargs)

    def mean(key):
        return float(np.mean([getattr(g, key) for g in groups]))

    def gmean(key):
        return float(np.exp(np.mean([np.log(getattr(g, key)) for g in groups])))

    return RIR(
        mean("i"),
        mean("ii"),
        mean("rir"),
        gmean("kappa_H"),
        gmean("kappa_H_ref"),
        gmean("kappa_P"),
        gmean("kappa_P_ref"),
    )


# ---------------------------------------------------------------------------------------------
# the attackers


def _eval_points(n_batches: int, evals_per_epoch: int) -> set[int]:
    """The batch indices (0-based, within an epoch) after which the curve records an accuracy."""
    return {
        max(0, round((k + 1) * n_batches / evals_per_epoch) - 1)
        for k in range(evals_per_epoch)
    }


def _probe(
    f_tr, y_tr, f_te, y_te, n_classes, epochs, batch_size, gen, evals
) -> list[float]:
    """Mini-batch SGD on a linear head with bias (zero start), step 1/λ_max(X̃ᵀX̃/N)."""

    def aug(f):
        return torch.cat([f, torch.ones(len(f), 1, dtype=torch.float64)], 1)

    a_tr, a_te = aug(f_tr.double()), aug(f_te.double())
    eta = 1.0 / float(torch.linalg.matrix_norm(a_tr, 2) ** 2 / len(a_tr))
    w = torch.zeros(a_tr.shape[1], n_classes, dtype=torch.float64)

    def acc():
        return float(((a_te @ w).argmax(1) == y_te).double().mean())

    accs = [acc()]
    n_batches = -(-len(a_tr) // batch_size)
    points = _eval_points(n_batches, evals)
    for _ in range(epochs):
        perm = torch.randperm(len(a_tr), generator=gen)
        for b in range(n_batches):
            j = perm[b * batch_size : (b + 1) * batch_size]
            p = torch.softmax(a_tr[j] @ w, 1)
            p[torch.arange(len(j)), y_tr[j]] -= 1
            w -= eta * a_tr[j].T @ p / len(j)  # the cross-entropy gradient
            if b in points:
                accs.append(acc())
    return accs


def _finetune(
    model,
    z_tr,
    y_tr,
    z_te,
    y_te,
    n_classes,
    epochs,
    batch_size,
    eta,
    gen,
    dev,
    whole,
    evals,
) -> list[float]:
    """A new zero head on D_H, trained with AdamW together with the block (or the whole network)."""
    m = copy.deepcopy(model).to(dev).eval()
    m.reset_classifier(n_classes)
    head = m.get_classifier()
    for p in head.parameters():
        nn.init.zeros_(p)
    for p in m.parameters():
        p.requires_grad_(whole)
    for p in list(head.parameters()) + (
        []
        if whole
        else list(
            m.layer4.parameters()
            if architecture(m) == "resnet"
            else m.blocks[-1].parameters()
        )
    ):
        p.requires_grad_(True)
    opt = torch.optim.AdamW(
        [p for p in m.parameters() if p.requires_grad], lr=eta, weight_decay=0.0
    )
    run = (
        (lambda x: forward_from_block(m, forward_to_block(m, x)))
        if whole
        else (lambda z: forward_from_block(m, z))
    )

    def test_acc() -> float:
        correct = 0
        with torch.no_grad(), exact_float32(dev):
            for start in range(0, len(z_te), 256):
                _, logits = run(z_te[start : start + 256].to(dev))
                correct += int(
                    (logits.argmax(1).cpu() == y_te[start : start + 256]).sum()
                )
        return correct / len(z_te)

    accs = [test_acc()]
    n_batches = len(z_tr) // batch_size
    points = _eval_points(n_batches, evals)
    for _ in range(epochs):
        perm = torch.randperm(len(z_tr), generator=gen)
        for b in range(n_batches):
            j = perm[b * batch_size : (b + 1) * batch_size]
            with exact_float32(dev):
                _, logits = run(z_tr[j].to(dev))
                loss = F.cross_entropy(logits, y_tr[j].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if b in points:
                accs.append(test_acc())
    return accs


def _images(data) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for x, y in DataLoader(data, batch_size=512):
        xs.append(x.float())
        ys.append(torch.as_tensor(y))
    return torch.cat(xs), torch.cat(ys)


def attack_curves(
    model: nn.Module,
    train,
    test,
    *,
    attackers=ATTACKERS,
    epochs: int = 10,
    finetune_epochs: int | None = None,
    batch_size: int = 64,
    eta: float = 1e-3,
    evals_per_epoch: int = 1,
    block_inputs_train: torch.Tensor | None = None,
    block_inputs_test: torch.Tensor | None = None,
    seed: int = 0,
    device="cpu",
) -> dict[str, np.ndarray]:
    """Each attacker's D_H test accuracy on ``test`` after each epoch of training on ``train``.

    ``attackers`` is a subset of :data:`ATTACKERS` (see the module docstring). The probes run
    ``epochs`` epochs; the two fine-tuning attackers ``finetune_epochs`` (default ``epochs``) with
    AdamW at step ``eta``, batch ``batch_size``, starting from a zero head of ``train``'s classes.
    Returns ``{attacker: array of epochs · evals_per_epoch + 1 accuracies}``: the first for the
    untrained head, then one after every 1/``evals_per_epoch`` of an epoch.
    ``block_inputs_train``/``_test`` (from :func:`immulib.networks.block_inputs` of any model with the same frozen
    layers, e.g. θ0) save recomputing the frozen part; they are checked on two samples.

    Chapter: {ref}`ch-deep-nets`.
    """
    architecture(model)
    train, test = check_dataset(train, "train"), check_dataset(test, "test")
    attackers = tuple(attackers) if not isinstance(attackers, str) else (attackers,)
    for a in attackers:
        v.choice(a, "attackers", ATTACKERS)
    epochs = v.integer(epochs, "epochs", 1)
    ft_epochs = (
        epochs
        if finetune_epochs is None
        else v.integer(finetune_epochs, "finetune_epochs", 1)
    )
    bs, eta = v.integer(batch_size, "batch_size", 1), v.positive(eta, "eta")
    dev, seed = v.device(device), v.integer(seed, "seed", 0)
    evals = v.integer(evals_per_epoch, "evals_per_epoch", 1)
    n_classes = num_classes(train, "train")
    if len(train) < bs:
        raise ValueError(f"batch_size {bs} is larger than train ({len(train)} samples)")
    if evals > len(train) // bs:
        raise ValueError(
            f"evals_per_epoch must be <= {len(train) // bs} (the batches in an epoch), got {evals}"
        )
    y_tr = torch.cat(
        [torch.as_tensor(y) for _, y in DataLoader(train, batch_size=1024)]
    )
    y_te = torch.cat([torch.as_tensor(y) for _, y in DataLoader(test, batch_size=1024)])
    z = {}
    for key, ds, given in (
        ("train", train, block_inputs_train),
        ("test", test, block_inputs_test),
    ):
        if given is None:
            z[key] = block_inputs(model, ds, device=dev)
        else:
            z[key] = check_block_inputs(
                model, ds, given, f"block_inputs_{key}", device=dev
            )
    out: dict[str, np.ndarray] = {}
    if {"probe", "probe_std"} & set(attackers):
        f_tr, f_te = (
            _suffix_features(model, z["train"], dev).double(),
            _suffix_features(model, z["test"], dev).double(),
        )
        if "probe" in attackers:
            out["probe"] = np.array(
                _probe(
                    f_tr,
                    y_tr,
                    f_te,
                    y_te,
                    n_classes,
                    epochs,
                    bs,
                    torch.Generator().manual_seed(seed),
                    evals,
                )
            )
        if "probe_std" in attackers:
            mu, sd = f_tr.mean(0), f_tr.std(0)
            sd = torch.where(sd > 0, sd, torch.ones_like(sd))
            out["probe_std"] = np.array(
                _probe(
                    (f_tr - mu) / sd,
                    y_tr,
                    (f_te - mu) / sd,
                    y_te,
                    n_classes,
                    epochs,
                    bs,
                    torch.Generator().manual_seed(seed),
                    evals,
                )
            )
    if "finetune_block" in attackers:
        out["finetune_block"] = np.array(
            _finetune(
                model,
                z["train"],
                y_tr,
                z["test"],
                y_te,
                n_classes,
                ft_epochs,
                bs,
                eta,
                torch.Generator().manual_seed(seed),
                dev,
                False,
                evals,
            )
        )
    if "finetune_all" in attackers:
        x_tr, _ = _images(train)
        x_te, _ = _images(test)
        out["finetune_all"] = np.array(
            _finetune(
                model,
                x_tr,
                y_tr,
                x_te,
                y_te,
                n_classes,
                ft_epochs,
                bs,
                eta,
                torch.Generator().manual_seed(seed),
                dev,
                True,
                evals,
            )
        )
    return {a: out[a] for a in attackers}


def epochs_to_target(curve, target: float, *, evals_per_epoch: int = 1) -> float:
    """The first time, in epochs, at which ``curve`` (accuracies, time 0 first, ``evals_per_epoch``
    points per epoch) reaches ``target``; ``inf`` if it never does.

    Chapter: {ref}`ch-deep-nets`.
    """
    curve = np.asarray(curve, dtype=float)
    if curve.ndim != 1 or curve.size == 0:
        raise ValueError(
            f"curve must be a non-empty 1-d array of accuracies, got shape {curve.shape}"
        )
    target = v.number(target, "target", minimum=0.0, maximum=1.0)
    evals = v.integer(evals_per_epoch, "evals_per_epoch", 1)
    hit = np.nonzero(curve >= target)[0]
    return float(hit[0]) / evals if hit.size else float("inf")
