"""immulib.pairs: the digit-pair task runs the engine of immulib.linear, batched over pairs."""

import warnings

import numpy as np
import pytest
import torch

from immulib import data, evaluate, linalg, linear
from immulib import pairs as mp

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_splits_are_the_pair_rows_and_score_reads_them(digits):
    grams = mp.digit_grams(digits, "well_posed")
    test = data.ImageSet(digits.images[::2], digits.labels[::2])
    sp = mp.splits(digits, test, 4, 7, pixels=grams.pixels, seed=2)
    XP, XH = _pair_arrays(digits, grams, 4, 7, seed=2)
    assert np.array_equal(sp["XP"].numpy(), XP) and np.array_equal(sp["XH"].numpy(), XH)
    assert (sp["yP"] == 1).all() and (sp["yH"] == -1).all()
    for task, digit in (("P", 4), ("H", 7)):
        want = mp.digit_features(test.images[test.labels == digit], grams.pixels)
        assert torch.equal(sp[f"X{task}_test"], want)
        assert len(sp[f"y{task}_test"]) == (test.labels == digit).sum()
    row = evaluate.score(torch.eye(36), **sp, max_steps=50)
    assert row["i"] == pytest.approx(1) and row["steps_H_test_exact"] >= 1
    small = mp.splits(digits, test, 4, 7, pixels=grams.pixels, seed=2, compress=True)
    assert small.keys() == sp.keys() and small["XP"].shape == (37, 36)
    theta = torch.from_numpy(np.random.default_rng(3).standard_normal((36, 36)))
    goal = dict(target=0.05, target_P=0.05, max_steps=400)
    full, short = (
        evaluate.score(theta, **sp, **goal),
        evaluate.score(theta, **small, **goal),
    )
    for k, v in full.items():
        assert short[k] == pytest.approx(v, rel=1e-8), k
    with pytest.raises(TypeError, match="compress must be True or False"):
        mp.splits(digits, test, 4, 7, compress="yes")
    with pytest.raises(TypeError, match="test must be an ImageSet"):
        mp.splits(digits, test.images, 4, 7)
    with pytest.raises(ValueError, match="pairs"):
        mp.splits(digits, test, 4, 4)


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
        assert torch.equal(batched[j], alone[0])  # bit for bit (linear._matvec)


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


#: kappa_P then kappa_H of sweep(method, setup, pairs=[(0, 1), (5, 3), (9, 2)], steps=6) on the
#: synthetic digits, computed on main at commit 24767df (before the speed work of issue 11)
FROZEN_SWEEPS = {
    ("ours", "well_posed"): [
        98.63147623487782,
        16.72557934151183,
        24.03744235002155,
        4080.1021770782554,
        352.80634385292007,
        468.0735682993932,
    ],
    ("constrained", "well_posed"): [
        1966.835637243174,
        494.33929437917385,
        548.4524019336961,
        12749.35439221286,
        2453.064773183023,
        5585.995779188805,
    ],
    ("opt_kappa", "well_posed"): [
        831.2035242834551,
        209.78212434298567,
        248.33835505847253,
        3329.225802492149,
        736.6377468163612,
        2029.2001560636775,
    ],
    ("ours", "authors"): [
        102490078.84426275,
        109.38334704547943,
        115961797.88611439,
        15.152797897875365,
        134235251.23233935,
        32.4131506906735,
        884746860.3262695,
        17010.872509380297,
        422253884.5508537,
        665.5924754410885,
        410803120.1305578,
        1458.376738213853,
    ],
}


@pytest.mark.parametrize("method,setup", sorted(FROZEN_SWEEPS))
def test_sweeps_equal_the_frozen_reference_of_main(digits, method, setup):
    df = mp.sweep(method, setup, pairs=[(0, 1), (5, 3), (9, 2)], steps=6, data=digits,
                  progress=False)  # fmt: skip
    got = list(df.kappa_P) + list(df.kappa_H)
    np.testing.assert_allclose(got, FROZEN_SWEEPS[(method, setup)], rtol=1e-9, atol=0)


def test_the_sweep_with_the_extreme_eigensolver_matches_the_eigh_sweep(digits):
    """Opt-in: the warm-started LOBPCG solver gives the eigh sweep's κ to 1e-8 relative on a few
    pairs and steps, and reports no fallback."""
    kw = dict(
        pairs=[(0, 1), (5, 3), (9, 2), (4, 7)], steps=12, data=digits, progress=False
    )
    ref = mp.sweep("ours", "well_posed", **kw)
    solver = linalg.ExtremeEigensolver()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would warn
        got = mp.sweep("ours", "well_posed", solver=solver, **kw)
    for col in ("kappa_P", "kappa_H", "rir"):
        np.testing.assert_allclose(got[col], ref[col], rtol=1e-8)
    assert solver.stats["fallbacks"] == 0 and solver.stats["calls"] >= 2 * 12
