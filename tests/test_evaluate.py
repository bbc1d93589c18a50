"""immulib.evaluate: the attacker's step counts match a direct implementation, grow with κ, and the
table's identity row, ratio columns and flags compute as documented."""

import itertools
import math

import numpy as np
import pytest
import torch

from immulib import evaluate, linalg, metrics, optimal


def _data(rng, n, d, log_spread):
    X = rng.standard_normal((n, d)) @ np.diag(
        np.exp(rng.uniform(-log_spread, log_spread, d))
    )
    y = X @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)
    return X, y


def _direct(F, y, target, max_steps, eta=None):
    """Gradient descent on ½‖Fw − y‖² from w = 0 in the original coordinates, counted directly."""
    A, b = F.T @ F, F.T @ y
    w_star = np.linalg.lstsq(F, y, rcond=None)[0]
    L = lambda w: 0.5 * np.sum((F @ w - y) ** 2)
    L_star, w = L(w_star), np.zeros(F.shape[1])
    L0 = L(w)
    for t in range(1, max_steps + 1):
        g = A @ w - b
        w = w - (eta if eta is not None else (g @ g) / (g @ A @ g)) * g
        if (L(w) - L_star) / (L0 - L_star) <= target:
            return t
    return max_steps + 1


def test_exact_line_search_count_matches_a_direct_implementation():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(40):
        n, d = int(rng.integers(20, 60)), int(rng.integers(2, 10))
        X, y = _data(rng, n, d, rng.uniform(0.2, 2.0))
        target = 10 ** rng.uniform(-6, -1)
        got = evaluate.attack_steps(X, y, target=target, max_steps=400)["exact"]
        want = _direct(X, y, target, 400)
        # rounding can move a suboptimality that lands on the target by one step
        assert abs(got - want) <= 1, (got, want)
        checked += got == want
    assert checked >= 38


def test_fixed_step_count_matches_a_direct_implementation_of_the_tuned_grid():
    rng = np.random.default_rng(1)
    for _ in range(20):
        X, y = _data(rng, 50, 6, 1.0)
        lam_max = np.linalg.eigvalsh(X.T @ X).max()
        want = min(
            _direct(X, y, 1e-4, 2000, eta=c / lam_max) for c in evaluate.FIXED_GRID
        )
        got = evaluate.attack_steps(X, y, target=1e-4, max_steps=2000)["fixed"]
        assert abs(got - want) <= 1, (got, want)


def test_steps_grow_with_the_condition_number():
    rng = np.random.default_rng(2)
    U, _ = np.linalg.qr(rng.standard_normal((300, 8)))
    V, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    y = U @ np.ones(8) + 0.1 * rng.standard_normal(300)
    counts = []
    for kappa in (1e1, 1e2, 1e3, 1e4):
        X = U @ np.diag(np.geomspace(1, kappa**-0.5, 8)) @ V.T
        counts.append(evaluate.attack_steps(X, y, target=1e-4, max_steps=10**6))
    for key in ("exact", "fixed"):
        steps = [c[key] for c in counts]
        assert all(a < b for a, b in itertools.pairwise(steps)), (key, steps)
        assert steps[-1] > 100 * steps[0]


def test_unreached_target_returns_max_steps_plus_one_and_whitening_needs_one_step():
    rng = np.random.default_rng(3)
    X, y = _data(rng, 100, 6, 4.0)
    assert evaluate.attack_steps(X, y, target=1e-10, max_steps=5) == {
        "exact": 6,
        "fixed": 6,
    }
    white = X @ optimal.optimal_theta(linalg.gram(X)).numpy()
    assert evaluate.attack_steps(white, y, target=1e-12, max_steps=5) == {
        "exact": 1,
        "fixed": 1,
    }


def _split_problem(seed=4, d=6):
    rng = np.random.default_rng(seed)
    XP, yP = _data(rng, 80, d, 1.0)
    XH, yH = _data(rng, 80, d, 1.0)
    XPt, yPt = _data(rng, 60, d, 1.0)
    XHt, yHt = _data(rng, 60, d, 1.0)
    return (XP, yP, XH, yH), {
        "XP_test": XPt,
        "yP_test": yPt,
        "XH_test": XHt,
        "yH_test": yHt,
    }


