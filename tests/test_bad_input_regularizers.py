"""immulib.regularizers at extreme scales: scale-correct values, or a clear ValueError, never NaN/inf/0."""

import math

import pytest
import torch

from immulib import regularizers as R


def _psd(seed=0, n=5):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(9, n, dtype=torch.float64, generator=g)
    return A.T @ A


@pytest.mark.parametrize("c", [2.0**-500, 1e-140, 1e-50, 1e50, 1e140, 2.0**500])
def test_r_ill_r_well_follow_their_scaling_laws(c):
    S = _psd(1)
    # R_ill(cS) = R_ill(S)/c², R_well(cS) = c² R_well(S); exact laws, so any drift is an error
    assert float(R.r_ill(S * c)) == pytest.approx(float(R.r_ill(S)) / c**2, rel=1e-10)
    assert float(R.r_well(S * c)) == pytest.approx(float(R.r_well(S)) * c**2, rel=1e-10)
    assert R.g_well(S * c).div(c).allclose(R.g_well(S), rtol=1e-10, atol=0)


@pytest.mark.parametrize("c", [1e160, 1e200, 1e-160, 1e-200, 1e-300])
def test_unrepresentable_values_are_value_errors_not_nan_inf_or_zero(c):
    S = _psd(2) * c
    for f, name in ((R.r_ill, "R_ill"), (R.r_well, "R_well")):
        with pytest.raises(ValueError, match=rf"{name}\(S\) (over|under)flows float64"):
            f(S)


def test_gradient_through_the_scaled_computation():
    S = (_psd(3) * 1e60).requires_grad_()
    R.r_well(S).backward()
    expected = R.g_well(S.detach())
    assert torch.isfinite(S.grad).all() and S.grad.allclose(
        expected, rtol=1e-10, atol=0
    )
    S.grad = None
    R.r_ill(S).backward()
    assert torch.isfinite(S.grad).all() and S.grad.allclose(
        R.g_ill(S.detach()), rtol=1e-10, atol=0
    )


def test_step_bounds_follow_their_scaling_laws():
    S, c = _psd(4), 1e40
    # max step ∝ c³ (g² / σ_k), safe step ∝ 1/c
    assert R.max_step_r_ill(S * c) == pytest.approx(
        R.max_step_r_ill(S) * c**3, rel=1e-9
    )
    assert R.safe_step_r_well(S * c) == pytest.approx(
        R.safe_step_r_well(S) / c, rel=1e-9
    )
    assert math.isfinite(R.max_step_r_ill(S * 1e-60))


@pytest.mark.filterwarnings(
    "ignore::immulib.regularizers.NonUniqueSingularValueWarning"
)
def test_r_well_of_a_multiple_of_identity_is_zero_at_any_scale():
    for c in (1e-250, 1.0, 1e250):
        assert float(R.r_well(torch.eye(4, dtype=torch.float64) * c)) == 0.0
