"""immulib.deep: the immunized block, the RIR_θ0 evaluation, the loop and the full-scale path, on tiny models."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from immulib import deep, linalg
from immulib.regularizers import r_ill, r_well

pytestmark = pytest.mark.filterwarnings("ignore::immulib.regularizers.NonUniqueSingularValueWarning")

TINY = {
    "resnet18": dict(channels=(4, 8, 16, 32), stem_width=8),
    "vit_tiny_patch16_224": dict(patch_size=8, depth=2, embed_dim=32, num_heads=2),
}


def tiny(name="resnet18", *, in_chans=1, img_size=16, num_classes=3, seed=0):
    return deep.create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size, seed=seed, **TINY[name])


def tiny_data(n=48, *, num_classes=3, in_chans=1, img_size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return deep.ArrayDataset(
        torch.randn(n, in_chans, img_size, img_size, generator=g),
        torch.randint(0, num_classes, (n,), generator=g),
        num_classes,
    )


def fake_image_folder(root, classes=("a", "b"), per_class=6, seed=0):
    """Class folders of small RGB PNGs of different sizes, written with PIL."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def param_dict(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module", params=["resnet18", "vit_tiny_patch16_224"])
def model(request):
    return tiny(request.param)


# --------------------------------------------------------------------------------------------
# the immunized block


def test_trainable_set_is_exactly_layer4_for_resnet():
    m = tiny("resnet18")
    block = {f"layer4.{n}" for n, _ in m.layer4.named_parameters()}
    assert set(deep.freeze(m, train_head=False)) == block
    assert {n for n, p in m.named_parameters() if p.requires_grad} == block
    assert set(deep.freeze(m)) == block | {"fc.weight", "fc.bias"}
    assert deep.architecture(m) == "resnet" and deep.immunized_block(m) is m.layer4


def test_trainable_set_is_exactly_the_last_block_for_vit():
    m = tiny("vit_tiny_patch16_224")
    last = len(m.blocks) - 1
    block = {f"blocks.{last}.{n}" for n, _ in m.blocks[last].named_parameters()}
    assert set(deep.freeze(m, train_head=False)) == block
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == block
    assert not any(n.startswith("norm.") or n.startswith("blocks.0.") for n in trainable)
    assert set(deep.freeze(m)) == block | {"head.weight", "head.bias"}


def test_regularizer_gradients_reach_only_the_immunized_block(model):
    m = copy.deepcopy(model).eval()
    block = set(deep.freeze(m))  # block and head may train; the regularizers must not touch the head
    feats, _ = deep.FeaturesAndLogits(m)(tiny_data(16).images)
    (r_ill(deep.feature_gram(feats[:8])) + r_well(deep.feature_gram(feats[8:]))).backward()
    in_block = set(deep.trainable_parameter_names(m, train_head=False))
    for name, p in m.named_parameters():
        if name in in_block:
            assert p.grad is not None
        else:
            assert p.grad is None or not bool(p.grad.any()), name
    assert any(bool(p.grad.abs().sum() > 0) for n, p in m.named_parameters() if n in in_block)
    assert block >= in_block


def test_immunize_changes_only_block_and_head_and_leaves_theta0_alone(model):
    before = param_dict(model)
    lp, lh = deep.balance_lambdas(model, tiny_data(), tiny_data(seed=1), batch_size=8)
    res = deep.immunize(model, tiny_data(), tiny_data(seed=1), lambda_p=lp, lambda_h=lh, steps=3, batch_size=8, progress=False)
    after = param_dict(res.model)
    trainable = set(deep.trainable_parameter_names(model))
    assert all(torch.equal(before[n], p) for n, p in param_dict(model).items())  # θ0 untouched
    for n in before:
        if n not in trainable:
            assert torch.equal(before[n], after[n]), n
    assert any(not torch.equal(before[n], after[n]) for n in deep.trainable_parameter_names(model, train_head=False))
    assert len(res.history) == 3 and all(math.isfinite(h["loss"]) for h in res.history)
    assert not any(p.requires_grad for p in res.model.parameters())