def test_identity_row_is_one_and_the_table_has_the_ratio_columns():
    train, test = _split_problem()
    theta = optimal.optimal_theta(linalg.gram(train[0]))
    table = evaluate.score_table({"whitening": theta}, *train, **test)
    assert list(table.index) == ["identity", "whitening"]
    ident = table.loc["identity"]
    assert (
        ident.i == pytest.approx(1)
        and ident.ii == pytest.approx(1)
        and ident.rir == pytest.approx(1)
    )
    assert ident.loss_P_kept == pytest.approx(1) and ident.theta_dist == 0
    assert not ident.def31 and not ident.slower_than_identity
    for c in evaluate.STEP_COLUMNS:
        assert ident[c + "_vs_identity"] == 1
        assert (
            table.loc["whitening", c + "_vs_identity"]
            == table.loc["whitening", c] / ident[c]
        )
    w = table.loc["whitening"]
    assert w.steps_P_train_exact == 1 and w.loss_P_kept == pytest.approx(1, rel=1e-9)
    assert w.rir == pytest.approx(
        optimal.rir_ceiling(linalg.gram(train[0]), linalg.gram(train[2])), rel=1e-8
    )


def test_score_agrees_with_metrics_rir_and_attack_steps():
    train, test = _split_problem(5)
    XP, _, XH, yH = train
    theta = np.random.default_rng(0).standard_normal((6, 6))
    ref = np.random.default_rng(1).standard_normal((6, 6))
    row = evaluate.score(
        theta, *train, **test, theta_ref=ref, target=1e-3, max_steps=500
    )
    r = metrics.rir(XP, XH, theta, theta0=ref)
    assert (row["i"], row["ii"], row["rir"], row["kappa_P"], row["kappa_H"]) == (
        r.i,
        r.ii,
        r.rir,
        r.kappa_P,
        r.kappa_H,
    )
    assert row["theta_dist"] == pytest.approx(np.linalg.norm(theta - ref))
    for split, (X, y) in {
        "train_H": (XH, yH),
        "test_P": (test["XP_test"], test["yP_test"]),
    }.items():
        task_split = split.split("_")
        want = evaluate.attack_steps(X @ theta, y, target=1e-3, max_steps=500)
        assert row[f"steps_{task_split[1]}_{task_split[0]}_exact"] == want["exact"]
        assert row[f"steps_{task_split[1]}_{task_split[0]}_fixed"] == want["fixed"]
    assert row["loss_P_kept"] == pytest.approx(1, rel=1e-8)  # both invertible


def test_flags_compute_as_stated():
    train, test = _split_problem(6)
    KP = linalg.gram(train[0])
    # whitening D_P: (ii) = 1/κ(K_P) ≤ 1, D_P optimum kept; def31 iff (i) > 1
    row = evaluate.score(optimal.optimal_theta(KP), *train, **test)
    assert row["def31"] == (row["i"] > 1)
    base = evaluate.score(np.eye(6), *train, **test)
    assert row["slower_than_identity"] == (
        row["steps_H_test_exact"] > base["steps_H_test_exact"]
    )
    # dropping a direction loses the D_P optimum: loss_P_kept > 1, so Definition 3.1 fails
    proj = np.eye(6)
    proj[0, 0] = 0.0
    lossy = evaluate.score(proj, *train, **test)
    assert lossy["loss_P_kept"] > 1.01 and not lossy["def31"]
    # scaling one input column by a large factor makes both tasks worse conditioned: (ii) > 1
    big = np.diag([1e3, 1, 1, 1, 1, 1.0])
    scaled = evaluate.score(big, *train, **test)
    assert scaled["ii"] > 1 and not scaled["def31"] and scaled["slower_than_identity"]
    # the flag uses the training rows when no held-out rows are given, whose columns are NaN
    no_test = evaluate.score(big, *train)
    assert math.isnan(no_test["steps_H_test_exact"]) and no_test["slower_than_identity"]
    # the frontier member with (ii) = 1 keeps the D_P optimum: Definition 3.1 holds iff (i) > 1
    KH = linalg.gram(train[2])
    good = evaluate.score(
        optimal.frontier_theta(KP, KH, linalg.condition_number(KP)), *train, **test
    )
    assert good["ii"] == pytest.approx(1, rel=1e-8) and good[
        "loss_P_kept"
    ] == pytest.approx(1, rel=1e-8)
    assert good["def31"] == (good["i"] > 1)


