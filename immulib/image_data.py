"""Image datasets for the deep-network chapter: MNIST-style arrays in memory, and ImageNet-style folders.

Every dataset here yields ``(image, label)`` with a float32 C × H × W image and an int label, and
has an int ``num_classes``; labels are checked against it when the dataset is made. Used by
:mod:`immulib.deep_train`, :mod:`immulib.deep_eval` and the chapter ``book/07_deep_nets.md``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from ._validate import integer, number

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArrayDataset",
    "ImageFolderDataset",
    "batches",
    "check_dataset",
    "fingerprint",
    "from_imageset",
    "image_folder_splits",
    "num_classes",
    "resized",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ArrayDataset(Dataset):
    """Images already in memory: a float tensor N × C × H × W (normalised) and int64 labels in 0 … num_classes−1.

    Chapter: {ref}`ch-deep-nets`.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int):
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(
                f"images must be a 4-d tensor N × C × H × W, got {tuple(getattr(images, 'shape', ()))}"
            )
        if not isinstance(labels, torch.Tensor) or labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be a 1-d tensor of length {images.shape[0]}")
        if labels.is_floating_point() or labels.is_complex():
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
        self.num_classes = integer(num_classes, "num_classes", 1)
        if len(labels) and (
            int(labels.min()) < 0 or int(labels.max()) >= self.num_classes
        ):
            raise ValueError(
                f"labels must be in 0 … {self.num_classes - 1} (num_classes={self.num_classes}), "
                f"got [{int(labels.min())}, {int(labels.max())}]"
            )
        if not bool(torch.isfinite(images).all()):
            raise ValueError("images contain NaN or infinite values")
        self.images, self.labels = images.float(), labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def from_imageset(
    imageset,
    *,
    n: int | None = None,
    seed: int = 0,
    mean: float = MNIST_MEAN,
    std: float = MNIST_STD,
) -> ArrayDataset:
    """An :class:`ArrayDataset` from an :class:`immulib.data.ImageSet` (uint8 N × 28 × 28, labels).

    ``n`` samples are drawn without replacement with ``seed`` (all of them if ``None``); pixels
    are scaled to [0, 1] and normalised with ``mean``/``std`` (MNIST's by default); one channel.

    Chapter: {ref}`ch-deep-nets`.
    """
    from .data import ImageSet

    if not isinstance(imageset, ImageSet):
        raise TypeError(
            f"imageset must be an immulib.data.ImageSet, got {type(imageset).__name__}"
        )
    total = len(imageset.labels)
    idx = np.arange(total)
    if n is not None:
        n = integer(n, "n", 1, total)
        idx = np.sort(np.random.default_rng(seed).choice(total, n, replace=False))
    x = torch.from_numpy(imageset.images[idx].astype(np.float32) / 255.0)[:, None]
    return ArrayDataset(
        (x - mean) / std, torch.from_numpy(imageset.labels[idx].astype(np.int64)), 10
    )


def resized(ds: ArrayDataset, *, img_size: int, channels: int = 3) -> ArrayDataset:
    """``ds`` with its images resized (bilinear) to ``img_size`` and repeated to ``channels`` channels.

    MNIST at 224 pixels and 3 channels is how the GPU benchmark feeds a ViT-B/16 built for ImageNet.

    Chapter: {ref}`ch-deep-nets`.
    """
    if not isinstance(ds, ArrayDataset):
        raise TypeError(f"ds must be an ArrayDataset, got {type(ds).__name__}")
    size, channels = integer(img_size, "img_size", 8), integer(channels, "channels", 1)
    x = torch.nn.functional.interpolate(
        ds.images, size=(size, size), mode="bilinear", align_corners=False
    )
    if x.shape[1] != channels:
        if x.shape[1] != 1:
            raise ValueError(
                f"can only repeat 1-channel images to {channels} channels, got {x.shape[1]}"
            )
        x = x.expand(-1, channels, -1, -1).contiguous()
    return ArrayDataset(x, ds.labels, ds.num_classes)


def _channel_stats(mean, std) -> tuple[np.ndarray, np.ndarray]:
    """``mean`` and ``std`` as float32 arrays of 3 (one per RGB channel), checked."""
    out = []
    for value, name in ((mean, "mean"), (std, "std")):
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            arr = None
        if arr is None or arr.shape != (3,) or not np.isfinite(arr).all():
            raise ValueError(
                f"{name} must be 3 finite numbers (one per RGB channel), got {value!r}"
            )
        out.append(arr.astype(np.float32))
    if not (out[1] > 0).all():
        raise ValueError(f"std must be positive, got {std!r}")
    return out[0], out[1]


