"""Tiny timm models and data for the deep-network tests (tests/test_deep_*.py)."""

import numpy as np
import torch

from immulib import image_data, networks

TINY = {
    "resnet18": dict(channels=(4, 8, 16, 32), stem_width=8),
    "vit_tiny_patch16_224": dict(patch_size=8, depth=2, embed_dim=32, num_heads=2),
}


def tiny(name="resnet18", *, in_chans=1, img_size=16, num_classes=3, seed=0):
    return networks.create_model(
        name,
        num_classes=num_classes,
        in_chans=in_chans,
        img_size=img_size,
        seed=seed,
        **TINY[name],
    )


def tiny_data(n=48, *, num_classes=3, in_chans=1, img_size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return image_data.ArrayDataset(
        torch.randn(n, in_chans, img_size, img_size, generator=g),
        torch.randint(0, num_classes, (n,), generator=g),
        num_classes,
    )


def separable_data(n=60, *, img_size=16, seed=0):
    """Three classes told apart by brightness: any network's features can learn them."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = (
        torch.randn(n, 1, img_size, img_size, generator=g) * 0.1
        + y[:, None, None, None].float()
    )
    return image_data.ArrayDataset(x, y, 3)


def fake_image_folder(root, classes=("a", "b"), per_class=6, seed=0):
    """Class folders of small RGB PNGs of different sizes, written with PIL."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png"
            )
    return root


def param_dict(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}