def test_works_on_torch_float32_input_and_non_square_theta():
    train, _ = _split_problem(7)
    t32 = [torch.as_tensor(a, dtype=torch.float32) for a in train]
    theta = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    row = evaluate.score(theta, *t32)
    assert math.isnan(row["theta_dist"]) and row["steps_H_train_exact"] >= 1


def test_target_P_moves_only_the_D_P_columns_and_defaults_to_target():
    train, test = _split_problem(5)
    XP, yP = train[:2]
    theta = np.random.default_rng(2).standard_normal((6, 6))
    kw = dict(**test, target=1e-3, max_steps=500)
    base = evaluate.score(theta, *train, **kw)
    assert evaluate.score(theta, *train, target_P=1e-3, **kw) == base
    loose = evaluate.score(theta, *train, target_P=0.3, **kw)
    for split, attacker in itertools.product(("train", "test"), ("exact", "fixed")):
        assert (
            loose[f"steps_H_{split}_{attacker}"] == base[f"steps_H_{split}_{attacker}"]
        )
    want = evaluate.attack_steps(XP @ theta, yP, target=0.3, max_steps=500)
    assert loose["steps_P_train_exact"] == want["exact"] < base["steps_P_train_exact"]
    assert loose["steps_P_train_fixed"] == want["fixed"]


def test_bad_input_errors():
    train, test = _split_problem(8)
    XP, yP, XH, yH = train
    th = np.eye(6)
    with pytest.raises(ValueError, match="yP must have 80"):
        evaluate.score(th, XP, yP[:-1], XH, yH)
    with pytest.raises(
        ValueError, match=r"XH must have 6 columns \(the input dimension of XP\)"
    ):
        evaluate.score(th, XP, yP, XH[:, :5], yH)
    bad_test = dict(test, XH_test=test["XH_test"][:, :5])
    with pytest.raises(ValueError, match="XH_test must have 6 columns"):
        evaluate.score(th, *train, **bad_test)
    with pytest.raises(ValueError, match="theta must have 6 rows"):
        evaluate.score(np.eye(5), *train)
    with pytest.raises(ValueError, match="theta_ref must have 6 rows"):
        evaluate.score(th, *train, theta_ref=np.eye(5))
    with pytest.raises(ValueError, match="all four"):
        evaluate.score(th, *train, XP_test=test["XP_test"])
    with pytest.raises(ValueError, match="target"):
        evaluate.score(th, *train, target=0.0)
    with pytest.raises(ValueError, match="target"):
        evaluate.score(th, *train, target=1.5)
    with pytest.raises(ValueError, match="target_P must be <= 1"):
        evaluate.score(th, *train, target_P=2.0)
    with pytest.raises(TypeError, match="max_steps"):
        evaluate.score(th, *train, max_steps=10.0)
    with pytest.raises(ValueError, match="convention"):
        evaluate.score(th, *train, convention="ridge")
    with pytest.raises(ValueError, match="fixed_grid"):
        evaluate.attack_steps(XP, yP, fixed_grid=[0.5, 2.0])
    with pytest.raises(ValueError, match="fixed_grid"):
        evaluate.attack_steps(XP, yP, fixed_grid=[])
    with pytest.raises(TypeError, match="fixed_grid"):
        evaluate.attack_steps(XP, yP, fixed_grid="1")
    with pytest.raises(ValueError, match="NaN"):
        evaluate.score(th * np.nan, *train)
    with pytest.raises(TypeError, match="mapping"):
        evaluate.score_table([th], *train)
    with pytest.raises(TypeError, match="method names"):
        evaluate.score_table({1: th}, *train)


