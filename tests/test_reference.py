"""immulib.reference: the eigh-autograd R_ill/R_well, checked on explicit spectra and by
finite differences in float64 (it is the reference the closed forms are tested against)."""

import numpy as np
import pytest
import torch

from immulib.reference import r_ill_eigh, r_well_eigh


def _psd(rng, n, k):
    """A symmetric PSD n × n matrix of rank k with distinct eigenvalues in [0.3, 3]."""
    lam = np.zeros(n)
    lam[:k] = rng.permutation(np.linspace(0.3, 3.0, k)) * rng.uniform(0.9, 1.1)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (Q * lam) @ Q.T, np.sort(lam[:k])[::-1]


def test_values_are_the_formulas_on_the_spectrum():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 9))
        k = int(rng.integers(2, n + 1))
        S, sigma = _psd(rng, n, k)
        g = (sigma**2).sum() / (2 * k) - sigma[-1] ** 2 / 2
        assert float(r_ill_eigh(S)) == pytest.approx(
            1 / g, rel=1e-10
        )  # k = numerical rank
        assert float(r_ill_eigh(S, k=k)) == pytest.approx(1 / g, rel=1e-10)
        well = sigma[0] ** 2 / 2 - (sigma**2).sum() / (2 * n)
        assert float(r_well_eigh(S)) == pytest.approx(well, rel=1e-10, abs=1e-12)


def test_gradients_match_finite_differences_in_float64():
    rng = np.random.default_rng(1)
    for case in range(20):
        n = int(rng.integers(2, 7))
        k = (
            n if case % 2 else int(rng.integers(2, n + 1))
        )  # full rank and rank-deficient
        S, _ = _psd(rng, n, k)
        S = torch.from_numpy(S).requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda A: r_ill_eigh(A, k=k), (S,), eps=1e-6, atol=1e-6
        )
        assert torch.autograd.gradcheck(r_well_eigh, (S,), eps=1e-6, atol=1e-6)


def test_gradient_is_symmetric_and_gradients_reach_a_float32_input():
    rng = np.random.default_rng(2)
    S, _ = _psd(rng, 5, 5)
    X = torch.tensor(S, dtype=torch.float32, requires_grad=True)
    r_ill_eigh(X).backward()
    assert X.grad is not None and X.grad.dtype == torch.float32
    assert torch.allclose(X.grad, X.grad.T)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="square"):
        r_well_eigh(np.ones((2, 3)))
    with pytest.raises(ValueError, match="k must satisfy"):
        r_ill_eigh(np.eye(3), k=4)
    with pytest.raises(TypeError, match="k must be an int"):
        r_ill_eigh(np.eye(3), k=2.0)
    with pytest.raises(TypeError, match="S must be"):
        r_ill_eigh("S")
