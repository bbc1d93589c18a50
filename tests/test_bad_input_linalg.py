"""immulib.linalg at extreme scales and with out-of-range tolerances: the right number or a clear error."""

import numpy as np
import pytest
import torch

from immulib import linalg


def _psd(seed=0, n=5, rank=None):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(8, rank or n, dtype=torch.float64, generator=g)
    if rank:
        A = A @ torch.randn(rank, n, dtype=torch.float64, generator=g)
    return A, A.T @ A


@pytest.mark.parametrize("c", [1e-300, 1e-200, 1e-100, 1.0, 1e100, 1e200, 1e300])
def test_condition_number_and_rank_are_scale_free(c):
    _, S = _psd(1)
    _, S3 = _psd(2, n=6, rank=3)
    assert linalg.condition_number(S * c) == pytest.approx(
        linalg.condition_number(S), rel=1e-10
    )
    assert linalg.numerical_rank(S3 * c) == 3
    assert linalg.condition_number(S3 * c) == pytest.approx(
        linalg.condition_number(S3), rel=1e-8
    )


@pytest.mark.parametrize("c, what", [(1e200, "overflows"), (1e-200, "underflows")])
def test_gram_never_returns_inf_or_zero_from_finite_input(c, what):
    X, _ = _psd(3)
    with pytest.raises(ValueError, match=f"Gram matrix XᵀX {what} float64.*rescale"):
        linalg.gram(X * c)
    theta = torch.eye(5, dtype=torch.float64) * c
    with pytest.raises(ValueError, match=f"probe Hessian θᵀKθ {what} float64"):
        linalg.probe_hessian(theta, linalg.gram(X))


@pytest.mark.parametrize("c", [1e-150, 1e-100, 1e100, 1e150])
def test_gram_and_probe_hessian_exact_wherever_representable(c):
    X, _ = _psd(4)
    K = linalg.gram(X * c)
    assert torch.isfinite(K).all() and K.abs().max() > 0
    np.testing.assert_allclose((K / c**2).numpy(), linalg.gram(X).numpy(), rtol=1e-12)
    H = linalg.probe_hessian(torch.eye(5, dtype=torch.float64) * c, linalg.gram(X))
    np.testing.assert_allclose((H / c**2).numpy(), linalg.gram(X).numpy(), rtol=1e-12)


def test_gram_is_bit_identical_to_xtx_at_ordinary_scales():
    X, _ = _psd(5)
    X = X * 3.7
    K = X.T @ X
    assert torch.equal(linalg.gram(X), (K + K.T) / 2)


def test_gram_keeps_gradients():
    X, _ = _psd(6)
    X = (X * 1e100).requires_grad_()
    linalg.gram(X).trace().backward()
    np.testing.assert_allclose(X.grad.numpy(), 2 * X.detach().numpy(), rtol=1e-12)


def test_rank_tol_above_sigma_max_is_a_clear_value_error():
    _, S = _psd(7)
    sigma = torch.linalg.svdvals(S)
    smax = float(sigma[0])
    with pytest.raises(ValueError, match=r"rank_tol=.* is not below σ_max\(S\)"):
        linalg.condition_number(S, rank_tol=2 * smax)
    with pytest.raises(ValueError, match="rank_tol"):
        linalg.condition_number(S, rank_tol=smax)
    assert (
        linalg.numerical_rank(S, rank_tol=2 * smax) == 0
    )  # a rank of 0 is a fine answer
    assert (
        linalg.condition_number(S, rank_tol=float(sigma[:2].mean())) == 1.0
    )  # only σ_max kept
