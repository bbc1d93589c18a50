"""immulib.deep_eval: RIR_θ0 (the RIR dataclass), accuracy, the four attackers, epochs to target."""

import copy
import math

import numpy as np
import pytest
import torch
from deep_helpers import TINY, fake_image_folder, separable_data, tiny, tiny_data

from immulib import deep_eval, deep_objective, deep_train, image_data, linalg, networks
from immulib.metrics import RIR

pytestmark = pytest.mark.filterwarnings(
    "ignore::immulib.regularizers.NonUniqueSingularValueWarning"
)


@pytest.fixture(scope="module", params=list(TINY))
def model(request):
    return tiny(request.param).eval()


@pytest.fixture(scope="module")
def immunized():
    m = tiny("resnet18").eval()
    res = deep_train.immunize_model(
        m,
        tiny_data(),
        tiny_data(seed=1),
        lam_P=1e-3,
        lam_H=1e-3,
        steps=2,
        batch_size=8,
        progress=False,
    )
    return m, res.model


def test_rir_theta0_refuses_the_same_model_twice_or_shared_parameters(model):
    with pytest.raises(ValueError, match="same model"):
        deep_eval.rir_theta0(
            model, model, tiny_data(), tiny_data(seed=1), n_groups=2, group_size=8
        )
    shared = copy.deepcopy(model)
    if hasattr(shared, "layer4"):
        shared.layer4 = model.layer4
    else:
        shared.blocks = model.blocks
    with pytest.raises(ValueError, match="share parameters"):
        deep_eval.rir_theta0(
            model, shared, tiny_data(), tiny_data(seed=1), n_groups=2, group_size=8
        )


def test_rir_theta0_of_a_deep_copy_is_exactly_one(model):
    r = deep_eval.rir_theta0(
        model,
        copy.deepcopy(model),
        tiny_data(),
        tiny_data(seed=1),
        n_groups=4,
        group_size=10,
    )
    assert isinstance(r, RIR) and (r.i, r.ii, r.rir) == (1.0, 1.0, 1.0)
    groups = deep_eval.rir_theta0_groups(
        model,
        copy.deepcopy(model),
        tiny_data(),
        tiny_data(seed=1),
        n_groups=4,
        group_size=10,
    )
    assert len(groups) == 4 and all(g.rir == 1.0 for g in groups)


def test_rir_theta0_matches_a_direct_computation(immunized):
    m, im = immunized
    dp, dh = tiny_data(), tiny_data(seed=1)
    groups = deep_eval.rir_theta0_groups(
        m, im, dp, dh, n_groups=2, group_size=10, seed=3
    )
    rng = np.random.default_rng(3)
    ip, ih = (
        rng.choice(len(dp), 10, replace=False),
        rng.choice(len(dh), 10, replace=False),
    )
    kappa = lambda model, ds, idx: linalg.condition_number(
        deep_objective.feature_gram(
            deep_eval.extract_features(model, ds, indices=idx)[0]
        )
    )
    expected = (kappa(im, dh, ih) / kappa(m, dh, ih)) / (
        kappa(im, dp, ip) / kappa(m, dp, ip)
    )
    assert groups[0].rir == pytest.approx(expected, rel=1e-9)
    assert groups[0].kappa_H_ref == pytest.approx(kappa(m, dh, ih), rel=1e-9)
    r = deep_eval.rir_theta0(m, im, dp, dh, n_groups=2, group_size=10, seed=3)
    assert r.rir == pytest.approx(np.mean([g.rir for g in groups]))
    # a model whose frozen part differs is run through its own prefix (no shortcut)
    other = tiny("resnet18", seed=5).eval()
    g2 = deep_eval.rir_theta0_groups(
        m, other, dp, dh, n_groups=1, group_size=10, seed=3
    )
    assert g2[0].kappa_H == pytest.approx(kappa(other, dh, ih), rel=1e-9)


