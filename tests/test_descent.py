"""immulib.descent: gradient descent on quadratics and the bound of Eq. (2)."""

import numpy as np
import pytest
import torch

from immulib import descent, linalg


def random_spd(rng, n, kappa):
    lam = np.exp(rng.uniform(0, np.log(kappa), n))
    lam[0], lam[-1] = 1.0, kappa
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (Q * lam) @ Q.T
    return (A + A.T) / 2


def test_eq2_bound_holds_at_every_step_on_many_quadratics():
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(300):
        kappa = float(np.exp(rng.uniform(0, np.log(1e4))))
        n = int(rng.integers(2, 12))
        A = random_spd(rng, n, kappa)
        err = descent.gd_errors(A, rng.standard_normal(n), 200)
        rel = err / err[0]
        bound = descent.rate_bound(linalg.condition_number(A), 200)
        worst = max(worst, float((rel[1:] / bound[1:]).max()))
        # the squared factor is the tight worst case and also holds
        assert torch.all(rel <= bound**2 * (1 + 1e-9) + 1e-300)
    assert worst <= 1 + 1e-9


def test_worst_case_start_attains_the_squared_factor():
    A = np.diag([1.0, 10.0])
    err = descent.gd_errors(A, np.array([1.0, 0.0]), 5)  # eigenvector of λ_min
    np.testing.assert_allclose(
        err.numpy(), (1 - 1 / 10) ** (2 * np.arange(6)), rtol=1e-12
    )


def test_batched_equals_one_by_one():
    rng = np.random.default_rng(1)
    As = np.stack([random_spd(rng, 5, 50.0) for _ in range(4)])
    E0 = rng.standard_normal((4, 5))
    batched = descent.gd_errors(As, E0, 30)
    for i in range(4):
        torch.testing.assert_close(batched[i], descent.gd_errors(As[i], E0[i], 30))
    batched_exact = descent.gd_errors(As, E0, 30, step_size="exact")
    torch.testing.assert_close(
        batched_exact[2], descent.gd_errors(As[2], E0[2], 30, step_size="exact")
    )


def test_exact_line_search_takes_the_best_step():
    rng = np.random.default_rng(2)
    for _ in range(50):
        A = random_spd(rng, 6, 100.0)
        e0 = rng.standard_normal(6)
        one = descent.gd_errors(A, e0, 1, step_size="exact")
        g = A @ e0
        eta = g @ g / (g @ A @ g)
        f = lambda step: 0.5 * (e0 - step * g) @ A @ (e0 - step * g)
        assert all(f(eta) <= f(eta * s) + 1e-12 for s in (0.5, 0.9, 1.1, 2.0))
        np.testing.assert_allclose(
            float(one[1]), np.sum((e0 - eta * g) ** 2), rtol=1e-12
        )


def test_exact_line_search_obeys_kantorovich_rate():
    rng = np.random.default_rng(3)
    for _ in range(100):
        kappa = float(np.exp(rng.uniform(0, np.log(1e3))))
        A = random_spd(rng, 8, kappa)
        e = rng.standard_normal(8)
        rate = ((kappa - 1) / (kappa + 1)) ** 2
        for _ in range(20):  # f(e) = ½ eᵀAe contracts by at least `rate` per step
            e_next = e - (g := A @ e) @ g / (g @ A @ g) * g
            assert (
                0.5 * e_next @ A @ e_next
                <= rate * 0.5 * e @ A @ e * (1 + 1e-9) + 1e-300
            )
            e = e_next


def test_kappa_one_converges_in_one_step():
    err = descent.gd_errors(3.0 * np.eye(4), np.ones(4), 3)
    assert float(err[1]) < 1e-28


def test_bad_arguments():
    with pytest.raises(ValueError, match="steps"):
        descent.gd_errors(np.eye(2), np.ones(2), -1)
    with pytest.raises(ValueError, match="step_size"):
        descent.gd_errors(np.eye(2), np.ones(2), 3, step_size="newton")
    with pytest.raises(ValueError, match="step_size"):
        descent.gd_errors(np.eye(2), np.ones(2), 3, step_size=-0.1)
    with pytest.raises(ValueError, match="e0 must have shape"):
        descent.gd_errors(np.eye(2), np.ones(3), 3)
    with pytest.raises(ValueError, match="symmetric"):
        descent.gd_errors(np.array([[1.0, 1.0], [0.0, 1.0]]), np.ones(2), 3)
    with pytest.raises(ValueError, match="kappa"):
        descent.rate_bound(0.5, 3)
    with pytest.raises(TypeError, match="steps must be an int"):
        descent.rate_bound(2.0, 1.5)
