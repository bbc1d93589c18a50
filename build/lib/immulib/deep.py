"""Immunizing the last block of a deep network: ResNet and ViT from timm (paper §5.2, Table 3, Fig. 3).

The pre-trained model θ0 is a feature extractor f_θ plus a classifier head ω. Immunization trains
only the *immunized block* and the head; everything else stays exactly as in θ0:

* ResNet: ``layer4``, "the last two convolutional blocks" of ResNet18 (its two BasicBlocks);
* ViT: the final transformer block ``blocks[-1]`` only, as the paper says. (The authors' released
  code also unfreezes every LayerNorm, since it selects parameters whose name contains "norm";
  we follow the paper, not the code.)

BatchNorm statistics are frozen too: the network runs in ``eval()`` mode during immunization, so
"frozen" layers do not drift through their running means.

On a mini-batch the features X̃ (rows = samples) give the probe Hessian H̃ = X̃ᵀX̃ (Eq. (18)), formed
in float64 because its spectrum spans many decades. One step of the paper's method minimises

    L(D_P) + λ_P · R_well(H̃_P) + λ_H · R_ill(H̃_H)                    (Eq. (11))

with SGD and momentum; the regularizers are :func:`immulib.regularizers.r_well` and
:func:`immulib.regularizers.r_ill` (closed-form backward). R_ill's k is min(B, D_hid), the rank of
a B-sample Gram matrix in general position (the paper's k = rank): if training collapses feature
directions, σ_k = 0 stays in Eq. (12) instead of k dropping until R_ill is undefined. (The
authors' code uses k = D_hid, which for B < D_hid puts σ_k = 0 from the start.) As in the authors' deep-net code there
is no K⁻¹ preconditioning: the gradient reaches the block through ordinary backpropagation. On
CUDA the network runs under ``torch.autocast`` (bfloat16); the spectra are always float64.

The baselines (:data:`METHODS`), adapted to deep nets as in the paper and the authors' code:

* ``"r_ill_only"``: L(D_P) + λ_H · R_ill(H̃_H), i.e. λ_P = 0 but the supervised loss is kept;
* ``"imma"``: bi-level, after IMMA (Zheng & Yeh, 2024). The inner level runs ``imma_steps``
  differentiable gradient steps of a linear probe (zero initialisation, cross-entropy) on the
  harmful features of the batch; the outer level minimises L(D_P) − λ_H · (harmful loss after
  those steps), differentiating through the inner steps;
* ``"opt_kappa"``: L(D_P) + λ_H / log κ(H̃_H) + λ_P · log κ(H̃_P), with κ over the nonzero
  eigenvalues and autograd through ``torch.linalg.eigvalsh``.

Measured as in the paper: RIR_θ0 (Eq. (17)) over groups of samples (:func:`rir_theta0`), the
D_P test accuracy (:func:`accuracy`) and the attacker's linear-probing curve on D_H
(:func:`probe_curve`). Derived and run in the chapter "Deep networks: immunizing the last block"
(``book/07_deep_nets.md``); the multi-GPU path is :mod:`immulib.deep_ddp`.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from .linalg import condition_number, gram, rank_tolerance
from .regularizers import r_ill, r_well

__all__ = [
    "ArrayDataset",
    "FeaturesAndLogits",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFolderDataset",
    "ImmunizationResult",
    "METHODS",
    "accuracy",
    "architecture",
    "balance_lambdas",
    "create_model",
    "extract_features",
    "feature_gram",
    "freeze",
    "from_imageset",
    "image_folder_splits",
    "immunization_loss",
    "immunization_step",
    "immunize",
    "immunized_block",
    "log_condition_number",
    "num_classes",
    "pretrain",
    "probe_curve",
    "rir_theta0",
    "trainable_parameter_names",
]

#: The methods :func:`immunize` runs: the paper's (``"ours"``) and its three baselines.
METHODS: tuple[str, ...] = ("ours", "r_ill_only", "imma", "opt_kappa")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


# ---------------------------------------------------------------------------------------------
# argument checks


def _int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _float(value, name: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value}")
    return value


def _device(device) -> torch.device:
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device {device!r} is not a valid torch device: {err}") from None


def _module(model, name: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module (a timm model), got {type(model).__name__}")
    return model


def _dataset(ds, name: str) -> Dataset:
    if not isinstance(ds, Dataset):
        raise TypeError(f"{name} must be a torch Dataset of (image, label), got {type(ds).__name__}")
    if len(ds) == 0:
        raise ValueError(f"{name} is empty")
    return ds


def num_classes(ds: Dataset, name: str = "dataset") -> int:
    """The number of classes of an :class:`ArrayDataset` or :class:`ImageFolderDataset` (or a Subset of one)."""
    while isinstance(ds, Subset):
        ds = ds.dataset
    n = getattr(ds, "num_classes", None)
    if not isinstance(n, int):
        raise TypeError(f"{name} must have an int attribute num_classes (use ArrayDataset or ImageFolderDataset)")
    return n


def _amp(device: torch.device):
    """bfloat16 autocast for the network on CUDA, a no-op elsewhere."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


