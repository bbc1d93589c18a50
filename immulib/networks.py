"""The deep networks the paper immunizes: timm ResNets and ViTs, their immunized block, and float32 features.

The pre-trained model θ0 is a feature extractor f_θ plus a classifier head ω. Immunization trains
only the *immunized block* (and the head); everything before it stays exactly as in θ0 (paper §5.2):

* ResNet: ``layer4``, "the last two convolutional blocks" of ResNet18 (its two BasicBlocks);
* ViT: the final transformer block ``blocks[-1]`` only, as the paper says. (The authors' released
  code also unfreezes every LayerNorm, since it selects parameter names containing "norm"; we
  follow the paper, not the code.)

Only these two families are accepted (:func:`architecture`): a timm MobileNetV3 or EfficientNet
also has a ``blocks`` Sequential, but its last "block" is a stage of inverted residuals, not a
transformer block, so it is refused by name rather than immunized by accident.

The features that feed a Gram matrix (the regularizers, RIR_θ0, the probes) are computed by
:class:`FeaturesAndLogits` in float32 with autocast off and, on CUDA, without TF32, whatever
precision the caller runs in: bfloat16 features carry a relative rounding error of about 4e-3,
a noise floor right where R_ill pushes the smallest singular values (chapter
``book/07_deep_nets.md``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ._validate import integer

__all__ = [
    "FeaturesAndLogits",
    "architecture",
    "block_inputs",
    "check_block_inputs",
    "check_inputs",
    "create_model",
    "exact_float32",
    "forward_from_block",
    "forward_to_block",
    "freeze",
    "immunized_block",
    "input_channels",
    "input_statistics",
    "trainable_parameter_names",
]


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
    ``patch_size=7, depth=4`` for a small ViT. ``pretrained=True`` loads timm's weights (it needs
    the network or a filled Hugging Face cache). The global random state is left untouched. Any
    other model family is refused (:func:`architecture`).

    Chapter: {ref}`ch-deep-nets`.
    """
    import timm

    if not isinstance(model_name, str):
        raise TypeError(f"model_name must be a str, got {type(model_name).__name__}")
    if not timm.is_model(model_name):
        raise ValueError(f"model_name {model_name!r} is not a timm model")
    if not isinstance(pretrained, bool):
        raise TypeError(f"pretrained must be a bool, got {type(pretrained).__name__}")
    kwargs = dict(
        num_classes=integer(num_classes, "num_classes", 1),
        in_chans=integer(in_chans, "in_chans", 1),
        **timm_kwargs,
    )
    if "vit" in model_name:
        kwargs["img_size"] = integer(img_size, "img_size", 8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(integer(seed, "seed", 0))
        model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
    architecture(model)
    return model


def input_statistics(*model_names: str) -> tuple[tuple, tuple]:
    """(mean, std) per RGB channel that the timm weights of ``model_names`` expect their
    inputs normalised with, from timm's registry (``pretrained_cfg``; nothing is downloaded):
    ImageNet's for ``resnet18``, 0.5 and 0.5 for ``vit_base_patch16_224``. The statistics
    :class:`immulib.image_data.ImageFolderDataset` should use for these models; one dataset
    serves them all only if they agree, so a ``ValueError`` names them where they do not (run
    such models separately).

    Chapter: {ref}`ch-deep-nets`.
    """
    import timm
    from timm.models import get_pretrained_cfg

    if not model_names:
        raise ValueError("input_statistics needs at least one model name")
    found = {}
    for name in model_names:
        if not isinstance(name, str):
            raise TypeError(f"model names must be str, got {type(name).__name__}")
        if not timm.is_model(name):
            raise ValueError(f"model name {name!r} is not a timm model")
        cfg = get_pretrained_cfg(name)
        if cfg is None or cfg.mean is None or cfg.std is None:
            raise ValueError(f"timm declares no input statistics for {name!r}")
        found[name] = (
            tuple(float(v) for v in cfg.mean),
            tuple(float(v) for v in cfg.std),
        )
    if len(set(found.values())) > 1:
        listed = "; ".join(f"{n}: mean {m}, std {s}" for n, (m, s) in found.items())
        raise ValueError(
            "these models expect differently normalised inputs, so one dataset cannot serve "
            f"them all; run them separately ({listed})"
        )
    return next(iter(found.values()))


def architecture(model: nn.Module) -> str:
    """``"resnet"`` for a timm ``ResNet``, ``"vit"`` for a timm ``VisionTransformer``.

    Anything else (MobileNetV3, EfficientNet, ConvNeXt, a plain ``nn.Module``) raises a
    ``TypeError`` that names its class: the immunized block is defined for these two only.

    Chapter: {ref}`ch-deep-nets`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module (a timm ResNet or ViT), got {type(model).__name__}"
        )
    from timm.models.resnet import ResNet
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, ResNet):
        return "resnet"
    if isinstance(model, VisionTransformer):
        return "vit"
    raise TypeError(
        f"model is a {type(model).__name__}; immulib immunizes timm ResNets (timm.models.resnet.ResNet) and "
        f"ViTs (timm.models.vision_transformer.VisionTransformer) only"
    )


def immunized_block(model: nn.Module) -> nn.Module:
    """The part immunization trains: ResNet ``layer4``, ViT ``blocks[-1]`` (paper §5.2).

    Chapter: {ref}`ch-deep-nets`.
    """
    return model.layer4 if architecture(model) == "resnet" else model.blocks[-1]


def trainable_parameter_names(
    model: nn.Module, *, train_head: bool = True
) -> list[str]:
    """Names of the parameters immunization trains: the immunized block (and the head ω).

    Chapter: {ref}`ch-deep-nets`.
    """
    keep = {id(p) for p in immunized_block(model).parameters()}
    if train_head:
        keep |= {id(p) for p in model.get_classifier().parameters()}
    return [name for name, p in model.named_parameters() if id(p) in keep]


def freeze(model: nn.Module, *, train_head: bool = True) -> list[str]:
    """Set ``requires_grad`` on the immunized block (and head) only; return their names, sorted.

    Chapter: {ref}`ch-deep-nets`.
    """
    names = set(trainable_parameter_names(model, train_head=train_head))
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)
    return sorted(names)


def input_channels(model: nn.Module) -> int:
    """The number of input channels the model's first layer takes.

    Chapter: {ref}`ch-deep-nets`.
    """
    if architecture(model) == "resnet":
        return model.conv1.in_channels
    return model.patch_embed.proj.in_channels


def check_inputs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    name: str = "data",
) -> None:
    """Refuse, with a ValueError naming ``name``, images the model cannot take or labels it cannot score.

    Checks a batch ``x`` (B × C × H × W): C against the model's input channels, H × W against a
    ViT's fixed image size; and labels ``y`` against ``0 … num_classes − 1`` of the head.

    Chapter: {ref}`ch-deep-nets`.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(
            f"{name} must give image batches B × C × H × W, got shape {tuple(getattr(x, 'shape', ()))}"
        )
    c = input_channels(model)
    if x.shape[1] != c:
        raise ValueError(
            f"{name} has {x.shape[1]}-channel images but the model takes {c} channels (in_chans)"
        )
    if architecture(model) == "vit" and not getattr(
        model.patch_embed, "dynamic_img_size", False
    ):
        size = tuple(model.patch_embed.img_size)
        if tuple(x.shape[2:]) != size:
            raise ValueError(
                f"{name} has {tuple(x.shape[2:])}-pixel images but the ViT was built for {size} (img_size)"
            )
    elif min(x.shape[2:]) < 8:
        raise ValueError(
            f"{name} has {tuple(x.shape[2:])}-pixel images; the ResNet needs at least 8 × 8"
        )
    if y is not None:
        n = model.num_classes
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n):
            raise ValueError(
                f"{name} has labels in [{int(y.min())}, {int(y.max())}] but the model's head has "
                f"{n} classes (labels must be 0 … {n - 1})"
            )