def test_batchnorm_statistics_stay_frozen():
    m = tiny("resnet18")
    res = deep.immunize(m, tiny_data(), tiny_data(seed=1), lambda_p=1e-6, lambda_h=1e-6, steps=2, batch_size=8, progress=False)
    for (n, a), (_, b) in zip(m.named_buffers(), res.model.named_buffers()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("method", deep.METHODS)
def test_every_method_takes_finite_steps_and_reruns_identically(method):
    m = tiny("resnet18")
    lp, lh = deep.balance_lambdas(m, tiny_data(), tiny_data(seed=1), method=method, batch_size=8)
    assert lp >= 0 and lh > 0 and (lp == 0) == (method in ("r_ill_only", "imma"))
    run = lambda seed: deep.immunize(  # noqa: E731
        m, tiny_data(), tiny_data(seed=1), method=method, lambda_p=lp, lambda_h=lh, steps=2, batch_size=8, seed=seed, progress=False
    ).model
    a, b, c = param_dict(run(0)), param_dict(run(0)), param_dict(run(1))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_immunization_loss_matches_its_formula():
    g = torch.Generator().manual_seed(0)
    fp, fh = torch.randn(10, 6, generator=g, dtype=torch.float64), torch.randn(10, 6, generator=g, dtype=torch.float64)
    logits, y = torch.randn(10, 3, generator=g), torch.randint(0, 3, (10,), generator=g)
    task = torch.nn.functional.cross_entropy(logits, y)
    Hp, Hh = fp.T @ fp, fh.T @ fh
    ours, _ = deep.immunization_loss(fp, logits, y, fh, method="ours", lambda_p=0.5, lambda_h=2.0)
    assert float(ours) == pytest.approx(float(task + 0.5 * r_well(Hp) + 2.0 * r_ill(Hh)), rel=1e-12)
    only, _ = deep.immunization_loss(fp, logits, y, fh, method="r_ill_only", lambda_p=0.5, lambda_h=2.0)
    assert float(only) == pytest.approx(float(task + 2.0 * r_ill(Hh)), rel=1e-12)
    kappa, parts = deep.immunization_loss(fp, logits, y, fh, method="opt_kappa", lambda_p=0.5, lambda_h=2.0)
    assert parts["log_kappa_h"] == pytest.approx(math.log(linalg.condition_number(Hh)), rel=1e-10)
    assert float(kappa) == pytest.approx(float(task) + 2.0 / parts["log_kappa_h"] + 0.5 * parts["log_kappa_p"], rel=1e-10)


# --------------------------------------------------------------------------------------------
# RIR_θ0 and the evaluation bug


def test_rir_theta0_refuses_the_same_model_twice(model):
    with pytest.raises(ValueError, match="same model"):
        deep.rir_theta0(model, model, tiny_data(), tiny_data(seed=1), n_groups=2, group_size=8)


def test_rir_theta0_refuses_a_model_that_shares_parameters():
    m = tiny("resnet18")
    shared = copy.deepcopy(m)
    shared.layer4 = m.layer4  # the "copy" still points at θ0's last block
    with pytest.raises(ValueError, match="share parameters"):
        deep.rir_theta0(m, shared, tiny_data(), tiny_data(seed=1), n_groups=2, group_size=8)


def test_rir_theta0_of_a_deep_copy_is_exactly_one(model):
    r = deep.rir_theta0(model, copy.deepcopy(model), tiny_data(), tiny_data(seed=1), n_groups=4, group_size=10)
    for key in ("i", "ii", "rir"):
        assert np.all(r[key] == 1.0) and r[f"{key}_mean"] == 1.0 and r[f"{key}_std"] == 0.0


def test_rir_theta0_matches_a_direct_computation():
    m = tiny("resnet18")
    res = deep.immunize(m, tiny_data(), tiny_data(seed=1), lambda_p=1e-3, lambda_h=1e-3, steps=2, batch_size=8, progress=False)
    dp, dh = tiny_data(), tiny_data(seed=1)
    r = deep.rir_theta0(m, res.model, dp, dh, n_groups=2, group_size=10, seed=3)
    rng = np.random.default_rng(3)
    ip, ih = rng.choice(len(dp), 10, replace=False), rng.choice(len(dh), 10, replace=False)
    kappa = lambda model, ds, idx: linalg.condition_number(deep.feature_gram(deep.extract_features(model, ds, indices=idx)[0]))  # noqa: E731
    expected = (kappa(res.model, dh, ih) / kappa(m, dh, ih)) / (kappa(res.model, dp, ip) / kappa(m, dp, ip))
    assert r["rir"][0] == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------------------------------------
# the attacker's probe, accuracy


def test_probe_curve_starts_at_the_zero_head_and_learns_a_separable_task():
    m = tiny("resnet18")
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.randn(60, 1, 16, 16, generator=g) * 0.1 + y[:, None, None, None].float()  # classes by brightness
    train, test = deep.ArrayDataset(x[:40], y[:40], 3), deep.ArrayDataset(x[40:], y[40:], 3)
    curve = deep.probe_curve(m, train, test, epochs=30, batch_size=8)
    assert curve.shape == (31,)
    assert curve[0] == pytest.approx(float((y[40:] == 0).float().mean()))  # argmax of a zero head is class 0
    assert curve[-1] > curve[0]
    assert 0 <= deep.accuracy(m, test) <= 1


# --------------------------------------------------------------------------------------------
# the full-scale path on fake image folders


def test_full_scale_path_end_to_end_on_fake_image_folders(tmp_path):
    fake_image_folder(tmp_path / "dp" / "train", per_class=8)
    fake_image_folder(tmp_path / "dp" / "val", per_class=3, seed=1)
    fake_image_folder(tmp_path / "dh", classes=("x", "y", "z"), per_class=6, seed=2)
    dp_train, dp_test = deep.image_folder_splits(tmp_path / "dp", img_size=32)
    dh_train, dh_test = deep.image_folder_splits(tmp_path / "dh", img_size=32, test_fraction=0.25)
    assert (len(dp_train), len(dp_test), len(dh_train), len(dh_test)) == (16, 6, 14, 4)
    x, y = dp_train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y in (0, 1)
    m = tiny("resnet18", in_chans=3, img_size=32, num_classes=deep.num_classes(dp_train))
    for method in ("ours", "imma"):
        lp, lh = deep.balance_lambdas(m, dp_train, dh_train, method=method, batch_size=6)
        res = deep.immunize(m, dp_train, dh_train, method=method, lambda_p=lp, lambda_h=lh, steps=2, batch_size=6, progress=False)
        r = deep.rir_theta0(m, res.model, dp_train, dh_train, n_groups=2, group_size=6)
        assert np.all(np.isfinite(r["rir"])) and np.all(r["rir"] > 0)
        assert 0 <= deep.accuracy(res.model, dp_test) <= 1
        assert deep.probe_curve(res.model, dh_train, dh_test, epochs=2, batch_size=4).shape == (3,)


# --------------------------------------------------------------------------------------------
# bad arguments


def test_bad_arguments_raise_clear_errors(tmp_path):
    m, d = tiny("resnet18"), tiny_data()
    ok = dict(lambda_p=1.0, lambda_h=1.0, steps=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="method"):
        deep.immunize(m, d, d, **{**ok, "method": "bogus"})
    with pytest.raises(ValueError, match="lambda_p"):
        deep.immunize(m, d, d, **{**ok, "lambda_p": -1.0})
    with pytest.raises(TypeError, match="lambda_h"):
        deep.immunize(m, d, d, **{**ok, "lambda_h": "big"})
    with pytest.raises(ValueError, match="steps"):
        deep.immunize(m, d, d, **{**ok, "steps": 0})
    with pytest.raises(TypeError, match="steps"):
        deep.immunize(m, d, d, **{**ok, "steps": 1.5})
    with pytest.raises(ValueError, match="batch_size"):
        deep.immunize(m, d, d, **{**ok, "batch_size": 1000})
    with pytest.raises(TypeError, match="theta0"):
        deep.immunize("resnet18", d, d, **ok)
    with pytest.raises(TypeError, match="data_h"):
        deep.immunize(m, d, [1, 2, 3], **ok)
    with pytest.raises(ValueError, match="device"):
        deep.immunize(m, d, d, **{**ok, "device": "toaster"})
    with pytest.raises(ValueError, match="group_size"):
        deep.rir_theta0(m, copy.deepcopy(m), d, d, group_size=1000)
    with pytest.raises(TypeError, match="immunized"):
        deep.rir_theta0(m, None, d, d)
    with pytest.raises(ValueError, match="model_name"):
        deep.create_model("no_such_model", num_classes=3)
    with pytest.raises(TypeError, match="ResNet"):
        deep.architecture(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="root"):
        deep.ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no image files"):
        deep.ImageFolderDataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="imma"):
        deep.immunization_loss(torch.randn(4, 3), torch.randn(4, 2), torch.zeros(4, dtype=torch.long), torch.randn(4, 3), method="imma")
