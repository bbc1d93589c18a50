"""immulib.metrics: RIR (Eq. (15), (17)) and the norm ratio (Eq. (16)) against hand computations."""

import numpy as np
import pytest
import torch

from immulib import metrics


def _data(seed=0, n=40, d=6):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.standard_normal((n, d)) @ np.diag(
        [1, 2, 3, 4, 5, 30.0]
    )


def _kappa(S):
    s = np.linalg.svd(S, compute_uv=False)
    return s.max() / s.min()


def test_rir_equals_the_hand_computation():
    XP, XH = _data()
    theta = np.random.default_rng(1).standard_normal((6, 6))
    got = metrics.rir(XP, XH, theta)
    KP, KH = XP.T @ XP, XH.T @ XH
    i = _kappa(theta.T @ KH @ theta) / _kappa(KH)
    ii = _kappa(theta.T @ KP @ theta) / _kappa(KP)
    assert got.i == pytest.approx(i, rel=1e-9) and got.ii == pytest.approx(ii, rel=1e-9)
    assert got.rir == pytest.approx(i / ii, rel=1e-9)


def test_rir_theta0_uses_the_features_of_theta0():
    XP, XH = _data()
    rng = np.random.default_rng(2)
    theta0, theta = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    got = metrics.rir(XP, XH, theta, theta0=theta0)
    i = _kappa((XH @ theta).T @ (XH @ theta)) / _kappa((XH @ theta0).T @ (XH @ theta0))
    ii = _kappa((XP @ theta).T @ (XP @ theta)) / _kappa((XP @ theta0).T @ (XP @ theta0))
    assert got.rir == pytest.approx(i / ii, rel=1e-9)


def test_passing_theta_as_theta0_hides_immunization():
    """The released code's bug (issue #1): θ0 = θ gives exactly 1, an immunized θ does not."""
    XP, XH = _data()
    KP = XP.T @ XP
    lam, Q = np.linalg.eigh(KP)
    whiten = Q @ np.diag(lam**-0.5) @ Q.T  # makes H_P = I: an immunizing θ
    assert metrics.rir(XP, XH, whiten, theta0=whiten).rir == 1.0
    honest = metrics.rir(XP, XH, whiten, theta0=np.eye(6))
    assert honest.rir > 2 and honest.rir == pytest.approx(
        metrics.rir(XP, XH, whiten).rir, rel=1e-9
    )


def test_norm_ratio_matches_exact_line_search_by_hand():
    X, _ = _data()
    y = np.random.default_rng(3).standard_normal(len(X))
    theta = np.diag([1.0, 2, 3, 1, 1, 0.5])
    F = X @ theta
    A, w_star = F.T @ F, np.linalg.lstsq(F, y, rcond=None)[0]
    w, out = np.zeros(6), []
    for _ in range(6):
        out.append(np.sum((w - w_star) ** 2))
        g = A @ (w - w_star)
        w = w - (g @ g) / (g @ A @ g) * g
    got = metrics.norm_ratio(X, y, theta, steps=5).numpy()
    assert np.allclose(got, np.array(out) / out[0], rtol=1e-7, atol=1e-14)
    assert got[0] == 1.0 and np.all(np.diff(got) <= 1e-15)


def test_bad_arguments():
    XP, XH = _data()
    with pytest.raises(ValueError, match="convention"):
        metrics.rir(XP, XH, np.eye(6), convention="nope")
    with pytest.raises(ValueError, match="theta"):
        metrics.rir(XP, XH, np.eye(5))
    with pytest.raises(ValueError, match="columns"):
        metrics.rir(XP, XH[:, :5], np.eye(6))
    with pytest.raises(TypeError, match="theta"):
        metrics.rir(XP, XH, "I")
    with pytest.raises(ValueError, match="y must have"):
        metrics.norm_ratio(XP, np.zeros(3), np.eye(6), steps=2)
    with pytest.raises(ValueError, match="w0"):
        metrics.norm_ratio(XP, np.zeros(len(XP)), np.eye(6), steps=2, w0=torch.zeros(2))