def _direct_curve(F, y, steps, eta=None):
    """Relative suboptimality of gradient descent from w = 0, in the original coordinates."""
    A, b = F.T @ F, F.T @ y
    w_star = np.linalg.lstsq(F, y, rcond=None)[0]
    L = lambda w: 0.5 * np.sum((F @ w - y) ** 2)
    L_star, w = L(w_star), np.zeros(F.shape[1])
    out = [1.0]
    for _ in range(steps):
        g = A @ w - b
        curv = g @ A @ g
        if eta is None and curv <= 0:  # at the optimum: nothing left to do
            out.append(out[-1])
            continue
        w = w - (eta if eta is not None else (g @ g) / curv) * g
        out.append((L(w) - L_star) / (L(np.zeros_like(w)) - L_star))
    return np.array(out)


def test_attack_curve_matches_direct_descent_and_the_step_count():
    rng = np.random.default_rng(9)
    for _ in range(15):
        X, y = _data(rng, 60, int(rng.integers(2, 9)), 1.0)
        lam_max = np.linalg.eigvalsh(X.T @ X).max()
        exact = evaluate.attack_curve(X, y, steps=50)
        assert exact[0] == 1.0 and np.all(np.diff(exact) <= 1e-12)
        np.testing.assert_allclose(exact, _direct_curve(X, y, 50), atol=1e-9)
        fixed = evaluate.attack_curve(X, y, steps=50, step=1.5)
        np.testing.assert_allclose(
            fixed, _direct_curve(X, y, 50, eta=1.5 / lam_max), atol=1e-9
        )
        # a target read off the curve at N (plus rounding) is reached in exactly N steps
        for N in (1, 3, 5):
            target = float(exact[N]) * (1 + 1e-9)
            if 1e-12 < target < 1.0 and exact[N - 1] > target:
                got = evaluate.attack_steps(X, y, target=target, max_steps=50)["exact"]
                assert got == N, (got, N)


def test_error_spectrum_weights_give_the_fixed_step_curve():
    rng = np.random.default_rng(10)
    for _ in range(10):
        X, y = _data(rng, 40, 5, 1.5)
        spec = evaluate.error_spectrum(X, y)
        assert len(spec) == 5 and math.isclose(spec.weight.sum(), 1.0, rel_tol=1e-12)
        assert spec.nu.iloc[0] == 1.0 and np.all(np.diff(spec.nu) <= 0)
        for c in (0.5, 1.0, 1.9):
            t = np.arange(30)
            closed = (
                (1 - c * spec.nu.to_numpy()[None]) ** (2 * t[:, None])
            ) @ spec.weight
            curve = evaluate.attack_curve(X, y, steps=29, step=c)
            np.testing.assert_allclose(closed, curve, rtol=1e-10, atol=1e-14)
    # y orthogonal to the range of F: no error to remove, all weights 0
    F = np.vstack([np.eye(3), np.zeros((2, 3))])
    y = np.array([0.0, 0, 0, 1, 1])
    assert evaluate.error_spectrum(F, y).weight.sum() == 0.0
    assert np.all(evaluate.attack_curve(F, y, steps=3) == 0.0)


def test_curve_and_spectrum_bad_input():
    X, y = _data(np.random.default_rng(11), 20, 3, 0.5)
    with pytest.raises(ValueError, match="step must be < 2"):
        evaluate.attack_curve(X, y, step=2.0)
    with pytest.raises(ValueError, match="step"):
        evaluate.attack_curve(X, y, step=0.0)
    with pytest.raises(TypeError, match="steps"):
        evaluate.attack_curve(X, y, steps=2.5)
    with pytest.raises(ValueError, match="y must have 20"):
        evaluate.attack_curve(X, y[:-1])
    with pytest.raises(ValueError, match="y must have 20"):
        evaluate.error_spectrum(X, y[:-1])


