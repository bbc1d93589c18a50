"""immulib.attacks: every attacker solves a well-conditioned probe; whitening takes one step; reruns are identical."""

import numpy as np
import pytest
import torch

from immulib import attacks, descent, linalg


def _problem(seed=0, n=200, d=8, log_spread=0.5):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) @ np.diag(
        np.exp(rng.uniform(-log_spread, log_spread, d))
    )
    y = X @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)
    return X, y


def _excess(X, y, W):
    loss = attacks.probe_loss(X, y, W)
    best = attacks.probe_loss(X, y, (np.linalg.pinv(X) @ y)[None])[0]
    return (loss - best) / (loss[0] - best)


@pytest.mark.parametrize("attacker", attacks.ATTACKERS)
def test_every_attacker_reaches_the_target_on_a_well_conditioned_problem(attacker):
    X, y = _problem()
    eta = {"gd_fixed": 1 / float(np.linalg.eigvalsh(X.T @ X).max()), "adam": 0.05}.get(
        attacker
    )
    W = attacks.attack(X, y, attacker, steps=300, eta=eta)
    assert W.shape == (301, X.shape[1]) and W.dtype == torch.float64
    t = attacks.steps_to_target(_excess(X, y, W), 1e-4, higher_is_better=False)
    assert t is not None and t >= 1


def test_whitening_needs_one_step_and_plain_descent_many_on_an_ill_conditioned_quadratic():
    X, y = _problem(1, log_spread=4.0)
    assert linalg.condition_number(linalg.gram(X)) > 1e3
    target = 1e-10
    t_white = attacks.steps_to_target(
        _excess(X, y, attacks.attack(X, y, "whiten", steps=5)),
        target,
        higher_is_better=False,
    )
    t_gd = attacks.steps_to_target(
        _excess(X, y, attacks.attack(X, y, "gd_exact", steps=50)),
        target,
        higher_is_better=False,
    )
    t_lstsq = attacks.steps_to_target(
        _excess(X, y, attacks.attack(X, y, "lstsq", steps=5)),
        target,
        higher_is_better=False,
    )
    assert t_white == 1 and t_lstsq == 1 and t_gd is None


def test_jacobi_is_exact_on_diagonal_gram():
    X = np.diag([1e-3, 1.0, 1e3]) @ np.eye(3)
    X = np.vstack([X, 2 * X])  # columns orthogonal, very different norms: FᵀF diagonal
    y = np.arange(6.0)
    t = attacks.steps_to_target(
        _excess(X, y, attacks.attack(X, y, "jacobi", steps=3)),
        1e-12,
        higher_is_better=False,
    )
    assert t == 1


def test_exact_line_search_matches_descent_gd_errors():
    X, y = _problem(2, log_spread=2.0)
    W = attacks.attack(X, y, "gd_exact", steps=40, seed=3)
    w_star = np.linalg.pinv(X) @ y
    ref = descent.gd_errors(
        linalg.gram(X), W[0] - torch.from_numpy(w_star), 40, step_size="exact"
    )
    ours = ((W - torch.from_numpy(w_star)) ** 2).sum(1)
    assert torch.allclose(ours, ref, rtol=1e-8, atol=1e-14 * float(ref[0]))


@pytest.mark.parametrize(
    "attacker,eta", [("gd_fixed", 1e-3), ("adam", 0.01), ("gd_exact", None)]
)
def test_seeded_reruns_are_identical_and_seeds_differ(attacker, eta):
    X, y = _problem(3)
    a = attacks.attack(X, y, attacker, steps=30, eta=eta, seed=7)
    b = attacks.attack(X, y, attacker, steps=30, eta=eta, seed=7)
    c = attacks.attack(X, y, attacker, steps=30, eta=eta, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_accuracy_and_steps_to_target():
    X = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    y = np.array([1.0, -1.0, -1.0])
    W = np.array([[0.0, 1.0], [1.0, -1.0]])
    assert attacks.probe_accuracy(X, y, W).tolist() == [0.0, 1.0]
    assert attacks.steps_to_target([0.1, 0.5, 0.9], 0.5, higher_is_better=True) == 1
    assert attacks.steps_to_target([3.0, 2.0, 1.0], 0.5, higher_is_better=False) is None


def test_tune_picks_the_fastest_step_size():
    X, y = _problem(4)
    L = float(np.linalg.eigvalsh(X.T @ X).max())

    def score(W):
        t = attacks.steps_to_target(_excess(X, y, W), 1e-3, higher_is_better=False)
        return 10**9 if t is None else t

    eta, W = attacks.tune(
        X, y, "gd_fixed", [0.01 / L, 0.1 / L, 1 / L, 3 / L], steps=200, score=score
    )
    assert eta == 1 / L and W.shape == (201, 8)  # 3/L diverges and is skipped


def test_bad_input_errors():
    X, y = _problem()
    with pytest.raises(ValueError, match="attacker"):
        attacks.attack(X, y, "newton", steps=3)
    with pytest.raises(ValueError, match="eta"):
        attacks.attack(X, y, "adam", steps=3)
    with pytest.raises(ValueError, match="eta"):
        attacks.attack(X, y, "whiten", steps=3, eta=0.1)
    with pytest.raises(ValueError, match="eta"):
        attacks.attack(X, y, "gd_fixed", steps=3, eta=-1.0)
    with pytest.raises(ValueError, match="steps"):
        attacks.attack(X, y, "gd_exact", steps=0)
    with pytest.raises(TypeError, match="seed"):
        attacks.attack(X, y, "gd_exact", steps=2, seed=1.5)
    with pytest.raises(ValueError, match="y must have"):
        attacks.attack(X, y[:-1], "gd_exact", steps=2)
    with pytest.raises(TypeError, match="F"):
        attacks.attack("X", y, "gd_exact", steps=2)
    with pytest.raises(ValueError, match="W must have"):
        attacks.probe_loss(X, y, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="labels"):
        attacks.probe_accuracy(X, y, np.zeros((2, 8)))
    with pytest.raises(ValueError, match="grid"):
        attacks.tune(X, y, "adam", [], steps=2, score=len)
    with pytest.raises(ValueError, match="attacker"):
        attacks.tune(X, y, "gd_exact", [0.1], steps=2, score=len)


def test_whitening_a_rank_deficient_probe_starts_at_w0_and_solves_in_one_step():
    X, y = _problem(5)
    X = np.hstack([X, X[:, :1] + X[:, 1:2]])  # a collinear column: FᵀF is singular
    W = attacks.attack(X, y, "whiten", steps=3, seed=2)
    assert torch.allclose(W[0], attacks.attack(X, y, "gd_exact", steps=1, seed=2)[0])
    assert float(_excess(X, y, W)[1]) < 1e-10