# ---------------------------------------------------------------------------------------------
# data


class ArrayDataset(Dataset):
    """Images already in memory: a float tensor N × C × H × W (normalised) and int64 labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int):
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(f"images must be a 4-d tensor N × C × H × W, got {getattr(images, 'shape', images)!r}")
        if not isinstance(labels, torch.Tensor) or labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be a 1-d tensor of length {images.shape[0]}")
        self.images, self.labels = images.float(), labels.long()
        self.num_classes = _int(num_classes, "num_classes")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def from_imageset(
    imageset, *, n: int | None = None, seed: int = 0, mean: float = MNIST_MEAN, std: float = MNIST_STD
) -> ArrayDataset:
    """An :class:`ArrayDataset` from an :class:`immulib.data.ImageSet` (uint8 N × 28 × 28, labels).

    ``n`` samples are drawn without replacement with ``seed`` (all of them if ``None``); pixels
    are scaled to [0, 1] and normalised with ``mean``/``std`` (MNIST's by default); one channel.
    """
    from .data import ImageSet

    if not isinstance(imageset, ImageSet):
        raise TypeError(f"imageset must be an immulib.data.ImageSet, got {type(imageset).__name__}")
    total = len(imageset.labels)
    idx = np.arange(total)
    if n is not None:
        n = _int(n, "n")
        if n > total:
            raise ValueError(f"n must be <= {total} (the size of the set), got {n}")
        idx = np.sort(np.random.default_rng(seed).choice(total, n, replace=False))
    x = torch.from_numpy(imageset.images[idx].astype(np.float32) / 255.0)[:, None]
    return ArrayDataset((x - mean) / std, torch.from_numpy(imageset.labels[idx].astype(np.int64)), 10)


class ImageFolderDataset(Dataset):
    """An ImageNet-style folder: one subfolder per class (sorted names = label order) of image files.

    Images are read with PIL, converted to RGB, resized so that the shorter side is
    ``round(img_size / 0.875)`` (bicubic), centre-cropped to ``img_size`` and normalised with
    ImageNet's mean and std, timm's evaluation transform. There is no augmentation (the authors
    train with RandomResizedCrop and flips). ``files`` restricts the dataset to some of the files.
    """

    def __init__(self, root, *, img_size: int = 224, files: list | None = None):
        if not isinstance(root, (str, Path)):
            raise TypeError(f"root must be a path, got {type(root).__name__}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"root {self.root} is not a folder")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not self.classes:
            raise ValueError(f"root {self.root} has no class subfolders")
        self.num_classes = len(self.classes)
        self.img_size = _int(img_size, "img_size", 8)
        if files is None:
            files = [
                (str(p), c)
                for c, name in enumerate(self.classes)
                for p in sorted((self.root / name).iterdir())
                if p.suffix.lower() in IMAGE_SUFFIXES
            ]
        if not files:
            raise ValueError(f"root {self.root} has no image files ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        path, label = self.files[i]
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = round(self.img_size / 0.875) / min(w, h)
            im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
            w, h = im.size
            left, top = (w - self.img_size) // 2, (h - self.img_size) // 2
            im = im.crop((left, top, left + self.img_size, top + self.img_size))
            x = np.asarray(im, dtype=np.float32) / 255.0
        x = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
        return torch.from_numpy(x.transpose(2, 0, 1).copy()), label


def image_folder_splits(
    root, *, img_size: int = 224, test_fraction: float = 0.2, seed: int = 0
) -> tuple[ImageFolderDataset, ImageFolderDataset]:
    """(train, test) datasets from an image folder.

    If ``root`` has a ``train`` subfolder and a ``val`` or ``test`` one (the ImageNet layout),
    those are the splits; otherwise ``root`` itself holds the class folders and a seeded random
    ``test_fraction`` of its files is the test split.
    """
    root = Path(root) if isinstance(root, (str, Path)) else root
    if isinstance(root, Path) and (root / "train").is_dir():
        for name in ("val", "test"):
            if (root / name).is_dir():
                train = ImageFolderDataset(root / "train", img_size=img_size)
                test = ImageFolderDataset(root / name, img_size=img_size)
                if test.classes != train.classes:
                    raise ValueError(f"{root}/train and {root}/{name} must have the same class folders")
                return train, test
    full = ImageFolderDataset(root, img_size=img_size)
    frac = _float(test_fraction, "test_fraction", positive=True)
    if frac >= 1:
        raise ValueError(f"test_fraction must be < 1, got {frac}")
    perm = np.random.default_rng(seed).permutation(len(full))
    n_test = max(1, int(round(frac * len(full))))
    if n_test >= len(full):
        raise ValueError(f"root {root} has too few images ({len(full)}) for a train/test split")
    pick = lambda idx: [full.files[i] for i in sorted(idx)]  # noqa: E731
    return (
        ImageFolderDataset(root, img_size=img_size, files=pick(perm[n_test:])),
        ImageFolderDataset(root, img_size=img_size, files=pick(perm[:n_test])),
    )


def _batches(ds: Dataset, batch_size: int, seed: int, num_workers: int = 0) -> Iterator:
    """Endless shuffled mini-batches (a new seeded permutation every pass, incomplete batches dropped)."""
    if len(ds) < batch_size:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset ({len(ds)} samples)")
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        ds, batch_size=batch_size, sampler=RandomSampler(ds, generator=gen), drop_last=True, num_workers=num_workers
    )
    while True:
        yield from loader


# ---------------------------------------------------------------------------------------------
# models, the immunized block, freezing


def create_model(
    model_name: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    img_size: int = 224,
    pretrained: bool = False,
    seed: int = 0,
    **timm_kwargs,
) -> nn.Module:
    """A timm ResNet or ViT (``timm.create_model``), with random weights drawn from ``seed``.

    ``img_size`` is passed to ViTs (ResNets take any size). ``timm_kwargs`` override timm's
    architecture, e.g. ``channels=(32, 64, 128, 256), stem_width=32`` for a narrow ResNet18 or
    ``patch_size=7, depth=4`` for a small ViT. ``pretrained=True`` downloads the weights (it needs
    the network, or a filled Hugging Face cache). The global random state is left untouched.
    """
    import timm

    if not isinstance(model_name, str):
        raise TypeError(f"model_name must be a str, got {type(model_name).__name__}")
    if not timm.is_model(model_name):
        raise ValueError(f"model_name {model_name!r} is not a timm model")
    kwargs = dict(num_classes=_int(num_classes, "num_classes"), in_chans=_int(in_chans, "in_chans"), **timm_kwargs)
    if "vit" in model_name:
        kwargs["img_size"] = _int(img_size, "img_size", 8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(model_name, pretrained=bool(pretrained), **kwargs)
    architecture(model)  # only ResNets and ViTs
    return model


def architecture(model: nn.Module) -> str:
    """``"resnet"`` (a timm model with ``layer4``) or ``"vit"`` (one with ``blocks``); else TypeError."""
    _module(model, "model")
    if isinstance(getattr(model, "layer4", None), nn.Module) and hasattr(model, "forward_head"):
        return "resnet"
    if isinstance(getattr(model, "blocks", None), nn.Sequential) and hasattr(model, "forward_head"):
        return "vit"
    raise TypeError(f"model must be a timm ResNet (with layer4) or ViT (with blocks), got {type(model).__name__}")


def immunized_block(model: nn.Module) -> nn.Module:
    """The part immunization trains: ResNet ``layer4``, ViT ``blocks[-1]`` (paper §5.2)."""
    return model.layer4 if architecture(model) == "resnet" else model.blocks[-1]


def trainable_parameter_names(model: nn.Module, *, train_head: bool = True) -> list[str]:
    """Names of the parameters immunization trains: the immunized block (and the head ω)."""
    keep = {id(p) for p in immunized_block(model).parameters()}
    if train_head:
        keep |= {id(p) for p in model.get_classifier().parameters()}
    return [name for name, p in model.named_parameters() if id(p) in keep]


def freeze(model: nn.Module, *, train_head: bool = True) -> list[str]:
    """Set ``requires_grad`` on the immunized block (and head) only; return their names."""
    names = set(trainable_parameter_names(model, train_head=train_head))
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)
    return sorted(names)


class FeaturesAndLogits(nn.Module):
    """Wraps a timm model so that one forward pass returns (features f_θ(x), logits g_ω(f_θ(x))).

    The features are timm's pre-logits (ResNet: global average pool; ViT: the class token, or the
    token average with ``global_pool="avg"``, after the final norm). One module with one forward is what DistributedDataParallel needs.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        architecture(model)
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return feats, self.model.get_classifier()(feats)