def test_identity_targets_are_what_the_identity_reaches_in_n_steps_on_the_scored_rows():
    rng = np.random.default_rng(11)
    XP, XH = _data(rng, 50, 6, 1.0)[0], _data(rng, 50, 6, 2.0)[0]
    yP, yH = XP @ rng.standard_normal(6), XH @ rng.standard_normal(6)
    held = dict(
        XP_test=XP[:30] * 1.1, yP_test=yP[:30], XH_test=XH[:30] * 0.9, yH_test=yH[:30]
    )
    got = evaluate.identity_targets(XP, yP, XH, yH, **held, steps=7)
    assert got == dict(
        target=float(evaluate.attack_curve(held["XH_test"], yH[:30], steps=7)[7]),
        target_P=float(evaluate.attack_curve(held["XP_test"], yP[:30], steps=7)[7]),
    )
    train = evaluate.identity_targets(XP, yP, XH, yH, steps=7)
    assert train["target"] == float(evaluate.attack_curve(XH, yH, steps=7)[7])
    assert train != got  # the held-out rows, not the training rows, when given
    row = evaluate.score(np.eye(6), XP, yP, XH, yH, **held, **got, max_steps=100)
    assert 1 <= row["steps_H_test_exact"] <= 7 and 1 <= row["steps_P_test_exact"] <= 7
    with pytest.raises(ValueError, match="steps"):
        evaluate.identity_targets(XP, yP, XH, yH, steps=0)
    with pytest.raises(ValueError, match="all four"):
        evaluate.identity_targets(XP, yP, XH, yH, XP_test=XP)


def test_compressed_rows_pose_the_same_probe_and_score_the_same():
    rng = np.random.default_rng(12)
    for case in range(6):
        n, D = 200 + 37 * case, 5 + case
        XP, XH = _data(rng, n, D, 1.0)[0], _data(rng, n + 11, D, 2.5)[0]
        yP = XP @ rng.standard_normal(D) + 0.3 * rng.standard_normal(n)
        yH = np.sign(rng.standard_normal(n + 11))
        tP, tH = evaluate.compress(XP, yP), evaluate.compress(XH, yH)
        assert tP[0].shape == (D + 1, D) and tH[1].shape == (D + 1,)
        X, y = torch.from_numpy(XP), torch.from_numpy(yP)
        torch.testing.assert_close(tP[0].T @ tP[0], X.T @ X, rtol=1e-10, atol=1e-9)
        torch.testing.assert_close(tP[0].T @ tP[1], X.T @ y, rtol=1e-10, atol=1e-9)
        assert float(tP[1] @ tP[1]) == pytest.approx(float(y @ y), rel=1e-12)
        # a square θ and a thin one (D × (D − 2), rank-deficient features)
        for theta in (rng.standard_normal((D, D)), rng.standard_normal((D, D - 2))):
            full = dict(XP=XP, yP=yP, XH=XH, yH=yH)
            small = dict(XP=tP[0], yP=tP[1], XH=tH[0], yH=tH[1])
            goal = evaluate.identity_targets(**full, steps=5)
            assert evaluate.identity_targets(**small, steps=5) == pytest.approx(goal)
            a = evaluate.score(
                theta, **full, **goal, theta_ref=np.eye(D)[:, : theta.shape[1]]
            )
            b = evaluate.score(
                theta, **small, **goal, theta_ref=np.eye(D)[:, : theta.shape[1]]
            )
            assert a.keys() == b.keys()
            for k, v in a.items():
                assert b[k] == pytest.approx(v, rel=1e-8, nan_ok=True), k
    few = rng.standard_normal((4, 6))
    X, y = evaluate.compress(few, np.ones(4))  # n ≤ D: nothing to compress
    assert X.shape == (4, 6) and torch.equal(X, torch.from_numpy(few))
    with pytest.raises(ValueError, match="y must have 4"):
        evaluate.compress(few, np.ones(5))
    with pytest.raises(TypeError, match="X must be"):
        evaluate.compress("rows", np.ones(4))


def test_steps_text_marks_the_budget_and_keeps_measured_counts():
    assert evaluate.steps_text(0, 3000) == "0"
    assert evaluate.steps_text(np.int64(57), 3000) == "57"
    assert evaluate.steps_text(57.0, 3000) == "57"  # pandas holds counts as floats
    assert evaluate.steps_text(3000, 3000) == "3000"
    assert evaluate.steps_text(3001, 3000) == ">3000"
    # what attack_steps returns for an unreachable target reads as a miss
    X, y = _data(np.random.default_rng(0), 60, 8, 3.0)
    got = evaluate.attack_steps(X, y, target=1e-12, max_steps=5)
    assert got["exact"] == 6 and evaluate.steps_text(got["exact"], 5) == ">5"