def test_attack_curves_every_attacker_learns_a_separable_task():
    m = tiny("resnet18").eval()
    train, test = separable_data(60), separable_data(30, seed=1)
    curves = deep_eval.attack_curves(
        m, train, test, epochs=8, eta=1e-2, batch_size=8, evals_per_epoch=2
    )
    assert list(curves) == list(deep_eval.ATTACKERS)
    y = test.labels
    for name, c in curves.items():
        assert c.shape == (17,), name
        assert c[0] == pytest.approx(float((y == 0).float().mean())), (
            name
        )  # a zero head predicts class 0
        assert c[-1] > c[0] + 0.2, name
    assert deep_eval.epochs_to_target(curves["finetune_all"], 0.0) == 0.0


def test_attack_curves_reuse_block_inputs_and_refuse_foreign_ones(immunized):
    m, im = immunized
    train, test = tiny_data(24, seed=4), tiny_data(12, seed=5)
    zt, ze = networks.block_inputs(m, train), networks.block_inputs(m, test)
    a = deep_eval.attack_curves(
        im, train, test, attackers=["probe", "finetune_block"], epochs=2, batch_size=8
    )
    b = deep_eval.attack_curves(
        im,
        train,
        test,
        attackers=["probe", "finetune_block"],
        epochs=2,
        batch_size=8,
        block_inputs_train=zt,
        block_inputs_test=ze,
    )
    assert all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="block_inputs_train"):
        deep_eval.attack_curves(
            im,
            train,
            test,
            attackers="probe",
            epochs=1,
            batch_size=8,
            block_inputs_train=zt + 1.0,
        )
    with pytest.raises(ValueError, match="attackers"):
        deep_eval.attack_curves(im, train, test, attackers=["sgd"], epochs=1)


def test_epochs_to_target():
    assert deep_eval.epochs_to_target([0.1, 0.5, 0.8, 0.9], 0.8) == 2.0
    assert deep_eval.epochs_to_target([0.1, 0.5], 0.8) == math.inf
    assert (
        deep_eval.epochs_to_target([0.1, 0.5, 0.8, 0.9], 0.8, evals_per_epoch=4) == 0.5
    )
    with pytest.raises(ValueError, match="target"):
        deep_eval.epochs_to_target([0.1], 1.5)


def test_full_scale_path_end_to_end_on_fake_image_folders(tmp_path):
    fake_image_folder(tmp_path / "dp" / "train", per_class=8)
    fake_image_folder(tmp_path / "dp" / "val", per_class=3, seed=1)
    fake_image_folder(tmp_path / "dh", classes=("x", "y", "z"), per_class=6, seed=2)
    dp_train, dp_test = image_data.image_folder_splits(tmp_path / "dp", img_size=32)
    dh_train, dh_test = image_data.image_folder_splits(
        tmp_path / "dh", img_size=32, test_fraction=0.25
    )
    assert (len(dp_train), len(dp_test), len(dh_train), len(dh_test)) == (16, 6, 14, 4)
    x, y = dp_train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y in (0, 1)
    m = tiny(
        "resnet18",
        in_chans=3,
        img_size=32,
        num_classes=image_data.num_classes(dp_train),
    ).eval()
    for method in ("ours", "imma", "constrained"):
        lp, lh = deep_objective.balance_lambdas(
            m, dp_train, dh_train, method=method, batch_size=6
        )
        res = deep_train.immunize_model(
            m,
            dp_train,
            dh_train,
            method=method,
            lam_P=lp,
            lam_H=lh,
            steps=2,
            batch_size=6,
            progress=False,
        )
        r = deep_eval.rir_theta0(
            m, res.model, dp_train, dh_train, n_groups=2, group_size=6
        )
        assert math.isfinite(r.rir) and r.rir > 0
        assert 0 <= deep_eval.accuracy(res.model, dp_test) <= 1
        curves = deep_eval.attack_curves(
            res.model, dh_train, dh_test, epochs=1, batch_size=4
        )
        assert all(c.shape == (2,) for c in curves.values())