# ---------------------------------------------------------------------------------------------
# the immunization objective


def feature_gram(features: torch.Tensor) -> torch.Tensor:
    """H̃ = X̃ᵀX̃ of a batch of features (rows = samples), in float64 (Eq. (18)); differentiable."""
    if not isinstance(features, torch.Tensor) or features.ndim != 2:
        raise ValueError(f"features must be a 2-d tensor (samples × features), got {getattr(features, 'shape', features)!r}")
    return gram(features.double())


def log_condition_number(H: torch.Tensor, *, k: int | None = None) -> torch.Tensor:
    """log(σ₁ / σ_k) of a symmetric PSD H, differentiable through ``torch.linalg.eigvalsh``.

    ``k=None`` uses the numerical rank (κ over the nonzero eigenvalues, Eq. (1)). The Opt κ
    baseline passes the batch's generic rank min(B, D) instead, so that an eigenvalue the
    optimiser drives to zero sends log κ to infinity smoothly rather than dropping out of the
    spectrum (σ_k is clamped at the rank tolerance). The authors' code also differentiates log κ
    through ``eigvalsh``.
    """
    lam = torch.linalg.eigvalsh(H)
    tol = rank_tolerance(lam.detach().abs(), tuple(H.shape), None)
    k = int((lam.detach() > tol).sum()) if k is None else _int(k, "k", 2)
    if not 2 <= k <= H.shape[0]:
        raise ValueError(f"k must be between 2 and {H.shape[0]} (H needs two nonzero eigenvalues), got {k}")
    return torch.log(lam[-1]) - torch.log(torch.clamp(lam[-k], min=tol))