def test_ratio_text_marks_each_censored_case():
    assert evaluate.ratio_text(30, 10, 3000) == "3"
    assert evaluate.ratio_text(3001, 10, 3000) == "≥300"
    assert evaluate.ratio_text(3001, 10, 3000, words=True) == "at least 300"
    assert evaluate.ratio_text(10, 3001, 3000) == "≤0.00333"
    assert evaluate.ratio_text(10, 3001, 3000, words=True) == "at most 0.00333"
    assert evaluate.ratio_text(3001, 3001, 3000) == "–"
    assert evaluate.ratio_text(3001, 3001, 3000, words=True) == "not determined"
    # several runs: the median, a bound exactly when a middle count is censored
    assert evaluate.ratio_text([10, 20, 30, 3001], 10, 3000) == "2.5"
    assert evaluate.ratio_text([10, 20, 3001, 3001], 10, 3000) == "≥151"
    assert evaluate.ratio_text([10, 3001, 3001], 10, 3000) == "≥300"
    assert evaluate.ratio_text([10, 20, 3001], 10, 3000) == "2"


def test_ratio_text_is_exact_when_unmarked_and_a_lower_bound_when_marked():
    """Replace every censored count by any true count past the budget: an unmarked median
    ratio does not move, and a "≥" one never exceeds the true median ratio."""
    rng = np.random.default_rng(1)
    M = 100
    marked = unmarked = 0
    for _ in range(400):
        n = int(rng.integers(1, 8))
        counts = rng.integers(1, M + 1, n)
        counts[rng.random(n) < rng.random()] = M + 1
        base = int(rng.integers(1, M + 1))
        text = evaluate.ratio_text(counts, base, M)
        true = np.where(counts > M, rng.integers(M + 1, 50 * M, n), counts)
        true_ratio = np.median(true / base)
        if text.startswith("≥"):
            marked += 1
            assert float(text[1:]) <= true_ratio * (1 + 5e-3)
        else:
            unmarked += 1
            assert float(text) == pytest.approx(true_ratio, rel=5e-3)
            assert text == evaluate.ratio_text(np.minimum(counts, M + 1), base, M)
    assert marked > 50 and unmarked > 50  # both cases exercised


def test_count_texts_bad_input():
    with pytest.raises(ValueError, match=r"steps must hold step counts .* \[0, 3001\]"):
        evaluate.steps_text(3002, 3000)
    for bad in (-1, 2.5, math.nan, math.inf):
        with pytest.raises(ValueError, match="steps"):
            evaluate.steps_text(bad, 3000)
    with pytest.raises(TypeError, match="steps"):
        evaluate.steps_text("12", 3000)
    with pytest.raises(TypeError, match="steps"):
        evaluate.steps_text(True, 3000)
    with pytest.raises(ValueError, match="steps"):
        evaluate.steps_text([1, 2], 3000)  # one count only
    with pytest.raises(TypeError, match="max_steps"):
        evaluate.steps_text(5, 3000.0)
    with pytest.raises(ValueError, match="max_steps"):
        evaluate.ratio_text(5, 5, 0)
    with pytest.raises(ValueError, match="base must be >= 1"):
        evaluate.ratio_text(5, 0, 3000)
    with pytest.raises(ValueError, match="base"):
        evaluate.ratio_text(5, [5, 6], 3000)
    with pytest.raises(ValueError, match="non-empty"):
        evaluate.ratio_text([], 5, 3000)
    with pytest.raises(ValueError, match="1-D"):
        evaluate.ratio_text(np.ones((2, 2)), 5, 3000)
    with pytest.raises(TypeError, match="words"):
        evaluate.ratio_text(5, 5, 3000, words=1)


