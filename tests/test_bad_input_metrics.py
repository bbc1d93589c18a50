"""immulib.metrics: a defined norm ratio when the attacker starts at the optimum."""

import pytest
import torch

from immulib import metrics


def _task(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(12, 4, dtype=torch.float64, generator=g)
    y = torch.randn(12, dtype=torch.float64, generator=g)
    return X, y, torch.randn(4, 3, dtype=torch.float64, generator=g)


def test_norm_ratio_at_the_optimum_is_zeros_not_nan():
    X, y, theta = _task()
    w_star = torch.linalg.pinv(X @ theta) @ y
    r = metrics.norm_ratio(X, y, theta, steps=5, w0=w_star)
    assert r.shape == (6,) and torch.equal(r, torch.zeros(6, dtype=torch.float64))
    # y = 0: w* = 0 = w0, the same answer
    r0 = metrics.norm_ratio(X, torch.zeros(12, dtype=torch.float64), theta, steps=3)
    assert torch.equal(r0, torch.zeros(4, dtype=torch.float64))


def test_norm_ratio_near_but_not_at_the_optimum_is_a_real_ratio():
    X, y, theta = _task(1)
    w_star = torch.linalg.pinv(X @ theta) @ y
    r = metrics.norm_ratio(X, y, theta, steps=5, w0=w_star + 1e-3)
    assert r[0] == 1 and torch.isfinite(r).all() and r[-1] < 1


def test_steps_are_checked():
    X, y, theta = _task()
    with pytest.raises(TypeError, match="steps must be an int"):
        metrics.norm_ratio(X, y, theta, steps=2.5)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        metrics.norm_ratio(X, y, theta, steps=-1)


@pytest.mark.parametrize("c", [1e-200, 1e200])
def test_rir_is_scale_free_at_extreme_scales(c):
    g = torch.Generator().manual_seed(3)
    XP = torch.randn(20, 5, dtype=torch.float64, generator=g)
    XH = torch.randn(20, 5, dtype=torch.float64, generator=g)
    theta = torch.randn(5, 4, dtype=torch.float64, generator=g)
    ref = metrics.rir(XP, XH, theta)
    for args in ((XP * c, XH * c, theta), (XP, XH, theta * c)):
        got = metrics.rir(*args)
        assert got.rir == pytest.approx(
            ref.rir, rel=1e-9
        ) and got.kappa_H == pytest.approx(ref.kappa_H, rel=1e-9)
    # the shifted convention is not scale-free: a clear error instead of inf/0 inside
    with pytest.raises(ValueError, match="Gram matrix XᵀX (over|under)flows"):
        metrics.rir(XP * c, XH * c, theta, convention="shifted")


def test_norm_ratio_features_that_overflow_are_a_clear_error():
    X, y, theta = _task()
    with pytest.raises(ValueError, match="the features Xtheta overflows float64"):
        metrics.norm_ratio(X * 1e200, y, theta * 1e200, steps=2)