def _probe_loss_after_steps(feats: torch.Tensor, y: torch.Tensor, num_classes: int, steps: int, lr: float) -> torch.Tensor:
    """IMMA's inner level: a zero-initialised linear probe after ``steps`` differentiable GD steps.

    The step is ``lr`` / λ_max(Gram/B) of the (detached) augmented features, so the inner attacker
    cannot be slowed by feature scale alone; the returned loss is differentiable in ``feats``.
    """
    aug = torch.cat([feats, torch.ones_like(feats[:, :1])], dim=1)
    step = lr / float(torch.linalg.matrix_norm(aug.detach().double(), 2) ** 2 / aug.shape[0])
    w = torch.zeros(aug.shape[1], num_classes, dtype=aug.dtype, device=aug.device, requires_grad=True)
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
    lambda_p: float = 1.0,
    lambda_h: float = 1.0,
    num_classes_h: int | None = None,
    imma_steps: int = 5,
    imma_lr: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The objective of one step, and its parts as floats (see the module docstring for each method).

    ``y_h`` and ``num_classes_h`` are needed only by ``"imma"`` (the others use the harmful
    inputs, never their labels, as Algorithm 1). Returns a float64 scalar.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    lambda_p, lambda_h = _float(lambda_p, "lambda_p"), _float(lambda_h, "lambda_h")
    task = F.cross_entropy(logits_p.float(), y_p)
    parts = {"task": float(task.detach())}
    if method == "imma":
        if y_h is None or num_classes_h is None:
            raise ValueError('method="imma" needs y_h and num_classes_h (the harmful labels)')
        harm = _probe_loss_after_steps(feats_h.float(), y_h, num_classes_h, _int(imma_steps, "imma_steps"), imma_lr)
        parts["harmful_after_probe"] = float(harm.detach())
        return task - lambda_h * harm, parts
    H_h = feature_gram(feats_h)
    H_p = feature_gram(feats_p)
    if method == "opt_kappa":
        log_kh = log_condition_number(H_h, k=min(feats_h.shape))
        log_kp = log_condition_number(H_p, k=min(feats_p.shape))
        parts.update(log_kappa_h=float(log_kh.detach()), log_kappa_p=float(log_kp.detach()))
        return task + lambda_h / log_kh + lambda_p * log_kp, parts
    reg_h = r_ill(H_h, k=min(feats_h.shape))
    parts["r_ill"] = float(reg_h.detach())
    loss = task + lambda_h * reg_h
    if method == "ours":
        reg_p = r_well(H_p)
        parts["r_well"] = float(reg_p.detach())
        loss = loss + lambda_p * reg_p
    return loss, parts