def test_median_text_marks_a_median_that_a_censored_value_can_move():
    assert (
        evaluate.median_text([1.0, 2.0, 30.0], lower=np.array([0, 0, 1], bool)) == "2"
    )
    assert (
        evaluate.median_text([1.0, 30.0, 30.0], lower=np.array([0, 1, 1], bool))
        == "≥30"
    )
    assert (
        evaluate.median_text(
            [1.0, 30.0, 30.0], lower=np.array([0, 1, 1], bool), words=True
        )
        == "at least 30"
    )
    # even n: the mean of the two middle values, moved by a bound at either
    assert (
        evaluate.median_text([1.0, 2.0, 3.0, 30.0], lower=np.array([0, 0, 0, 1], bool))
        == "2.5"
    )
    assert (
        evaluate.median_text([1.0, 2.0, 30.0, 30.0], lower=np.array([0, 0, 1, 1], bool))
        == "≥16"
    )
    assert evaluate.median_text([0.1, 2.0, 3.0], upper=np.array([1, 0, 0], bool)) == "2"
    assert (
        evaluate.median_text([0.1, 0.1, 3.0], upper=np.array([1, 1, 0], bool)) == "≤0.1"
    )
    both = dict(lower=np.array([1, 0], bool), upper=np.array([0, 1], bool))
    assert evaluate.median_text([1.0, 2.0], **both) == "–"
    assert evaluate.median_text([1.0, 2.0], **both, words=True) == "not determined"
    # bounds at both ends, pointing away from the middle: exact
    ends = dict(lower=np.array([0, 0, 1], bool), upper=np.array([1, 0, 0], bool))
    assert evaluate.median_text([1.0, 1.0, 1.0], **ends) == "1"
    # a lower bound tied with the middle value but sorted above it cannot move it
    assert evaluate.median_text([1.0, 2.0, 2.0], lower=np.array([0, 1, 0], bool)) == "2"
    # one value: ratio_text's rule
    assert evaluate.median_text([300.1], lower=np.array([True])) == evaluate.ratio_text(
        3001, 10, 3000
    )
    assert evaluate.median_text([2.0]) == "2"


def test_median_text_is_exact_when_unmarked_and_a_bound_when_marked():
    """Move every bound by any amount in its allowed direction: an unmarked median does not
    move, a "≥" one never exceeds the true median, a "≤" one is never below it."""
    rng = np.random.default_rng(2)
    seen = {"": 0, "≥": 0, "≤": 0, "–": 0}
    for _ in range(600):
        n = int(rng.integers(1, 9))
        v = rng.choice([0.5, 1.0, 2.0, 3.0, rng.random() * 4], n)  # ties on purpose
        kind = rng.integers(0, 3, n) * (rng.random(n) < rng.random())
        lower, upper = kind == 1, kind == 2
        text = evaluate.median_text(v, lower=lower, upper=upper)
        true = v.copy()
        true[lower] += rng.exponential(3.0, lower.sum())
        true[upper] *= rng.random(upper.sum())
        tm = np.median(true)
        mark = text[0] if text[0] in "≥≤–" else ""
        seen[mark] += 1
        if mark == "":
            assert abs(float(text) - tm) <= 5e-3 * abs(tm)
        elif mark == "≥":
            assert float(text[1:]) <= tm * (1 + 5e-3)
        elif mark == "≤":
            assert float(text[1:]) >= tm * (1 - 5e-3)
    assert min(seen.values()) > 10, seen  # every case was exercised


def test_median_text_rejects_what_is_not_a_masked_sample():
    with pytest.raises(ValueError, match="values"):
        evaluate.median_text([])
    with pytest.raises(ValueError, match="finite"):
        evaluate.median_text([1.0, float("nan")])
    with pytest.raises(TypeError, match="values"):
        evaluate.median_text("12")
    with pytest.raises(TypeError, match="lower"):
        evaluate.median_text([1.0, 2.0], lower=[0, 1])
    with pytest.raises(ValueError, match="upper"):
        evaluate.median_text([1.0, 2.0], upper=np.array([True]))
    with pytest.raises(ValueError, match="both"):
        evaluate.median_text([1.0], lower=np.array([True]), upper=np.array([True]))
