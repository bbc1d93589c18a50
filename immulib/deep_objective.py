"""The immunization objective of a deep network, on mini-batch features (paper §5.2, Eq. (11), (18)).

On a mini-batch the features X̃ (rows = samples) give the probe Hessian H̃ = X̃ᵀX̃ (Eq. (18)),
formed in float64 from float32 features (:func:`feature_gram`). The methods (:data:`METHODS`):

* ``"ours"``: L(D_P) + λ_P · R_well(H̃_P) + λ_H · R_ill(H̃_H) (Eq. (11)) with the closed-form
  regularizers of :mod:`immulib.regularizers`. R_ill's k is min(B, D_hid), the rank of a B-sample
  Gram matrix in general position (the paper's k = rank); the authors' code uses the last
  dimension of the input batch (224 for their images) and σ_k from H̃ + 10⁻⁶I, on a mini-batch
  a null direction lifted to 10⁻⁶ (book chapter "The paper and its released code", item 13).
  As in their deep-net code there is no K⁻¹ preconditioning: the gradient reaches the block
  through ordinary backpropagation.
* ``"r_ill_only"``: λ_P = 0 but the supervised loss is kept (the ``max_only`` option of the
  authors' ``ImmuLoss``, a class their entry point does not use);
* ``"imma"``: bi-level, after IMMA (Zheng & Yeh, 2024): ``inner_steps`` differentiable gradient
  steps of a zero-initialised linear probe on the harmful batch, and the outer level minimises
  L(D_P) − λ_H · (harmful loss after those steps);
* ``"opt_kappa"``: L(D_P) + λ_H / log κ(H̃_H) + λ_P · log κ(H̃_P), κ through ``eigvalsh``;
* ``"constrained"``: Definition 3.1 as a constrained problem, maximise κ(H̃_H) while holding
  κ(H̃_P) at or below its value at θ0: L(D_P) + λ_H · R_ill(H̃_H) + λ_P · max(0, log κ(H̃_P) −
  log κ(H̃_P(θ0))), an exact penalty whose reference is θ0 on the same batch, applied as a
  switching method: on a batch where the constraint holds the step is L(D_P) + λ_H · R_ill(H̃_H);
  where it is violated, the step is L(D_P) + λ_P · (log κ(H̃_P) − log κ(H̃_P(θ0))) only, which
  moves back towards the feasible side. λ_P is set by :func:`balance_lambdas`. A batch of B
  samples sees only σ_1 … σ_B of its Gram matrix, so this alone does not bound the (ii) of
  RIR_θ0 measured on larger groups; :func:`immulib.deep_train.immunize_model` adds checks of (ii)
  on those groups, restoration steps and the best feasible iterate.

Chapter: "Deep networks: immunizing the last block" (``book/07_deep_nets.md``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._validate import choice, integer, nonneg, positive
from ._validate import device as check_device
from .image_data import batches, check_dataset, num_classes
from .linalg import gram, rank_tolerance
from .networks import FeaturesAndLogits, freeze
from .regularizers import r_ill, r_well

__all__ = [
    "METHODS",
    "balance_lambdas",
    "feature_gram",
    "immunization_loss",
    "log_condition_number",
    "probe_loss_after_steps",
]

#: The methods :func:`immulib.deep_train.immunize_model` runs: the paper's, its three baselines,
#: and the constrained form of Definition 3.1.
METHODS: tuple[str, ...] = ("ours", "r_ill_only", "imma", "opt_kappa", "constrained")

#: A violated constraint pulls this many times harder than the other terms together (at θ0).
CONSTRAINT_MARGIN = 2.0
#: Violations below this (in log κ) are rounding: at θ0 the two log κ differ by about 1e-14.
CONSTRAINT_SLACK = 1e-6


def feature_gram(features: torch.Tensor) -> torch.Tensor:
    """H̃ = X̃ᵀX̃ of a batch of features (rows = samples), in float64 (Eq. (18)); differentiable.

    The features must be float32 or float64: a Gram matrix of bfloat16 or float16 features
    inherits their rounding (relative 4e-3 for bfloat16) as a floor under its small eigenvalues.

    Chapter: {ref}`ch-deep-nets`.
    """
    if not isinstance(features, torch.Tensor) or features.ndim != 2:
        raise ValueError(
            f"features must be a 2-d tensor (samples × features), got {tuple(getattr(features, 'shape', ()))}"
        )
    if features.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"features must be float32 or float64 (compute them with autocast off), got {features.dtype}"
        )
    return gram(features.double())


def log_condition_number(H: torch.Tensor, *, k: int | None = None) -> torch.Tensor:
    """log(σ₁ / σ_k) of a symmetric PSD H, differentiable through ``torch.linalg.eigvalsh``.

    ``k=None`` uses the numerical rank (κ over the nonzero eigenvalues, Eq. (1)). Opt κ passes
    the batch's generic rank min(B, D) instead, so that an eigenvalue driven to zero sends log κ to
    infinity smoothly (σ_k is clamped at the rank tolerance) rather than leaving the spectrum.

    Chapter: {ref}`ch-deep-nets`.
    """
    lam = torch.linalg.eigvalsh(H)
    tol = rank_tolerance(lam.detach().abs(), tuple(H.shape), None)
    k = int((lam.detach() > tol).sum()) if k is None else integer(k, "k", 2)
    if not 2 <= k <= H.shape[0]:
        raise ValueError(
            f"k must be between 2 and {H.shape[0]} (H needs two nonzero eigenvalues), got {k}"
        )
    return torch.log(lam[-1]) - torch.log(torch.clamp(lam[-k], min=tol))


def probe_loss_after_steps(
    feats: torch.Tensor, y: torch.Tensor, n_classes: int, steps: int, eta: float
) -> torch.Tensor:
    """IMMA's inner level: the loss of a zero-initialised linear probe after ``steps`` differentiable GD steps.

    The step is ``eta`` / λ_max(Gram/B) of the (detached) features with a column of ones, so the
    inner attacker cannot be slowed by feature scale alone; the loss is differentiable in ``feats``.

    Chapter: {ref}`ch-deep-nets`.
    """
    aug = torch.cat([feats, torch.ones_like(feats[:, :1])], dim=1)
    step = eta / float(
        torch.linalg.matrix_norm(aug.detach().double(), 2) ** 2 / aug.shape[0]
    )
    w = torch.zeros(
        aug.shape[1], n_classes, dtype=aug.dtype, device=aug.device, requires_grad=True
    )
    for _ in range(steps):
        (g,) = torch.autograd.grad(F.cross_entropy(aug @ w, y), w, create_graph=True)
        w = w - step * g
    return F.cross_entropy(aug @ w, y)


def immunization_loss(
    feats_p: torch.Tensor,
    logits_p: torch.Tensor,
    y_p: torch.Tensor,
    feats_h: torch.Tensor,
    y_h: torch.Tensor | None = None,
    *,
    method: str = "ours",
    lam_P: float = 1.0,
    lam_H: float = 1.0,
    num_classes_h: int | None = None,
    inner_steps: int = 5,
    inner_eta: float = 1.0,
    log_kappa_p_ref: float | None = None,
    regularizer_fns: tuple[Callable, Callable] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The objective of one step (see the module docstring for each method), and its parts as floats.

    ``y_h`` and ``num_classes_h`` are needed only by ``"imma"`` (the others use the harmful inputs,
    never their labels, as Algorithm 1); ``log_kappa_p_ref`` (log κ(H̃_P) of θ0 on the same batch)
    only by ``"constrained"``. ``regularizer_fns`` = (R_ill, R_well) replaces the closed-form
    regularizers (the benchmark ``benchmarks/gpu_step.py`` passes autograd-through-``eigvalsh``
    versions); each is called as ``fn(H)`` or ``fn(H, k=k)``.

    Chapter: {ref}`ch-deep-nets`.
    """
    choice(method, "method", METHODS)
    lam_P, lam_H = nonneg(lam_P, "lam_P"), nonneg(lam_H, "lam_H")
    ill, well = (r_ill, r_well) if regularizer_fns is None else regularizer_fns
    task = F.cross_entropy(logits_p.float(), y_p)
    parts = {"task": float(task.detach())}
    if method == "imma":
        if y_h is None or num_classes_h is None:
            raise ValueError(
                'method="imma" needs y_h and num_classes_h (the harmful labels)'
            )
        harm = probe_loss_after_steps(
            feats_h.float(),
            y_h,
            num_classes_h,
            integer(inner_steps, "inner_steps", 1),
            positive(inner_eta, "inner_eta"),
        )
        parts["harmful_after_probe"] = float(harm.detach())
        return task - lam_H * harm, parts
    H_h, H_p = feature_gram(feats_h), feature_gram(feats_p)
    if method == "opt_kappa":
        log_kh = log_condition_number(H_h, k=min(feats_h.shape))
        log_kp = log_condition_number(H_p, k=min(feats_p.shape))
        parts.update(
            log_kappa_h=float(log_kh.detach()), log_kappa_p=float(log_kp.detach())
        )
        return task + lam_H / log_kh + lam_P * log_kp, parts
    reg_h = ill(H_h, k=min(feats_h.shape))
    parts["r_ill"] = float(reg_h.detach())
    loss = task + lam_H * reg_h
    if method == "ours":
        reg_p = well(H_p)
        parts["r_well"] = float(reg_p.detach())
        loss = loss + lam_P * reg_p
    elif method == "constrained":
        if log_kappa_p_ref is None:
            raise ValueError(
                'method="constrained" needs log_kappa_p_ref (log κ(H̃_P) of θ0 on the same batch)'
            )
        log_kp = log_condition_number(H_p, k=min(feats_p.shape))
        violation = torch.relu(log_kp - float(log_kappa_p_ref))
        parts.update(
            log_kappa_p=float(log_kp.detach()), violation=float(violation.detach())
        )
        if (
            parts["violation"] > CONSTRAINT_SLACK
        ):  # a switching step: restore feasibility first, R_ill waits
            loss = task + lam_P * violation
    return loss, parts