def immunization_step(
    net: nn.Module,
    batch_p,
    batch_h,
    optimizer: torch.optim.Optimizer,
    *,
    device,
    max_grad_norm: float | None = None,
    **loss_kwargs,
) -> dict[str, float]:
    """One SGD step of :func:`immunization_loss` on a D_P batch and a D_H batch.

    ``net`` maps images to (features, logits): a :class:`FeaturesAndLogits` or the same wrapped in
    DistributedDataParallel. Both batches go through the network in one forward pass (BatchNorm
    runs in eval mode, so concatenating them changes nothing), under bfloat16 autocast on CUDA.
    ``max_grad_norm`` (optional) clips the gradient norm of the optimised parameters.
    """
    device = _device(device)
    (x_p, y_p), (x_h, y_h) = batch_p, batch_h
    x = torch.cat([x_p, x_h]).to(device, non_blocking=True)
    y_p, y_h = y_p.to(device), y_h.to(device)
    with _amp(device):
        feats, logits = net(x)
    n = x_p.shape[0]
    loss, parts = immunization_loss(feats[:n], logits[:n], y_p, feats[n:], y_h, **loss_kwargs)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        parts["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, _float(max_grad_norm, "max_grad_norm", positive=True)))
    optimizer.step()
    parts["loss"] = float(loss.detach())
    return parts


def _check_method_and_lambdas(method, lambda_p, lambda_h):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return _float(lambda_p, "lambda_p"), _float(lambda_h, "lambda_h")


def balance_lambdas(
    theta0: nn.Module,
    data_p: Dataset,
    data_h: Dataset,
    *,
    method: str = "ours",
    ratio_p: float = 1.0,
    ratio_h: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
    device="cpu",
    imma_steps: int = 5,
    imma_lr: float = 1.0,
) -> tuple[float, float]:
    """(λ_P, λ_H) that balance gradient norms at θ0 on one seeded batch (paper §5.1's rule).

    λ_P = ratio_p · ‖∇L(D_P)‖ / ‖∇(D_P term)‖ and λ_H = ratio_h · ‖∇L(D_P)‖ / ‖∇(D_H term)‖, with
    gradients taken with respect to the trainable parameters (immunized block and head), so each
    regularizer starts out pulling with ``ratio`` times the strength of the supervised loss. The
    terms are those of ``method`` (R_well / R_ill; IMMA's harmful loss; Opt κ's log κ and 1/log κ).
    λ_P is 0 for the methods without a D_P term (``"r_ill_only"``, ``"imma"``).
    """
    _check_method_and_lambdas(method, 0.0, 0.0)
    ratio_p, ratio_h = _float(ratio_p, "ratio_p"), _float(ratio_h, "ratio_h")
    device = _device(device)
    model = copy.deepcopy(_module(theta0, "theta0")).to(device).eval()
    params = [p for name, p in model.named_parameters() if name in set(freeze(model))]
    net = FeaturesAndLogits(model)
    bs = _int(batch_size, "batch_size", 2)
    (x_p, y_p), (x_h, y_h) = next(_batches(data_p, bs, seed)), next(_batches(data_h, bs, seed + 1))
    with _amp(device):
        feats, logits = net(torch.cat([x_p, x_h]).to(device))
    fp, fh, y_p, y_h = feats[:bs], feats[bs:], y_p.to(device), y_h.to(device)

    def norm(term) -> float:
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        return math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads if g is not None))

    base = norm(F.cross_entropy(logits[:bs].float(), y_p))
    if method == "imma":
        harm = _probe_loss_after_steps(fh.float(), y_h, num_classes(data_h, "data_h"), imma_steps, imma_lr)
        return 0.0, ratio_h * base / norm(harm)
    if method == "opt_kappa":
        term_p = log_condition_number(feature_gram(fp), k=min(fp.shape))
        term_h = 1 / log_condition_number(feature_gram(fh), k=min(fh.shape))
    else:
        term_p, term_h = r_well(feature_gram(fp)), r_ill(feature_gram(fh), k=min(fh.shape))
    lam_h = ratio_h * base / norm(term_h)
    return (ratio_p * base / norm(term_p) if method != "r_ill_only" else 0.0), lam_h


