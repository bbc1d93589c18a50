"""immulib.pairs: the digit-pair task runs the engine of immulib.linear, batched over pairs."""

import warnings

import numpy as np
import pytest
import torch

from immulib import data, linalg, linear
from immulib import pairs as mp


@pytest.fixture(autouse=True)
def one_thread():
    """Batched LAPACK calls with several threads stall on a loaded machine (see immulib.pairs.sweep)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def digits():
    """A small synthetic digit set: 10 classes of 28×28 images with a class-specific blob pattern."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for c in range(10):
        n = 60 + 5 * c  # unequal counts, so balancing subsamples
        img = np.zeros((n, 28, 28))
        img[:, 11:17, 11:17] = rng.uniform(0, 255, (n, 6, 6))
        img[:, 11 + c % 3, 11:17] *= 0.3 + 0.1 * c
        images.append(img.astype(np.uint8))
        labels.append(np.full(n, c, np.uint8))
    return data.ImageSet(np.concatenate(images), np.concatenate(labels))


def _pair_arrays(digits, grams, a, b, seed=0):
    ia, ib = mp.pair_indices(digits, a, b, seed=seed)
    return (
        mp.digit_features(digits.images[ia], grams.pixels).numpy(),
        mp.digit_features(digits.images[ib], grams.pixels).numpy(),
    )


def test_pair_indices_and_grams_match_digit_pair(digits):
    grams = mp.digit_grams(digits, "well_posed")
    assert len(grams.pixels) == 36
    for a, b in ((0, 9), (9, 0), (4, 5)):
        xa, xb = data.digit_pair(digits, a, b, seed=3)
        ia, ib = mp.pair_indices(digits, a, b, seed=3)
        assert np.array_equal(xa, digits.images[ia]) and np.array_equal(
            xb, digits.images[ib]
        )
        KP, KH, sP, sH, N = grams.pair(a, b, seed=3)
        XP, XH = _pair_arrays(digits, grams, a, b, seed=3)
        assert N == len(XP) == len(XH)
        assert torch.allclose(KP, linalg.gram(XP), rtol=1e-12, atol=1e-9)
        assert torch.allclose(KH, linalg.gram(XH), rtol=1e-12, atol=1e-9)
        assert torch.allclose(sP, torch.tensor(XP.sum(0)), atol=1e-9)


@pytest.mark.parametrize("method", linear.METHODS)
def test_pairs_run_the_engine_of_immunize(digits, method):
    grams = mp.digit_grams(digits, "well_posed")
    a, b = 2, 7
    XP, XH = _pair_arrays(
        digits, grams, a, b, seed=1
    )  # run_batch's seed draws the subsample and ω_0
    steps = 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = linear.immunize(
            XP,
            np.ones(len(XP)),
            XH,
            yH=-np.ones(len(XH)),
            method=method,
            steps=steps,
            seed=1,
            progress=False,
            record_every=steps,
        )
    theta, omega, _, _ = mp.run_batch(
        grams, [(a, b)], method, steps=steps, seed=1, sup="P"
    )
    scale = float(ref.theta.abs().max())
    assert float((theta[0] - ref.theta).abs().max()) <= 1e-8 * scale
    assert torch.allclose(omega[0], ref.omega, rtol=1e-7, atol=1e-10)
    assert float((ref.theta - torch.eye(len(ref.theta))).abs().max()) > 1e-6  # it moved


def test_batched_equals_one_by_one(digits):
    grams = mp.digit_grams(digits, "well_posed")
    chosen = [(0, 1), (5, 3), (9, 2)]
    batched, *_ = mp.run_batch(grams, chosen, "ours", steps=15)
    for j, p in enumerate(chosen):
        alone, *_ = mp.run_batch(grams, [p], "ours", steps=15)
        assert float((batched[j] - alone[0]).abs().max()) <= 1e-8 * float(
            alone.abs().max()
        )


def test_seeded_sweeps_are_identical_and_tidy(digits):
    kw = dict(pairs=[(0, 1), (1, 0)], steps=8, data=digits, progress=False)
    a = mp.sweep("ours", "well_posed", seed=2, **kw).drop(columns="seconds")
    b = mp.sweep("ours", "well_posed", seed=2, **kw).drop(columns="seconds")
    pd_equal = a.equals(b)
    assert pd_equal
    for col in (
        "setup",
        "method",
        "a",
        "b",
        "seed",
        "kappa_P0",
        "kappa_H0",
        "kappa_P",
        "kappa_H",
        "i",
        "ii",
        "rir",
        "success",
    ):
        assert col in a.columns
    np.testing.assert_allclose(a.rir, a.i / a.ii)
    assert (a.success == ((a.rir > 1) & (a.ii <= 1))).all()
    c = mp.sweep(
        "ours", "authors", seed=2, **{**kw, "steps": 2, "pairs": [(0, 1), (1, 0)]}
    )
    assert set(c.convention) == {"shifted", "pinv"} and len(c) == 4


def test_batched_kappas_match_condition_number(digits):
    grams = mp.digit_grams(digits, "authors")
    K = grams.K[:3]
    kap = mp._kappas(K)
    for j in range(3):
        for conv in ("pinv", "shifted"):
            assert np.isclose(
                float(kap[conv][j]),
                linalg.condition_number(K[j], convention=conv),
                rtol=1e-6,
            )


def test_bad_arguments_raise_naming_them(digits):
    with pytest.raises(ValueError, match="method"):
        mp.sweep("nope", "well_posed", data=digits)
    with pytest.raises(ValueError, match="setup"):
        mp.sweep("ours", "nope", data=digits)
    with pytest.raises(ValueError, match="pairs"):
        mp.sweep("ours", "well_posed", pairs=[(3, 3)], data=digits)
    with pytest.raises(TypeError, match="pairs"):
        mp.sweep("ours", "well_posed", pairs="some", data=digits)
    with pytest.raises(ValueError, match="steps"):
        mp.sweep("ours", "well_posed", steps=0, data=digits)
    with pytest.raises(TypeError, match="data"):
        mp.pixel_support(np.zeros((3, 28, 28)))
    with pytest.raises(ValueError, match="min_frac"):
        mp.pixel_support(digits, min_frac=2.0)
    with pytest.raises(ValueError, match="grams"):
        mp.sweep("ours", "authors", grams=mp.digit_grams(digits, "well_posed"))
    with pytest.raises(ValueError, match="sup"):
        mp.run_batch(mp.digit_grams(digits, "well_posed"), [(0, 1)], sup="x")
    with pytest.raises(ValueError, match="images"):
        mp.digit_features(np.zeros((3, 8, 8)))