def balance_lambdas(
    theta0: nn.Module,
    data_p,
    data_h,
    *,
    method: str = "ours",
    ratio_p: float = 1.0,
    ratio_h: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
    device="cpu",
    inner_steps: int = 5,
    inner_eta: float = 1.0,
) -> tuple[float, float]:
    """(λ_P, λ_H) that balance gradient norms at θ0 on one seeded batch (paper §5.1's rule).

    λ_H = ratio_h · ‖∇L(D_P)‖ / ‖∇(D_H term)‖ and λ_P = ratio_p · ‖∇L(D_P)‖ / ‖∇(D_P term)‖, with
    gradients with respect to the trainable parameters (immunized block and head), so each term
    starts out pulling with ``ratio`` times the strength of the supervised loss. The terms are those
    of ``method`` (R_well / R_ill; IMMA's harmful loss; Opt κ's log κ and 1/log κ). λ_P is 0 for
    ``"r_ill_only"`` and ``"imma"``. For ``"constrained"`` the D_P term is the constraint's
    log κ(H̃_P), and λ_P = ratio_p · CONSTRAINT_MARGIN · ‖∇(L + λ_H R_ill)‖ / ‖∇ log κ(H̃_P)‖: once
    violated, the constraint outweighs the rest.

    Chapter: {ref}`ch-deep-nets`.
    """
    choice(method, "method", METHODS)
    ratio_p, ratio_h = nonneg(ratio_p, "ratio_p"), nonneg(ratio_h, "ratio_h")
    dev = check_device(device)
    data_p, data_h = check_dataset(data_p, "data_p"), check_dataset(data_h, "data_h")
    model = copy.deepcopy(theta0).to(dev).eval()
    names = set(freeze(model))
    params = [p for name, p in model.named_parameters() if name in names]
    net = FeaturesAndLogits(model)
    bs = integer(batch_size, "batch_size", 2)
    (x_p, y_p), (x_h, y_h) = (
        next(batches(data_p, bs, seed)),
        next(batches(data_h, bs, seed + 1)),
    )
    feats, logits = net(torch.cat([x_p, x_h]).to(dev))
    fp, fh, y_p, y_h = feats[:bs], feats[bs:], y_p.to(dev), y_h.to(dev)

    def norm(term) -> float:
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        return math.sqrt(
            sum(float((g.double() ** 2).sum()) for g in grads if g is not None)
        )

    task = F.cross_entropy(logits[:bs].float(), y_p)
    base = norm(task)
    if method == "imma":
        harm = probe_loss_after_steps(
            fh.float(), y_h, num_classes(data_h, "data_h"), inner_steps, inner_eta
        )
        return 0.0, ratio_h * base / norm(harm)
    if method == "opt_kappa":
        term_p = log_condition_number(feature_gram(fp), k=min(fp.shape))
        term_h = 1 / log_condition_number(feature_gram(fh), k=min(fh.shape))
        return ratio_p * base / norm(term_p), ratio_h * base / norm(term_h)
    term_h = r_ill(feature_gram(fh), k=min(fh.shape))
    lam_H = ratio_h * base / norm(term_h)
    if method == "r_ill_only":
        return 0.0, lam_H
    if method == "ours":
        return ratio_p * base / norm(r_well(feature_gram(fp))), lam_H
    rest = norm(task + lam_H * term_h)
    return ratio_p * CONSTRAINT_MARGIN * rest / norm(
        log_condition_number(feature_gram(fp), k=min(fp.shape))
    ), lam_H
