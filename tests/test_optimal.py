"""immulib.optimal: the generalized-eigenvalue bound on κ(H_H)/κ(H_P), its closed-form optimum and the RIR ceiling."""

import math

import numpy as np
import pytest
import torch

from immulib import data, linalg, metrics, optimal


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
    assert (
        worst > 0.2
    )  # random θ get within a factor of the bound, so the check is not vacuous


def test_equality_at_theta_star_for_any_orthogonal_q():
    rng = np.random.default_rng(1)
    XP, XH = _problem(rng, 6)
    KP, KH = linalg.gram(XP), linalg.gram(XH)
    spread = optimal.generalized_spread(KP, KH)
    for seed in range(5):
        Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((6, 6)))
        theta = optimal.optimal_theta(KP, Q)
        assert torch.allclose(
            linalg.probe_hessian(theta, KP),
            torch.eye(6, dtype=torch.float64),
            atol=1e-10,
        )
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
    assert metrics.rir(XP, XH, optimal.optimal_theta(KP)).rir == pytest.approx(
        ceiling, rel=1e-8
    )
    for _ in range(50):
        assert metrics.rir(XP, XH, rng.standard_normal((5, 5))).rir <= ceiling * (
            1 + 1e-9
        )


def test_singular_kp_ceiling_is_unbounded_when_null_spaces_differ():
    rng = np.random.default_rng(4)
    XP, XH = _problem(rng, 5)
    XP[:, 0] = 0.0  # e_0 is invisible to D_P but seen by D_H
    KP, KH = linalg.gram(XP), linalg.gram(XH)
    assert not optimal.nested_null_spaces(KP, KH)
    assert math.isinf(optimal.generalized_spread(KP, KH)) and math.isinf(
        optimal.rir_ceiling(KP, KH)
    )
    # and indeed: shrinking the e_0 column of θ blows up κ(H_H) while κ(H_P) stays put
    ratios = [
        optimal.kappa_ratio(np.diag([eps, 1, 1, 1, 1]), KP, KH)
        for eps in (1e-1, 1e-3, 1e-5)
    ]
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
        assert metrics.rir(XP, XH, rng.standard_normal((5, 5))).rir <= ceiling * (
            1 + 1e-8
        )


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


# --- the frontier (i) ≤ C·(ii) and the family θ_c --------------------------------------------


def _i_ii(XP, XH, theta):
    r = metrics.rir(XP, XH, theta)
    return r.i, r.ii


def test_i_is_at_most_ceiling_times_ii_for_every_extractor():
    """Square, tall (D_hid < D_in) and rank-deficient θ: (i) ≤ C·(ii) on positive definite pairs."""
    rng = np.random.default_rng(10)
    worst = 0.0
    for _ in range(200):
        n = int(rng.integers(2, 8))
        XP, XH = _problem(rng, n)
        C = optimal.rir_ceiling(linalg.gram(XP), linalg.gram(XH))
        k = int(rng.integers(1, n + 1))
        thetas = [
            rng.standard_normal((n, n)) @ np.diag(np.exp(rng.uniform(-2, 2, n))),
            rng.standard_normal((n, k)),
            rng.standard_normal((n, k)) @ rng.standard_normal((k, n)),
        ]  # rank k ≤ n
        for theta in thetas:
            i, ii = _i_ii(XP, XH, theta)
            worst = max(worst, i / (C * ii))
    assert worst <= 1 + 1e-8
    assert worst > 0.1  # some random θ come close: the check is not vacuous


def test_frontier_family_reaches_the_ceiling_at_every_c():
    rng = np.random.default_rng(11)
    worst = 0.0
    for _ in range(150):
        n = int(rng.integers(2, 9))
        XP, XH = _problem(rng, n)
        KP, KH = linalg.gram(XP), linalg.gram(XH)
        C, kP = optimal.rir_ceiling(KP, KH), linalg.condition_number(KP)
        mu, W = optimal.generalized_eigh(KP, KH)
        assert torch.allclose(
            W.T @ KP @ W, torch.eye(n, dtype=torch.float64), atol=1e-8
        )
        assert torch.allclose(
            W.T @ KH @ W, torch.diag(mu), rtol=1e-8, atol=1e-8 * float(mu.max())
        )
        for c in (1.0, float(rng.uniform(1, kP)), kP, 10 * kP):
            r = metrics.rir(XP, XH, optimal.frontier_theta(KP, KH, c))
            for got, want in (
                (r.ii, c / kP),
                (r.i, C * c / kP),
                (r.rir, C),
                (r.kappa_P, c),
            ):
                worst = max(worst, abs(got / want - 1))
    assert worst < 1e-8


def test_c_equal_one_is_a_whitening_and_the_ascending_order_maximises_i():
    rng = np.random.default_rng(12)
    for _ in range(30):
        n = int(rng.integers(3, 8))
        XP, XH = _problem(rng, n)
        KP, KH = linalg.gram(XP), linalg.gram(XH)
        th1 = optimal.frontier_theta(KP, KH, 1.0)
        assert torch.allclose(
            linalg.probe_hessian(th1, KP), torch.eye(n, dtype=torch.float64), atol=1e-8
        )
        c = linalg.condition_number(KP)
        best = _i_ii(XP, XH, optimal.frontier_theta(KP, KH, c))[0]
        _, W = optimal.generalized_eigh(KP, KH)
        s = optimal.frontier_theta(KP, KH, c).norm(dim=0) / W.norm(
            dim=0
        )  # the column scales s_c
        for _ in range(
            10
        ):  # the same scales in another order: (ii) = 1 still, (i) no larger
            i, ii = _i_ii(XP, XH, W * s[torch.from_numpy(rng.permutation(n))])
            assert ii == pytest.approx(1, rel=1e-8) and i <= best * (1 + 1e-8)
        i_rev, _ = _i_ii(XP, XH, W * s.flip(0))
        assert i_rev < best


def test_frontier_member_with_ii_one_reaches_the_ceiling_on_house_prices(project_data):
    wp = data.load_house_prices(setup="well_posed")
    KP, KH = linalg.gram(wp.XP), linalg.gram(wp.XH)
    C, kP = optimal.rir_ceiling(KP, KH), linalg.condition_number(KP)
    r = metrics.rir(wp.XP, wp.XH, optimal.frontier_theta(KP, KH, kP))
    assert r.i == pytest.approx(C, rel=1e-6) and r.ii == pytest.approx(1, rel=1e-6)
    w = metrics.rir(wp.XP, wp.XH, optimal.whitening_theta(KP))
    assert w.rir == pytest.approx(C, rel=1e-6) and w.i == pytest.approx(
        C / kP, rel=1e-6
    )


def test_frontier_bad_input_errors():
    rng = np.random.default_rng(13)
    XP, XH = _problem(rng, 4)
    KP, KH = linalg.gram(XP), linalg.gram(XH)
    with pytest.raises(ValueError, match="c must be >= 1"):
        optimal.frontier_theta(KP, KH, 0.5)
    with pytest.raises(TypeError, match="c must be a number"):
        optimal.frontier_theta(KP, KH, "big")
    singular = KP.clone()
    singular[0, :] = singular[:, 0] = 0.0
    with pytest.raises(ValueError, match="KP must be positive definite"):
        optimal.frontier_theta(singular, KH, 2.0)
    with pytest.raises(ValueError, match="KH must be positive definite"):
        optimal.generalized_eigh(KP, singular)
    with pytest.raises(ValueError, match="same shape"):
        optimal.frontier_theta(KP, KH[:3, :3], 2.0)
