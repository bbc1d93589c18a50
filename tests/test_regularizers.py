"""Tests for immulib.regularizers: Theorem 4.1, Appendix B.2, Nenov et al.'s R_well properties,
Theorems 4.2 and 4.3, the closed-form backward, warnings and argument checks.

Theorems are checked as properties over seeded random cases (chapter: book/04_regularizers.md).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from immulib import linalg, reference
from immulib import regularizers as R

N_CASES = 1000


def random_psd(rng, n=None, k=None, decades=3.0):
    """A random symmetric PSD n × n matrix of rank k, eigenvalues log-uniform over `decades`."""
    n = int(rng.integers(2, 9)) if n is None else n
    k = int(rng.integers(2, n + 1)) if k is None else k
    lam = np.zeros(n)
    lam[:k] = 10 ** rng.uniform(-decades / 2, decades / 2, k)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    S = (Q * lam) @ Q.T
    return torch.from_numpy((S + S.T) / 2), k


def spectrum(S, k):
    """The k nonzero singular values of a PSD S, descending (numpy)."""
    return np.sort(np.linalg.eigvalsh(np.asarray(S)))[::-1][:k]


def kappa(S):
    return linalg.condition_number(S)


def sym_fd_grad(f, S, h=1e-6):
    """Central differences of f along symmetric perturbations: the gradient of f((S+Sᵀ)/2)."""
    n = S.shape[0]
    out = torch.zeros_like(S)
    for i in range(n):
        for j in range(i, n):
            E = torch.zeros_like(S)
            E[i, j] = E[j, i] = h
            d = (f(S + E) - f(S - E)) / (2 * h)
            out[i, j] = out[j, i] = d if i == j else d / 2
    return out


# ------------------------------------------------------------------------------ definitions


def test_values_match_the_definitions():
    rng = np.random.default_rng(0)
    for _ in range(200):
        S, k = random_psd(rng)
        s = spectrum(S, k)
        g = (s**2).sum() / (2 * k) - s[-1] ** 2 / 2
        assert float(R.r_ill(S)) == pytest.approx(1 / g, rel=1e-10)
        p = S.shape[0]
        assert float(R.r_well(S)) == pytest.approx(
            s[0] ** 2 / 2 - (s**2).sum() / (2 * p), rel=1e-9, abs=1e-12
        )


# ------------------------------------------------------------------------------ Theorem 4.1 and B.2


def test_theorem_4_1_parts_1_2_and_two_sided_bounds():
    rng = np.random.default_rng(1)
    worst = {"nonneg": np.inf, "part2": np.inf, "lower": np.inf, "upper": np.inf}
    for _ in range(N_CASES):
        S, k = random_psd(rng)
        s = spectrum(S, k)
        r = float(R.r_ill(S))
        kap = s[0] / s[-1]
        worst["nonneg"] = min(worst["nonneg"], r)
        worst["part2"] = min(worst["part2"], s[0] ** 2 * r * math.log(kap) - 1)  # ≥ 0
        lower = 2 * k / ((k - 1) * (kap**2 - 1) * s[-1] ** 2)
        upper = 2 * k / ((kap**2 - 1) * s[-1] ** 2)
        worst["lower"] = min(worst["lower"], r / lower - 1)
        worst["upper"] = min(worst["upper"], 1 - r / upper)
    assert worst["nonneg"] > 0
    for name in ("part2", "lower", "upper"):
        assert worst[name] >= -1e-12, (name, worst[name])


def test_r_ill_limits_as_kappa_grows():
    """R_ill → 0 when σ₁ → ∞ at fixed σ_min, but not when σ_min → 0 at fixed σ₁ (chapter caveat)."""
    big = [
        float(R.r_ill(torch.diag(torch.tensor([c, 2.0, 1.0], dtype=torch.float64))))
        for c in (1e2, 1e4, 1e6)
    ]
    assert big[-1] < 1e-11 and big[0] > big[1] > big[2]
    small = [
        float(R.r_ill(torch.diag(torch.tensor([1.0, 0.5, e], dtype=torch.float64))))
        for e in (1e-2, 1e-4, 1e-6)
    ]
    limit = 2 * 3 / (1.0 + 0.25)
    assert small[-1] == pytest.approx(limit, rel=1e-6)


def test_closed_form_backward_matches_eigh_autograd_and_fd():
    rng = np.random.default_rng(2)
    worst_eigh, worst_fd = 0.0, 0.0
    for case in range(200):
        S, k = random_psd(rng, k=None)
        # reference: autograd through eigh of the symmetrised matrix (immulib.reference)
        for which in ("ill", "well"):
            X = S.clone().requires_grad_(True)
            (R.r_ill(X, k=k) if which == "ill" else R.r_well(X)).backward()
            Y = S.clone().requires_grad_(True)
            (
                reference.r_ill_eigh(Y, k=k)
                if which == "ill"
                else reference.r_well_eigh(Y)
            ).backward()
            scale = Y.grad.abs().max()
            worst_eigh = max(worst_eigh, float((X.grad - Y.grad).abs().max() / scale))
            if case < 40:
                f = (
                    (lambda A: float(R._RIll.apply(A, k)))
                    if which == "ill"
                    else (lambda A: float(R._RWell.apply(A)))
                )
                fd = sym_fd_grad(f, S, h=1e-6 * float(S.abs().max()))
                worst_fd = max(worst_fd, float((X.grad - fd).abs().max() / scale))
    assert worst_eigh < 1e-8, worst_eigh
    assert worst_fd < 1e-5, worst_fd


def test_gradcheck_on_the_custom_functions():
    rng = np.random.default_rng(3)
    for _ in range(10):
        S, k = random_psd(rng, decades=1.0)
        X = S.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda A: R._RIll.apply(A, k), (X,), eps=1e-6, atol=1e-6, rtol=1e-4
        )
        assert torch.autograd.gradcheck(
            lambda A: R._RWell.apply(A), (X,), eps=1e-6, atol=1e-6, rtol=1e-4
        )


def test_theorem_4_1_part_4_monotone_increase():
    rng = np.random.default_rng(4)
    worst = np.inf
    for _ in range(N_CASES):
        S, k = random_psd(rng)
        s = spectrum(S, k)
        g = (s**2).sum() / (2 * k) - s[-1] ** 2 / 2
        eta = rng.uniform(0.01, 0.99) * k / (k - 1) * g**2
        X = S.clone().requires_grad_(True)
        R.r_ill(X, k=k).backward()
        S2 = S - eta * X.grad
        lam2 = np.sort(np.linalg.eigvalsh(S2.numpy()))[::-1][:k]
        worst = min(worst, (lam2[0] / lam2[-1]) / (s[0] / s[-1]))
    assert worst > 1, worst


# ------------------------------------------------------------------------------ R_well (Nenov et al.)


def well_s_step_bound(s, p):
    """η ≤ (σ₁ − σ_min)/(σ₁(1 − 1/p) + σ_min/p): σ₁ never drops below the new σ_min."""
    return (s[0] - s[-1]) / (s[0] * (1 - 1 / p) + s[-1] / p)


def test_r_well_properties():
    rng = np.random.default_rng(5)
    worst_nonneg, worst_log, worst_mono = np.inf, np.inf, np.inf
    for _ in range(N_CASES):
        S, k = random_psd(rng)
        p = S.shape[0]
        s = spectrum(S, k)
        r = float(R.r_well(S))
        worst_nonneg = min(worst_nonneg, r)
        worst_log = min(worst_log, p * r / s[-1] ** 2 - math.log(s[0] / s[-1]))
        eta = rng.uniform(0.01, 0.99) * well_s_step_bound(s, p)
        S2 = S.numpy() - eta * R.g_well(S).numpy()
        s2 = spectrum(S2, k)
        worst_mono = min(worst_mono, 1 - (s2.max() / s2.min()) / (s[0] / s[-1]))
    assert worst_nonneg > 0 and worst_log >= -1e-12 and worst_mono > 0
    with pytest.warns(R.NonUniqueSingularValueWarning):
        assert float(R.r_well(torch.eye(4, dtype=torch.float64) * 3)) == pytest.approx(
            0, abs=1e-14
        )


def test_r_well_step_below_one_can_increase_kappa():
    """The reconstructed 'any 0 < η < 1' fails on a nearly flat spectrum; the derived bound does not."""
    S = torch.diag(torch.tensor([10.0, 9.9], dtype=torch.float64))
    S2 = S - 0.9 * R.g_well(S)
    assert kappa(S2) > kappa(S)
    eta = 0.99 * well_s_step_bound(np.array([10.0, 9.9]), 2)
    assert kappa(S - eta * R.g_well(S)) < kappa(S)


# ------------------------------------------------------------------------------ Theorem 4.2


def random_theta_K(rng, full_rank=True):
    d = int(rng.integers(2, 7))
    N = (
        int(rng.integers(d + 1, 3 * d + 2))
        if full_rank
        else int(rng.integers(2, d + 1))
    )
    X = torch.from_numpy(rng.standard_normal((N, d)))
    theta = torch.from_numpy(rng.standard_normal((d, d)))
    return theta, linalg.gram(X)


def test_theorem_4_2_theta_gradients():
    rng = np.random.default_rng(6)
    worst_auto, worst_fd = 0.0, 0.0
    for case in range(100):
        theta, K = random_theta_K(rng, full_rank=case % 3 != 0)
        k = linalg.numerical_rank(linalg.probe_hessian(theta, K))
        if k < 2:
            continue
        for fn, closed in (
            (
                lambda t: R.r_ill(linalg.probe_hessian(t, K), k=k),
                R.grad_theta_r_ill(theta, K, k=k),
            ),
            (
                lambda t: R.r_well(linalg.probe_hessian(t, K)),
                R.grad_theta_r_well(theta, K),
            ),
        ):
            t = theta.clone().requires_grad_(True)
            fn(t).backward()
            scale = closed.abs().max()
            worst_auto = max(worst_auto, float((t.grad - closed).abs().max() / scale))
            h = 1e-6
            fd = torch.zeros_like(theta)
            for i in range(theta.shape[0]):
                for j in range(theta.shape[1]):
                    E = torch.zeros_like(theta)
                    E[i, j] = h
                    fd[i, j] = (float(fn(theta + E)) - float(fn(theta - E))) / (2 * h)
            worst_fd = max(worst_fd, float((fd - closed).abs().max() / scale))
    assert worst_auto < 1e-8, worst_auto
    assert worst_fd < 1e-5, worst_fd


# ------------------------------------------------------------------------------ Theorem 4.3


def transcribed_well_bound(s, p):
    """Theorem 4.3 (1) as transcribed in the paper notes (§2.5)."""
    return min(
        1 / ((1 - 1 / p) * s[0]),
        (math.sqrt(s[0] * s[1]) - s[1]) / ((2 / p) * s[1] ** 2),
    )


def test_preconditioned_gradient_is_2_theta_G():
    rng = np.random.default_rng(7)
    worst = 0.0
    for _ in range(200):
        theta, K = random_theta_K(rng)
        H = linalg.probe_hessian(theta, K)
        for grad, G in (
            (R.grad_theta_r_ill(theta, K), R.g_ill(H)),
            (R.grad_theta_r_well(theta, K), R.g_well(H)),
        ):
            pre = torch.linalg.solve(K, grad)
            worst = max(
                worst,
                float((pre - 2 * theta @ G).abs().max() / (2 * theta @ G).abs().max()),
            )
        eta = 0.1
        assert torch.allclose(
            R.preconditioned_step(theta, G, eta),
            theta - eta * pre,
            rtol=1e-6,
            atol=1e-9,
        )
    assert worst < 1e-6, worst


def ill_map(s, k, eta):
    """Theorem 4.3 (2)'s eigenvalue map: the nonzero spectrum of H' after θ(I − 2ηG_ill)."""
    g = (s**2).sum() / (2 * k) - s[-1] ** 2 / 2
    out = s * (1 + 2 * eta * s / (k * g**2)) ** 2
    out[-1] = s[-1] * (1 - 2 * eta * s[-1] * (1 - 1 / k) / g**2) ** 2
    return out


def well_map(s, p, eta):
    """Theorem 4.3 (1)'s eigenvalue map: the nonzero spectrum of H' after θ(I − 2ηG_well)."""
    out = s * (1 + 2 * eta * s / p) ** 2
    out[0] = s[0] * (1 - 2 * eta * s[0] * (1 - 1 / p)) ** 2
    return out


def test_theorem_4_3_monotone_under_the_verified_bounds():
    """Predicted (eigenvalue map) κ' on every case; measured κ' where float64 can resolve it."""
    rng = np.random.default_rng(8)
    worst_ill, worst_well, worst_map, resolved = np.inf, np.inf, 0.0, 0
    for _ in range(N_CASES):
        theta, K = random_theta_K(rng)
        H = linalg.probe_hessian(theta, K)
        k = linalg.numerical_rank(H)
        s = spectrum(H, k)
        u = rng.uniform(0.01, 0.99)
        eta_ill, eta_well = u * R.max_step_r_ill(H), u * R.safe_step_r_well(H)
        s_ill, s_well = ill_map(s, k, eta_ill), well_map(s, H.shape[0], eta_well)
        worst_ill = min(worst_ill, (s_ill.max() / s_ill.min()) / (s[0] / s[-1]))
        worst_well = min(worst_well, 1 - (s_well.max() / s_well.min()) / (s[0] / s[-1]))
        for G, eta, pred in (
            (R.g_ill(H), eta_ill, s_ill),
            (R.g_well(H), eta_well, s_well),
        ):
            if pred.max() / pred.min() < 1e8:
                measured = kappa(
                    linalg.probe_hessian(R.preconditioned_step(theta, G, eta), K)
                )
                worst_map = max(
                    worst_map, abs(measured / (pred.max() / pred.min()) - 1)
                )
                resolved += 1
    assert worst_ill > 1, worst_ill
    assert worst_well > 0, worst_well
    assert resolved > N_CASES and worst_map < 1e-5, (resolved, worst_map)


def test_transcribed_theorem_4_3_1_bound_can_fail():
    """The notes' counterexample: spectrum [213.3, 45.9, 19.4], η = 0.00326 < transcribed bound."""
    H = torch.diag(torch.tensor([213.3, 45.9, 19.4], dtype=torch.float64))
    eta = 0.00326
    assert eta < transcribed_well_bound([213.3, 45.9, 19.4], 3)
    theta = torch.eye(3, dtype=torch.float64)
    t2 = R.preconditioned_step(theta, R.g_well(H), eta)
    assert kappa(linalg.probe_hessian(t2, H)) > kappa(H)
    assert eta > R.safe_step_r_well(H)


