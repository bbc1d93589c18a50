"""immulib.optimal: the generalized-eigenvalue bound on κ(H_H)/κ(H_P), its closed-form optimum and the RIR ceiling."""

import math

import numpy as np
import pytest
import torch

from immulib import linalg, metrics, optimal


def _problem(rng, n, rows=None):
    """Two random data matrices with very different spectra (full column rank)."""
    rows = rows or 3 * n
    XP = rng.standard_normal((rows, n)) @ np.diag(np.exp(rng.uniform(-2, 2, n)))
    XH = rng.standard_normal((rows, n)) @ np.diag(np.exp(rng.uniform(-3, 3, n)))
    return XP, XH


def test_inequality_holds_on_many_random_problems_and_thetas():
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(300):
        n = int(rng.integers(2, 7))
        XP, XH = _problem(rng, n)
        KP, KH = linalg.gram(XP), linalg.gram(XH)
        spread = optimal.generalized_spread(KP, KH)
        for _ in range(10):
            theta = rng.standard_normal((n, n)) @ np.diag(np.exp(rng.uniform(-2, 2, n)))
            worst = max(worst, optimal.kappa_ratio(theta, KP, KH) / spread)
    assert worst <= 1 + 1e-9
    assert worst > 0.2  # random θ get within a factor of the bound, so the check is not vacuous


def test_equality_at_theta_star_for_any_orthogonal_q():
    rng = np.random.default_rng(1)
    XP, XH = _problem(rng, 6)
    KP, KH = linalg.gram(XP), linalg.gram(XH)
    spread = optimal.generalized_spread(KP, KH)
    for seed in range(5):
        Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((6, 6)))
        theta = optimal.optimal_theta(KP, Q)
        assert torch.allclose(linalg.probe_hessian(theta, KP), torch.eye(6, dtype=torch.float64), atol=1e-10)
        assert optimal.kappa_ratio(theta, KP, KH) == pytest.approx(spread, rel=1e-8)


def test_spread_is_kappa_of_kp_inverse_kh():
    rng = np.random.default_rng(2)
    XP, XH = _problem(rng, 5)
    KP, KH = linalg.gram(XP).numpy(), linalg.gram(XH).numpy()
    ev = np.sort(np.linalg.eigvals(np.linalg.solve(KP, KH)).real)
    assert optimal.generalized_spread(KP, KH) == pytest.approx(ev[-1] / ev[0], rel=1e-8)
    assert np.allclose(optimal.generalized_eigenvalues(KP, KH).numpy(), ev, rtol=1e-8)


def test_rir_of_theta_star_is_the_ceiling_and_no_theta_beats_it():
    rng = np.random.default_rng(3)
    XP, XH = _problem(rng, 5)
    KP, KH = linalg.gram(XP), linalg.gram(XH)
    ceiling = optimal.rir_ceiling(KP, KH)
    assert metrics.rir(XP, XH, optimal.optimal_theta(KP)).rir == pytest.approx(ceiling, rel=1e-8)
    for _ in range(50):
        assert metrics.rir(XP, XH, rng.standard_normal((5, 5))).rir <= ceiling * (1 + 1e-9)


def test_singular_kp_ceiling_is_unbounded_when_null_spaces_differ():
    rng = np.random.default_rng(4)
    XP, XH = _problem(rng, 5)
    XP[:, 0] = 0.0  # e_0 is invisible to D_P but seen by D_H
    KP, KH = linalg.gram(XP), linalg.gram(XH)
    assert not optimal.nested_null_spaces(KP, KH)
    assert math.isinf(optimal.generalized_spread(KP, KH)) and math.isinf(optimal.rir_ceiling(KP, KH))
    # and indeed: shrinking the e_0 column of θ blows up κ(H_H) while κ(H_P) stays put
    ratios = [optimal.kappa_ratio(np.diag([eps, 1, 1, 1, 1]), KP, KH) for eps in (1e-1, 1e-3, 1e-5)]
    assert ratios[0] < ratios[1] < ratios[2] and ratios[2] > 1e4 * ratios[0]
    assert math.isfinite(optimal.rir_ceiling(KP, KH, convention="shifted"))


def test_nested_null_spaces_give_a_finite_attained_ceiling():
    rng = np.random.default_rng(5)
    XP, XH = _problem(rng, 5)
    XP[:, 0] = 0.0
    XH[:, 0] = 0.0  # same null direction for both tasks
    KP, KH = linalg.gram(XP), linalg.gram(XH)
    assert optimal.nested_null_spaces(KP, KH)
    theta = optimal.optimal_theta(KP)
    assert abs(np.linalg.det(theta.numpy())) > 0
    ceiling = optimal.rir_ceiling(KP, KH)
    assert metrics.rir(XP, XH, theta).rir == pytest.approx(ceiling, rel=1e-8)
    for _ in range(30):
        assert metrics.rir(XP, XH, rng.standard_normal((5, 5))).rir <= ceiling * (1 + 1e-8)


def test_bad_input_errors():
    K = linalg.gram(np.random.default_rng(6).standard_normal((10, 3)))
    with pytest.raises(ValueError, match="KP"):
        optimal.optimal_theta(np.ones((3, 2)))
    with pytest.raises(ValueError, match="KP"):
        optimal.optimal_theta(-K)
    with pytest.raises(ValueError, match="KH"):
        optimal.rir_ceiling(K, np.array([[1.0, 2.0, 0], [0, 1.0, 0], [0, 0, 1.0]]))
    with pytest.raises(ValueError, match="same shape"):
        optimal.rir_ceiling(K, np.eye(2))
    with pytest.raises(ValueError, match="Q must be orthogonal"):
        optimal.optimal_theta(K, 2 * np.eye(3))
    with pytest.raises(ValueError, match="Q must be 3"):
        optimal.optimal_theta(K, np.eye(2))
    with pytest.raises(ValueError, match="convention"):
        optimal.rir_ceiling(K, K, convention="ridge")
    with pytest.raises(ValueError, match="rank_tol"):
        optimal.rir_ceiling(K, K, convention="shifted", rank_tol=1e-3)
    with pytest.raises(TypeError, match="KP"):
        optimal.generalized_spread("K", K)
