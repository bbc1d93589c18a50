"""immulib.immunize: Algorithm 1's two forms agree, seeded reruns are identical, the methods immunize."""

import numpy as np
import pytest
import torch

from immulib import immunize as im
from immulib import linalg, metrics


def _task(seed=0, n=60, d=8):
    """D_P and D_H whose Gram matrices have rotated eigenbases (immunization is possible)."""
    rng = np.random.default_rng(seed)
    XP = rng.standard_normal((n, d)) @ np.diag(np.linspace(1, 4, d))
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    XH = rng.standard_normal((n, d)) @ np.diag(np.linspace(1, 6, d)) @ Q
    yP, yH = XP @ rng.standard_normal(d), XH @ rng.standard_normal(d)
    return XP, yP, XH, yH


def test_closed_form_and_dummy_layer_give_the_same_direction():
    XP, yP, XH, _ = _task()
    rng = np.random.default_rng(1)
    theta = torch.tensor(np.eye(8) + 0.1 * rng.standard_normal((8, 8)))
    omega = torch.tensor(rng.standard_normal(8))
    closed = im.algorithm1_direction(XP, yP, XH, theta, omega, 0.3, 2e3)
    dummy = im.algorithm1_direction_autograd(XP, yP, XH, theta, omega, 0.3, 2e3)
    assert torch.allclose(closed, dummy, rtol=1e-9, atol=1e-12 * float(closed.abs().max()))


def test_dummy_layer_applies_K_inverse_on_the_chosen_side():
    rng = np.random.default_rng(2)
    K = torch.tensor(linalg.gram(rng.standard_normal((20, 5))).numpy())
    theta = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)
    C = torch.randn(5, 5, dtype=torch.float64)
    for side, expect in (("theta", torch.linalg.solve(K, C)), ("output", C @ torch.linalg.inv(K))):
        (g,) = torch.autograd.grad((im.precondition(theta, K, side=side) * C).sum(), theta)
        assert torch.allclose(g, expect, rtol=1e-9)
    out = im.precondition(theta, K, ridge=1.0)
    assert torch.equal(out, theta)


def test_seeded_reruns_are_identical_and_seeds_differ():
    XP, yP, XH, yH = _task()
    for method in im.METHODS:
        a = im.immunize(XP, yP, XH, yH=yH, method=method, steps=15, seed=3, progress=False)
        b = im.immunize(XP, yP, XH, yH=yH, method=method, steps=15, seed=3, progress=False)
        assert torch.equal(a.theta, b.theta) and torch.equal(a.omega, b.omega), method
        assert a.history.equals(b.history), method
    c = im.immunize(XP, yP, XH, steps=15, seed=4, progress=False)
    assert not torch.equal(a.omega, c.omega)


def test_authors_variant_runs_with_minibatches_and_is_seeded():
    XP, yP, XH, _ = _task()
    kw = {**im.AUTHORS_HOUSE_PRICES, "epochs": 2, "batch_size": 16}
    a = im.immunize(XP, yP, XH, seed=1, progress=False, **kw)
    b = im.immunize(XP, yP, XH, seed=1, progress=False, **kw)
    assert torch.equal(a.theta, b.theta)
    assert len(a.history) == 1 + 2 * (60 // 16)


def test_ours_immunizes_beats_identity_and_baselines_and_keeps_the_optimum():
    XP, yP, XH, yH = _task()
    scores = {}
    for method in im.METHODS:
        res = im.immunize(XP, yP, XH, yH=yH, method=method, steps=150, progress=False)
        scores[method] = metrics.rir(XP, XH, res.theta).rir
    ours = im.immunize(XP, yP, XH, steps=150, progress=False)
    assert scores["ours"] > 3 and all(scores["ours"] > v for k, v in scores.items() if k != "ours")
    # Definition 3.1 (c): θ invertible, so the D_P least-squares optimum is unchanged
    th = ours.theta.numpy()
    assert np.linalg.svd(th, compute_uv=False).min() > 1e-3
    best = lambda F: np.sum((F @ np.linalg.lstsq(F, yP, rcond=None)[0] - yP) ** 2)
    assert best(XP @ th) == pytest.approx(best(XP), rel=1e-8, abs=1e-8)
    h = ours.history
    assert list(h.columns[:4]) == ["step", "kappa_P", "kappa_H", "loss_P"] and len(h) == 151
    assert h.kappa_P.iloc[-1] < h.kappa_P.iloc[0]


def test_bad_arguments():
    XP, yP, XH, yH = _task()
    cases = [
        (dict(method="nope"), ValueError, "method"),
        (dict(method="imma"), ValueError, "yH"),
        (dict(steps=0), ValueError, "steps"),
        (dict(steps=2.5), TypeError, "steps"),
        (dict(steps=3, epochs=2), ValueError, "epochs"),
        (dict(eta=-1.0), ValueError, "eta"),
        (dict(lam_P="x"), TypeError, "lam_P"),
        (dict(rho=1.5), ValueError, "rho"),
        (dict(optimizer="sgd"), ValueError, "optimizer"),
        (dict(precond_side="left"), ValueError, "precond_side"),
        (dict(batch_size=1000), ValueError, "batch_size"),
        (dict(theta0=np.eye(3)), ValueError, "theta0"),
        (dict(progress=1), TypeError, "progress"),
        (dict(seed=-1), ValueError, "seed"),
    ]
    for kw, err, word in cases:
        with pytest.raises(err, match=word):
            im.immunize(XP, yP, XH, **{"steps": 2, "progress": False, **kw})
    with pytest.raises(ValueError, match="yP"):
        im.immunize(XP, yP[:5], XH, steps=2, progress=False)
    with pytest.raises(ValueError, match="XH"):
        im.immunize(XP, yP, XH[:, :3], steps=2, progress=False)
    with pytest.raises(ValueError, match="side"):
        im.precondition(torch.eye(3, dtype=torch.float64), np.eye(3), side="x")