# ------------------------------------------------------------------------------ warnings and errors


def test_warns_on_non_unique_extreme_singular_values():
    D = torch.diag(torch.tensor([3.0, 3.0, 1.0], dtype=torch.float64))
    with pytest.warns(R.NonUniqueSingularValueWarning, match="σ_max"):
        R.r_well(D)
    D2 = torch.diag(torch.tensor([3.0, 1.0, 1.0], dtype=torch.float64))
    with pytest.warns(R.NonUniqueSingularValueWarning, match="σ_min"):
        R.r_ill(D2)
    with pytest.warns(R.NonUniqueSingularValueWarning):
        R.g_ill(D2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        R.r_ill(D), R.r_well(D2)  # unique extremes: no warning


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: R.r_ill(torch.ones(2, 3, dtype=torch.float64)), ValueError, "square"),
        (
            lambda: R.r_ill(torch.tensor([[2.0, 1.0], [0.0, 1.0]])),
            ValueError,
            "symmetric",
        ),
        (
            lambda: R.r_well(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]])),
            ValueError,
            "NaN",
        ),
        (
            lambda: R.r_well(torch.diag(torch.tensor([1.0, -1.0]))),
            ValueError,
            "positive semi-definite",
        ),
        (lambda: R.r_well(torch.zeros(3, 3)), ValueError, "all zeros"),
        (lambda: R.r_well("S"), TypeError, "S must be"),
        (lambda: R.r_ill(torch.eye(3), k=1), ValueError, "k must"),
        (lambda: R.r_ill(torch.eye(3), k=4), ValueError, "k must"),
        (lambda: R.r_ill(torch.eye(3), k=2.0), TypeError, "k must"),
        (lambda: R.r_ill(torch.eye(3), k=True), TypeError, "k must"),
        (lambda: R.r_ill(torch.eye(3)), ValueError, "infinite"),
        (
            lambda: R.preconditioned_step(torch.eye(3), torch.eye(2), 0.1),
            ValueError,
            "G must",
        ),
        (
            lambda: R.preconditioned_step(torch.eye(2), torch.eye(2), -0.1),
            ValueError,
            "eta",
        ),
        (lambda: R.grad_theta_r_ill(torch.eye(3), torch.eye(2)), ValueError, "theta"),
    ],
)
def test_bad_inputs(call, exc, match):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", R.NonUniqueSingularValueWarning)
        with pytest.raises(exc, match=match):
            call()


def test_safe_step_r_well_tolerates_a_slightly_negative_zero_eigenvalue():
    # an eigenvalue that is 0 in exact arithmetic but -1e-13 after rounding must not crash the bound
    Q, _ = torch.linalg.qr(
        torch.randn(
            4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
        )
    )
    H = Q @ torch.diag(torch.tensor([5.0, 2.0, 1.0, -1e-13], dtype=torch.float64)) @ Q.T
    bound = R.safe_step_r_well((H + H.T) / 2, k=4)
    assert 0 < bound < math.inf