class ImageFolderDataset(Dataset):
    """An ImageNet-style folder: one subfolder per class (sorted names = label order) of image files.

    Images are read with PIL, converted to RGB, resized so that the shorter side is
    ``round(img_size / 0.875)`` (bicubic), centre-cropped to ``img_size`` and normalised with
    ``mean`` and ``std`` per channel (ImageNet's by default; a pre-trained model expects the
    statistics its weights declare, :func:`immulib.networks.input_statistics`), timm's
    evaluation transform. There is no augmentation (the authors train with timm's training
    transforms). ``files`` restricts the dataset to some of the files.

    Chapter: {ref}`ch-deep-nets`.
    """

    def __init__(
        self,
        root,
        *,
        img_size: int = 224,
        files: list | None = None,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ):
        self.mean, self.std = _channel_stats(mean, std)
        if not isinstance(root, (str, Path)):
            raise TypeError(f"root must be a path, got {type(root).__name__}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"root {self.root} is not a folder")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not self.classes:
            raise ValueError(f"root {self.root} has no class subfolders")
        self.num_classes = len(self.classes)
        self.img_size = integer(img_size, "img_size", 8)
        if files is None:
            files = [
                (str(p), c)
                for c, name in enumerate(self.classes)
                for p in sorted((self.root / name).iterdir())
                if p.suffix.lower() in IMAGE_SUFFIXES
            ]
        if not files:
            raise ValueError(
                f"root {self.root} has no image files ({', '.join(IMAGE_SUFFIXES)}) in its class folders"
            )
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
            im = im.resize(
                (max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC
            )
            w, h = im.size
            left, top = (w - self.img_size) // 2, (h - self.img_size) // 2
            im = im.crop((left, top, left + self.img_size, top + self.img_size))
            x = np.asarray(im, dtype=np.float32) / 255.0
        x = (x - self.mean) / self.std
        return torch.from_numpy(x.transpose(2, 0, 1).copy()), label


def image_folder_splits(
    root,
    *,
    img_size: int = 224,
    test_fraction: float = 0.2,
    seed: int = 0,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> tuple[ImageFolderDataset, ImageFolderDataset]:
    """(train, test) datasets from an image folder, normalised with ``mean`` and ``std``
    (see :class:`ImageFolderDataset`).

    If ``root`` has a ``train`` subfolder and a ``val`` or ``test`` one (the ImageNet layout),
    those are the splits; otherwise ``root`` itself holds the class folders and a seeded random
    ``test_fraction`` of its files is the test split.

    Chapter: {ref}`ch-deep-nets`.
    """
    root = Path(root) if isinstance(root, (str, Path)) else root
    kw = dict(img_size=img_size, mean=mean, std=std)
    if isinstance(root, Path) and (root / "train").is_dir():
        for name in ("val", "test"):
            if (root / name).is_dir():
                train = ImageFolderDataset(root / "train", **kw)
                test = ImageFolderDataset(root / name, **kw)
                if test.classes != train.classes:
                    raise ValueError(
                        f"{root}/train and {root}/{name} must have the same class folders"
                    )
                return train, test
    full = ImageFolderDataset(root, **kw)
    frac = number(test_fraction, "test_fraction", minimum=0.0, strict=True)
    if frac >= 1:
        raise ValueError(f"test_fraction must be < 1, got {frac}")
    perm = np.random.default_rng(seed).permutation(len(full))
    n_test = max(1, int(round(frac * len(full))))
    if n_test >= len(full):
        raise ValueError(
            f"root {root} has too few images ({len(full)}) for a train/test split"
        )

    def pick(idx):
        return [full.files[i] for i in sorted(idx)]

    return (
        ImageFolderDataset(root, files=pick(perm[n_test:]), **kw),
        ImageFolderDataset(root, files=pick(perm[:n_test]), **kw),
    )


def num_classes(ds: Dataset, name: str = "dataset") -> int:
    """The number of classes of an :class:`ArrayDataset` or :class:`ImageFolderDataset` (or a Subset of one).

    Chapter: {ref}`ch-deep-nets`.
    """
    while isinstance(ds, Subset):
        ds = ds.dataset
    n = getattr(ds, "num_classes", None)
    if not isinstance(n, int):
        raise TypeError(
            f"{name} must have an int attribute num_classes (use ArrayDataset or ImageFolderDataset)"
        )
    return n


def check_dataset(ds, name: str) -> Dataset:
    """``ds`` if it is a non-empty torch Dataset of (image, label) with ``num_classes``; else a clear error.

    Chapter: {ref}`ch-deep-nets`.
    """
    if not isinstance(ds, Dataset):
        raise TypeError(
            f"{name} must be a torch Dataset of (image, label), got {type(ds).__name__}"
        )
    if len(ds) == 0:
        raise ValueError(f"{name} is empty")
    num_classes(ds, name)
    return ds


def fingerprint(ds: Dataset) -> str:
    """A short hash of a dataset's contents (images and labels), for cache keys.

    Chapter: {ref}`ch-deep-nets`.
    """
    h = hashlib.sha256()
    base, idx = ds, None
    if isinstance(ds, Subset) and isinstance(ds.dataset, ArrayDataset):
        base, idx = ds.dataset, torch.as_tensor(ds.indices)
    if isinstance(base, ArrayDataset):
        x, y = (
            (base.images, base.labels)
            if idx is None
            else (base.images[idx], base.labels[idx])
        )
        h.update(str(tuple(x.shape)).encode())
        h.update(x.contiguous().numpy().tobytes())
        h.update(y.numpy().tobytes())
    elif isinstance(base, ImageFolderDataset):
        h.update(f"{base.root}|{base.img_size}|{len(base.files)}".encode())
        h.update(base.mean.tobytes() + base.std.tobytes())  # the normalisation
        for path, label in base.files:
            h.update(f"{path}|{label}|{Path(path).stat().st_size}".encode())
    else:
        raise TypeError(
            f"cannot fingerprint a {type(ds).__name__}; use ArrayDataset or ImageFolderDataset"
        )
    return h.hexdigest()[:16]


def batches(ds: Dataset, batch_size: int, seed: int, num_workers: int = 0) -> Iterator:
    """Endless shuffled mini-batches (a new seeded permutation every pass, incomplete batches dropped).

    Chapter: {ref}`ch-deep-nets`.
    """
    if len(ds) < batch_size:
        raise ValueError(
            f"batch_size {batch_size} is larger than the dataset ({len(ds)} samples)"
        )
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        sampler=RandomSampler(ds, generator=gen),
        drop_last=True,
        num_workers=num_workers,
    )
    while True:
        yield from loader
