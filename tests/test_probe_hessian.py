"""Tests for the claims of the chapter "Linear probing and its Hessian" (book/03_probe_hessian.md):
the probe Hessian 2θᵀKθ (Eqs. (8)–(9)), Proposition 3.2 (Eq. (10)) in the aligned case and as a
Schur–Horn trace/majorisation statement otherwise, and the relative-angle bound
1/κ_H|P ≤ κ(θᵀK_Hθ)/κ(θᵀK_Pθ) ≤ κ_H|P with κ_H|P = κ(K_P^{-1/2} K_H K_P^{-1/2}).
"""

from __future__ import annotations

import numpy as np
import torch

from immulib import linalg

N_CASES = 1000


def random_orthogonal(rng, n):
    Q, R = np.linalg.qr(rng.standard_normal((n, n)))
    return Q * np.sign(np.diag(R))


def random_spd(rng, n):
    Q = random_orthogonal(rng, n)
    A = (Q * 10 ** rng.uniform(-1.5, 1.5, n)) @ Q.T
    return (A + A.T) / 2


def eq10(theta, K):
    U, s, _ = np.linalg.svd(theta)
    gamma, Q = np.linalg.eigh(K)
    M = s[:, None] * (U.T @ Q) * np.sqrt(np.clip(gamma, 0, None))[None, :]
    return np.sort((M**2).sum(1))[::-1]


def spectrum(A):
    return np.sort(np.linalg.eigvalsh(A))[::-1]


def test_probe_hessian_is_twice_theta_K_theta():
    rng = np.random.default_rng(0)
    for _ in range(20):
        N, d = int(rng.integers(3, 30)), int(rng.integers(2, 10))
        X = torch.from_numpy(rng.standard_normal((N, d)))
        y = torch.from_numpy(rng.standard_normal(N))
        theta = torch.from_numpy(rng.standard_normal((d, d)))
        H = torch.autograd.functional.hessian(
            lambda w: ((X @ theta @ w - y) ** 2).sum(),
            torch.zeros(d, dtype=torch.float64),
        )
        ref = 2 * linalg.probe_hessian(theta, linalg.gram(X))
        assert torch.allclose(H, ref, rtol=1e-10, atol=1e-10 * float(ref.abs().max()))


def test_prop_3_2_exact_when_aligned_and_trace_only_otherwise():
    rng = np.random.default_rng(1)
    worst_aligned, worst_trace, worst_major, gaps = 0.0, 0.0, np.inf, []
    for _ in range(N_CASES):
        n = int(rng.integers(2, 9))
        K = random_spd(rng, n)
        _, Q = np.linalg.eigh(K)
        th = (
            Q[:, rng.permutation(n)]
            @ np.diag(10 ** rng.uniform(-1, 1, n))
            @ random_orthogonal(rng, n).T
        )
        true = spectrum(th.T @ K @ th)
        worst_aligned = max(worst_aligned, np.abs(eq10(th, K) - true).max() / true[0])
        th = rng.standard_normal((n, n))
        true, diag = spectrum(th.T @ K @ th), eq10(th, K)
        gaps.append(np.abs(diag - true).max() / true[0])
        worst_trace = max(worst_trace, abs(diag.sum() - true.sum()) / true.sum())
        worst_major = min(
            worst_major, np.min(np.cumsum(true) - np.cumsum(diag)) / true.sum()
        )
    assert worst_aligned < 1e-10
    assert worst_trace < 1e-10 and worst_major > -1e-12
    assert np.median(gaps) > 1e-3  # the formula is not the spectrum for a general θ


def kappa_pencil(KP, KH):
    w, V = np.linalg.eigh(KP)
    R = (V / np.sqrt(w)) @ V.T
    mu = np.linalg.eigvalsh(R @ KH @ R)
    return mu[-1] / mu[0], R


def test_relative_angle_bound_and_attainment():
    rng = np.random.default_rng(2)
    for case in range(N_CASES):
        n = int(rng.integers(2, 9))
        KP = random_spd(rng, n)
        if case % 2:
            w, V = np.linalg.eigh(KP)
            gH = 10 ** rng.uniform(-1.5, 1.5, n)
            KH = (V * gH) @ V.T
        else:
            KH = random_spd(rng, n)
        kp, R = kappa_pencil(KP, KH)
        th = rng.standard_normal((n, n))
        ratio = linalg.condition_number(th.T @ KH @ th) / linalg.condition_number(
            th.T @ KP @ th
        )
        assert 1 / kp * (1 - 1e-9) <= ratio <= kp * (1 + 1e-9)
        attained = linalg.condition_number(R @ KH @ R) / linalg.condition_number(
            R @ KP @ R
        )
        assert abs(attained / kp - 1) < 1e-8
        if case % 2:
            assert abs(kp / ((gH / w).max() / (gH / w).min()) - 1) < 1e-8


def test_proportional_covariances_make_immunization_impossible():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(2, 9))
        KP = random_spd(rng, n)
        KH = rng.uniform(0.1, 10) * KP
        th = rng.standard_normal((n, n))
        ratio = linalg.condition_number(th.T @ KH @ th) / linalg.condition_number(
            th.T @ KP @ th
        )
        assert abs(ratio - 1) < 1e-8