class ImmunizationResult(NamedTuple):
    """What :func:`immunize` returns: the immunized model θ_I and the per-step loss parts."""

    model: nn.Module
    history: list[dict[str, float]]


def immunize(
    theta0: nn.Module,
    data_p: Dataset,
    data_h: Dataset,
    *,
    method: str = "ours",
    lambda_p: float,
    lambda_h: float,
    steps: int = 100,
    batch_size: int = 64,
    lr: float = 0.01,
    momentum: float = 0.9,
    imma_steps: int = 5,
    imma_lr: float = 1.0,
    max_grad_norm: float | None = None,
    seed: int = 0,
    device="cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> ImmunizationResult:
    """Immunize a copy of θ0's last block (and head) with SGD + momentum; θ0 itself is untouched.

    Each of ``steps`` steps takes a D_P batch and a D_H batch of ``batch_size`` samples (seeded
    shuffles of ``data_p`` and ``data_h``) and applies :func:`immunization_step` with ``method``,
    ``lambda_p`` and ``lambda_h`` (see :func:`balance_lambdas` for the paper's way of choosing them),
    clipping the gradient norm at ``max_grad_norm`` if given (R_ill without R_well rewards ever
    larger features, see the chapter, and can otherwise diverge).
    The network runs in eval mode (frozen BatchNorm statistics), under bfloat16 autocast on CUDA;
    the Gram matrices and regularizers are float64. Paper §5.2, Eq. (11).
    """
    from tqdm.auto import tqdm

    lambda_p, lambda_h = _check_method_and_lambdas(method, lambda_p, lambda_h)
    device = _device(device)
    steps, bs = _int(steps, "steps"), _int(batch_size, "batch_size", 2)
    lr, momentum = _float(lr, "lr", positive=True), _float(momentum, "momentum")
    data_p, data_h = _dataset(data_p, "data_p"), _dataset(data_h, "data_h")
    model = copy.deepcopy(_module(theta0, "theta0")).to(device).eval()
    names = set(freeze(model))
    optimizer = torch.optim.SGD([p for n, p in model.named_parameters() if n in names], lr=lr, momentum=momentum)
    net = FeaturesAndLogits(model)
    batches_p, batches_h = _batches(data_p, bs, seed, num_workers), _batches(data_h, bs, seed + 1, num_workers)
    loss_kwargs = dict(
        method=method, lambda_p=lambda_p, lambda_h=lambda_h,
        num_classes_h=num_classes(data_h, "data_h") if method == "imma" else None,
        imma_steps=imma_steps, imma_lr=imma_lr,
    )
    history = []
    for step in tqdm(range(steps), desc=f"immunize ({method})", disable=not progress):
        parts = immunization_step(
            net, next(batches_p), next(batches_h), optimizer, device=device, max_grad_norm=max_grad_norm, **loss_kwargs
        )
        if not math.isfinite(parts["loss"]):
            raise FloatingPointError(
                f"the {method} loss became {parts['loss']} at step {step}: lower lr, lambda_p or lambda_h"
            )
        history.append(parts)
    for p in model.parameters():
        p.requires_grad_(False)
    return ImmunizationResult(model, history)


# ---------------------------------------------------------------------------------------------
# pre-training θ0 (for the CPU chapter, which has no downloaded weights)


def pretrain(
    model: nn.Module,
    data: Dataset,
    *,
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device="cpu",
    progress: bool = True,
) -> list[float]:
    """Train every parameter of ``model`` in place on ``data`` with AdamW; return the batch losses.

    This stands in for ImageNet pre-training in the CPU chapter: θ0 must already solve D_P.
    """
    from tqdm.auto import tqdm

    _module(model, "model")
    data, device = _dataset(data, "data"), _device(device)
    epochs, bs = _int(epochs, "epochs"), _int(batch_size, "batch_size")
    model.to(device).train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=_float(lr, "lr", positive=True))
    batches = _batches(data, bs, seed)
    losses = []
    for _ in tqdm(range(epochs * (len(data) // bs)), desc="pre-train θ0", disable=not progress):
        x, y = next(batches)
        with _amp(device):
            loss = F.cross_entropy(model(x.to(device)).float(), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


# ---------------------------------------------------------------------------------------------
# evaluation: features, accuracy, RIR_θ0, the attacker's probe


@torch.no_grad()
def extract_features(
    model: nn.Module, data: Dataset, *, indices=None, batch_size: int = 256, device="cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of ``data`` (or of ``data[indices]``) on the CPU, features float32.

    The model runs in eval mode (bfloat16 autocast on CUDA); it is left in eval mode.
    """
    net = FeaturesAndLogits(_module(model, "model"))
    device = _device(device)
    data = _dataset(data, "data") if indices is None else Subset(_dataset(data, "data"), list(indices))
    model.to(device).eval()
    feats, labels = [], []
    for x, y in DataLoader(data, batch_size=_int(batch_size, "batch_size")):
        with _amp(device):
            f, _ = net(x.to(device))
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def accuracy(model: nn.Module, data: Dataset, *, batch_size: int = 256, device="cpu") -> float:
    """Fraction of ``data`` that ``model`` (features and its own head) classifies correctly."""
    net = FeaturesAndLogits(_module(model, "model"))
    device = _device(device)
    model.to(device).eval()
    correct = 0
    for x, y in DataLoader(_dataset(data, "data"), batch_size=_int(batch_size, "batch_size")):
        with _amp(device):
            _, logits = net(x.to(device))
        correct += int((logits.argmax(1).cpu() == torch.as_tensor(y)).sum())
    return correct / len(data)


def _shares_parameters(a: nn.Module, b: nn.Module) -> bool:
    ptrs = {p.data_ptr() for p in a.parameters()}
    return any(p.data_ptr() in ptrs for p in b.parameters())


def rir_theta0(
    theta0: nn.Module,
    immunized: nn.Module,
    data_p: Dataset,
    data_h: Dataset,
    *,
    n_groups: int = 20,
    group_size: int = 100,
    seed: int = 0,
    batch_size: int = 256,
    device="cpu",
) -> dict[str, object]:
    """RIR_θ0 of Eq. (17), estimated as the paper does over ``n_groups`` groups of ``group_size`` samples.

    For each group, D_P and D_H samples are drawn (without replacement, seeded) and the same samples
    go through θ0 and θ_I:
    (i) = κ(H̃_H(θ_I)) / κ(H̃_H(θ0)), (ii) = κ(H̃_P(θ_I)) / κ(H̃_P(θ0)), RIR_θ0 = (i) / (ii), with κ
    the pseudo-inverse condition number (Eq. (1)) of the float64 feature Gram (rank ≤ group_size).

    Returns ``{"i": array, "ii": array, "rir": array}`` (one value per group) and the means and
    standard deviations (ddof = 1) as ``"i_mean"``, ``"i_std"``, … .

    ``theta0`` must be a separate copy taken *before* immunization: the authors' released
    evaluation passes the same model twice and always reports 1.0 (their GitHub issue #1), so this
    function raises ``ValueError`` if the two models are the same object or share any parameter.
    """
    _module(theta0, "theta0"), _module(immunized, "immunized")
    if theta0 is immunized or _shares_parameters(theta0, immunized):
        raise ValueError(
            "theta0 and immunized are the same model (or share parameters): RIR_θ0 would be 1 by "
            "construction. Keep a copy of θ0 taken before immunization (copy.deepcopy(model))."
        )
    n_groups, group_size = _int(n_groups, "n_groups", 2), _int(group_size, "group_size", 2)
    data_p, data_h = _dataset(data_p, "data_p"), _dataset(data_h, "data_h")
    for name, ds in (("data_p", data_p), ("data_h", data_h)):
        if group_size > len(ds):
            raise ValueError(f"group_size {group_size} is larger than {name} ({len(ds)} samples)")
    rng = np.random.default_rng(seed)
    groups = [(rng.choice(len(data_p), group_size, replace=False), rng.choice(len(data_h), group_size, replace=False))
              for _ in range(n_groups)]

    def kappas(model, ds, which):
        idx = np.unique(np.concatenate([g[which] for g in groups]))
        feats, _ = extract_features(model, ds, indices=idx.tolist(), batch_size=batch_size, device=device)
        row = {int(j): r for r, j in enumerate(idx)}
        return [condition_number(feature_gram(feats[[row[int(j)] for j in g[which]]])) for g in groups]

    k = {(m, w): np.array(kappas(model, ds, w)) for m, model in (("0", theta0), ("I", immunized))
         for w, ds in ((0, data_p), (1, data_h))}
    out: dict[str, object] = {"i": k["I", 1] / k["0", 1], "ii": k["I", 0] / k["0", 0]}
    out["rir"] = out["i"] / out["ii"]
    for key in ("i", "ii", "rir"):
        out[f"{key}_mean"], out[f"{key}_std"] = float(np.mean(out[key])), float(np.std(out[key], ddof=1))
    return out


def probe_curve(
    model: nn.Module,
    train: Dataset,
    test: Dataset,
    *,
    epochs: int = 20,
    batch_size: int = 64,
    lr_scale: float = 1.0,
    seed: int = 0,
    batch_size_features: int = 256,
    device="cpu",
) -> np.ndarray:
    """The attacker's linear probing on frozen features: D_H test accuracy after each epoch.

    Features of ``train`` and ``test`` are computed once; a linear head (with bias, zero
    initialisation) is trained with plain mini-batch SGD on the cached training features for
    ``epochs`` epochs. The step is ``lr_scale`` / λ_max(X̃ᵀX̃/N) with X̃ the training features plus a
    column of ones: the attacker adapts the step to the features' scale (the cross-entropy Hessian
    is at most half that Gram), so what can still slow him down is the conditioning, as in Eq. (2).
    Returns ``epochs + 1`` accuracies, the first for the zero head (chance). Fig. 3 of the paper.
    """
    epochs, bs = _int(epochs, "epochs"), _int(batch_size, "batch_size")
    lr_scale = _float(lr_scale, "lr_scale", positive=True)
    n_classes = num_classes(train, "train")
    f_tr, y_tr = extract_features(model, train, batch_size=batch_size_features, device=device)
    f_te, y_te = extract_features(model, test, batch_size=batch_size_features, device=device)
    aug = lambda f: torch.cat([f.double(), torch.ones(len(f), 1, dtype=torch.float64)], 1)  # noqa: E731
    a_tr, a_te = aug(f_tr), aug(f_te)
    lr = lr_scale / float(torch.linalg.matrix_norm(a_tr, 2) ** 2 / len(a_tr))
    w = torch.zeros(a_tr.shape[1], n_classes, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    accs = [float(((a_te @ w).argmax(1) == y_te).double().mean())]
    for _ in range(epochs):
        perm = torch.randperm(len(a_tr), generator=gen)
        for start in range(0, len(perm), bs):
            j = perm[start:start + bs]
            p = torch.softmax(a_tr[j] @ w, 1)
            p[torch.arange(len(j)), y_tr[j]] -= 1
            w -= lr * a_tr[j].T @ p / len(j)  # the cross-entropy gradient
        accs.append(float(((a_te @ w).argmax(1) == y_te).double().mean()))
    return np.array(accs)