@contextlib.contextmanager
def exact_float32(device: torch.device | str) -> Iterator[None]:
    """Autocast off (on CPU and CUDA) and, on CUDA, no TF32 in matmuls and convolutions, then restore.

    Chapter: {ref}`ch-deep-nets`.
    """
    device = torch.device(device)
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast("cpu", enabled=False))
        if device.type == "cuda":
            stack.enter_context(torch.autocast("cuda", enabled=False))
            stack.enter_context(
                torch.backends.cudnn.flags(enabled=True, allow_tf32=False)
            )
            old = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
            stack.callback(setattr, torch.backends.cuda.matmul, "allow_tf32", old)
        yield


def forward_to_block(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The frozen part of the network: its activations just before the immunized block.

    Chapter: {ref}`ch-deep-nets`.
    """
    if architecture(model) == "resnet":
        x = model.maxpool(model.act1(model.bn1(model.conv1(x))))
        return model.layer3(model.layer2(model.layer1(x)))
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    for blk in model.blocks[:-1]:
        x = blk(x)
    return x


def forward_from_block(
    model: nn.Module, z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) from the immunized block's input ``z`` (see :func:`forward_to_block`).

    Chapter: {ref}`ch-deep-nets`.
    """
    if architecture(model) == "resnet":
        z = model.layer4(z)
    else:
        z = model.norm(model.blocks[-1](z))
    feats = model.forward_head(z, pre_logits=True)
    return feats, model.get_classifier()(feats)


class FeaturesAndLogits(nn.Module):
    """Wraps a timm model so that one forward pass returns (features f_θ(x), logits g_ω(f_θ(x))).

    The features are timm's pre-logits (ResNet: global average pool; ViT: the class token, or the
    token average with ``global_pool="avg"``, after the final norm), computed in float32 under
    :func:`exact_float32` even inside an autocast region. One module with one forward is what
    DistributedDataParallel needs.

    With ``from_block=True`` the input is the immunized block's input (:func:`block_inputs`), not
    images: every immunized copy of θ0 has the same frozen part, so it can be run once.

    Chapter: {ref}`ch-deep-nets`.
    """

    def __init__(self, model: nn.Module, *, from_block: bool = False):
        super().__init__()
        architecture(model)
        self.model, self.from_block = model, bool(from_block)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with exact_float32(x.device):
            z = (
                x.float()
                if self.from_block
                else forward_to_block(self.model, x.float())
            )
            return forward_from_block(self.model, z)


@torch.no_grad()
def block_inputs(
    model: nn.Module, data, *, indices=None, batch_size: int = 256, device="cpu"
) -> torch.Tensor:
    """The activations entering the immunized block, float32, for ``data`` (or ``data[indices]``), on the CPU.

    Every immunized copy of θ0 shares θ0's frozen part, so these are computed once and passed as
    ``block_inputs*=`` to :func:`immulib.deep_train.immunize_model` and the functions of
    :mod:`immulib.deep_eval`, which check them on two samples (:func:`check_block_inputs`).

    Chapter: {ref}`ch-deep-nets`.
    """
    from torch.utils.data import DataLoader, Subset

    from ._validate import device as check_device

    architecture(model)
    dev = check_device(device)
    if indices is not None:
        data = Subset(data, [int(i) for i in indices])
    model.to(dev).eval()
    out = []
    with exact_float32(dev):
        for x, _ in DataLoader(data, batch_size=integer(batch_size, "batch_size", 1)):
            out.append(forward_to_block(model, x.to(dev).float()).cpu())
    return torch.cat(out)


def check_block_inputs(
    model: nn.Module, data, z, name: str, *, device="cpu"
) -> torch.Tensor:
    """``z`` if it holds one block input per sample of ``data`` from ``model``'s frozen part (two checked).

    Chapter: {ref}`ch-deep-nets`.
    """
    if not isinstance(z, torch.Tensor):
        raise TypeError(
            f"{name} must be a tensor from networks.block_inputs(), got {type(z).__name__}"
        )
    expect = block_inputs(model, data, indices=range(min(2, len(data))), device=device)
    if (
        z.shape[0] != len(data)
        or z.shape[1:] != expect.shape[1:]
        or not torch.allclose(z[: len(expect)], expect, rtol=1e-4, atol=1e-5)
    ):
        raise ValueError(
            f"{name} were not computed from this model's frozen layers on these samples "
            f"(use networks.block_inputs(theta0, data))"
        )
    return z
