"""immulib.deep_objective and immulib.deep_train: the objectives, λ balancing, the loop, pre-training."""

import copy
import math

import pandas as pd
import pytest
import torch
from deep_helpers import TINY, param_dict, separable_data, tiny, tiny_data

from immulib import deep_eval, deep_objective, deep_train, image_data, linalg, networks
from immulib.regularizers import r_ill, r_well
from immulib.results import ImmunizationResult

pytestmark = pytest.mark.filterwarnings(
    "ignore::immulib.regularizers.NonUniqueSingularValueWarning"
)


@pytest.fixture(scope="module", params=list(TINY))
def model(request):
    return tiny(request.param).eval()


def test_immunization_loss_matches_its_formula():
    g = torch.Generator().manual_seed(0)
    fp, fh = (
        torch.randn(10, 6, generator=g, dtype=torch.float64),
        torch.randn(10, 6, generator=g, dtype=torch.float64),
    )
    logits, y = torch.randn(10, 3, generator=g), torch.randint(0, 3, (10,), generator=g)
    task = torch.nn.functional.cross_entropy(logits, y)
    Hp, Hh = fp.T @ fp, fh.T @ fh
    loss = lambda m, **kw: deep_objective.immunization_loss(
        fp, logits, y, fh, method=m, lam_P=0.5, lam_H=2.0, **kw
    )
    assert float(loss("ours")[0]) == pytest.approx(
        float(task + 0.5 * r_well(Hp) + 2.0 * r_ill(Hh)), rel=1e-12
    )
    assert float(loss("r_ill_only")[0]) == pytest.approx(
        float(task + 2.0 * r_ill(Hh)), rel=1e-12
    )
    kappa, parts = loss("opt_kappa")
    assert parts["log_kappa_h"] == pytest.approx(
        math.log(linalg.condition_number(Hh)), rel=1e-10
    )
    assert float(kappa) == pytest.approx(
        float(task) + 2.0 / parts["log_kappa_h"] + 0.5 * parts["log_kappa_p"], rel=1e-10
    )
    log_kp = math.log(linalg.condition_number(Hp))
    feasible, parts = loss(
        "constrained", log_kappa_p_ref=log_kp + 1.0
    )  # κ_P below θ0's: no penalty
    assert parts["violation"] == 0 and float(feasible) == pytest.approx(
        float(task + 2.0 * r_ill(Hh)), rel=1e-12
    )
    violated, parts = loss("constrained", log_kappa_p_ref=log_kp - 0.25)
    assert parts["violation"] == pytest.approx(0.25, rel=1e-9)
    assert float(violated) == pytest.approx(
        float(task) + 0.5 * 0.25, rel=1e-9
    )  # switching: R_ill waits
    with pytest.raises(ValueError, match="log_kappa_p_ref"):
        loss("constrained")
    with pytest.raises(ValueError, match="imma"):
        loss("imma")


def test_regularizer_fns_swap_the_implementation():
    g = torch.Generator().manual_seed(1)
    fp, fh = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    logits, y = torch.randn(8, 3, generator=g), torch.randint(0, 3, (8,), generator=g)
    calls = []
    ill = lambda H, k=None: calls.append("ill") or torch.zeros((), dtype=torch.float64)
    well = lambda H: calls.append("well") or torch.ones((), dtype=torch.float64)
    loss, _ = deep_objective.immunization_loss(
        fp, logits, y, fh, lam_P=3.0, lam_H=1.0, regularizer_fns=(ill, well)
    )
    assert calls == ["ill", "well"]
    assert float(loss) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, y)) + 3.0
    )


def test_immunize_model_changes_only_block_and_head_and_leaves_theta0_alone(model):
    before = param_dict(model)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    lp, lh = deep_objective.balance_lambdas(
        model, tiny_data(), tiny_data(seed=1), batch_size=8
    )
    res = deep_train.immunize_model(
        model,
        tiny_data(),
        tiny_data(seed=1),
        lam_P=lp,
        lam_H=lh,
        steps=3,
        batch_size=8,
        progress=False,
    )
    assert (
        isinstance(res, ImmunizationResult)
        and res.method == "ours"
        and res.theta is None
    )
    assert (res.lam_P, res.lam_H) == (lp, lh) and isinstance(res.history, pd.DataFrame)
    after = param_dict(res.model)
    trainable = set(networks.trainable_parameter_names(model))
    assert all(
        torch.equal(before[n], p) for n, p in param_dict(model).items()
    )  # θ0 untouched
    for n in before:
        if n not in trainable:
            assert torch.equal(before[n], after[n]), n
    assert any(
        not torch.equal(before[n], after[n])
        for n in networks.trainable_parameter_names(model, train_head=False)
    )
    assert (
        list(res.history.step) == [0, 1, 2]
        and res.history.loss.map(math.isfinite).all()
    )
    assert not any(p.requires_grad for p in res.model.parameters())
    for n, b in res.model.named_buffers():  # BatchNorm statistics frozen
        assert torch.equal(b, buffers[n]), n


@pytest.mark.parametrize("method", deep_objective.METHODS)
def test_every_method_takes_finite_steps_and_reruns_identically(method):
    m = tiny("resnet18")
    lp, lh = deep_objective.balance_lambdas(
        m, tiny_data(), tiny_data(seed=1), method=method, batch_size=8
    )
    assert lp >= 0 and lh > 0 and (lp == 0) == (method in ("r_ill_only", "imma"))
    run = lambda seed: (
        deep_train.immunize_model(
            m,
            tiny_data(),
            tiny_data(seed=1),
            method=method,
            lam_P=lp,
            lam_H=lh,
            steps=2,
            batch_size=8,
            seed=seed,
            # the steps themselves: with its checks the constrained method may return θ0
            check_every=None,
            progress=False,
        ).model
    )
    a, b, c = param_dict(run(0)), param_dict(run(0)), param_dict(run(1))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_constrained_method_records_its_constraint_and_does_no_worse_than_r_ill_only():
    """The constrained method's (ii) is no larger than R_ill Only's (or 1), on a small task."""
    m = tiny("resnet18", num_classes=3).eval()
    dp, dh = separable_data(96), tiny_data(96, seed=3)
    res = {}
    for method in ("r_ill_only", "constrained"):
        lp, lh = deep_objective.balance_lambdas(
            m, dp, dh, method=method, ratio_h=5.0, batch_size=16
        )
        res[method] = deep_train.immunize_model(
            m,
            dp,
            dh,
            method=method,
            lam_P=lp,
            lam_H=lh,
            steps=15,
            eta=0.05,
            batch_size=16,
            max_grad_norm=10.0,
            progress=False,
        )
    hist = res["constrained"].history
    assert (hist.violation >= 0).all() and "log_kappa_p" in hist
    r = {
        k: deep_eval.rir_theta0(m, v.model, dp, dh, n_groups=3, group_size=16)
        for k, v in res.items()
    }
    assert r["constrained"].ii <= max(r["r_ill_only"].ii, 1.0) + 1e-9


def test_divergence_is_caught_at_the_first_nonfinite_loss_naming_eta_and_lambdas():
    m = tiny("resnet18")
    with pytest.raises(FloatingPointError, match=r"eta=1e\+06.*lam_P=1.*lam_H=1e\+10"):
        deep_train.immunize_model(
            m,
            tiny_data(),
            tiny_data(seed=1),
            method="r_ill_only",
            lam_P=1.0,
            lam_H=1e10,
            eta=1e6,
            steps=50,
            batch_size=8,
            progress=False,
        )


def test_inputs_are_checked_before_the_first_step():
    m = tiny("resnet18")
    ok = dict(lam_P=1.0, lam_H=1.0, steps=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="channels"):
        deep_train.immunize_model(m, tiny_data(in_chans=3), tiny_data(), **ok)
    with pytest.raises(ValueError, match="img_size"):
        deep_train.immunize_model(
            tiny("vit_tiny_patch16_224"),
            tiny_data(img_size=24),
            tiny_data(img_size=24),
            **ok,
        )
    with pytest.raises(ValueError, match="classes"):
        deep_train.immunize_model(m, tiny_data(num_classes=5), tiny_data(), **ok)
    with pytest.raises(ValueError, match="labels must be in 0 … 2"):
        image_data.ArrayDataset(torch.zeros(2, 1, 8, 8), torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="device"):
        deep_train.immunize_model(
            m, tiny_data(), tiny_data(), **{**ok, "device": "cuda:7"}
        )


def test_bad_arguments_raise_clear_errors():
    m, d = tiny("resnet18"), tiny_data()
    ok = dict(lam_P=1.0, lam_H=1.0, steps=1, batch_size=8, progress=False)
    for key, value, err in [
        ("method", "bogus", ValueError),
        ("lam_P", -1.0, ValueError),
        ("lam_H", "big", TypeError),
        ("steps", 0, ValueError),
        ("steps", 1.5, TypeError),
        ("batch_size", 1000, ValueError),
        ("eta", 0.0, ValueError),
        ("device", "toaster", ValueError),
        ("progress", 1, TypeError),
    ]:
        with pytest.raises(err, match=key):
            deep_train.immunize_model(m, d, d, **{**ok, key: value})
    with pytest.raises(TypeError, match="model"):
        deep_train.immunize_model("resnet18", d, d, **ok)
    with pytest.raises(TypeError, match="data_h"):
        deep_train.immunize_model(m, d, [1, 2, 3], **ok)


def test_pretrain_reaches_a_separable_task_and_caches_its_weights(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("IMMULIB_CACHE", str(tmp_path))
    train, test = separable_data(240), separable_data(30, seed=1)
    a = tiny("resnet18")
    curve = deep_train.pretrain(
        a, train, test=test, epochs=3, batch_size=16, eta=3e-3, progress=False
    )
    assert list(curve.epoch) == [1, 2, 3] and curve.attrs["cached"] is False
    assert curve.test_accuracy.iloc[-1] == deep_eval.accuracy(a, test) > 0.9
    files = list((tmp_path / "theta0").glob("*.pt"))
    assert len(files) == 1 and not list((tmp_path / "theta0").glob(".*tmp"))
    b = tiny("resnet18")
    again = deep_train.pretrain(
        b, train, test=test, epochs=3, batch_size=16, eta=3e-3, progress=False
    )
    assert again.attrs["cached"] is True and again.equals(curve)
    assert all(
        torch.equal(p, q)
        for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=False)
    )
    c = tiny("resnet18")  # other settings: another file, trained afresh
    assert (
        deep_train.pretrain(
            c, train, epochs=1, batch_size=16, eta=3e-3, progress=False
        ).attrs["cached"]
        is False
    )
    assert len(list((tmp_path / "theta0").glob("*.pt"))) == 2


def test_block_inputs_give_the_same_immunization_as_the_full_forward(model):
    dp, dh = tiny_data(), tiny_data(seed=1)
    kw = dict(lam_P=1e-3, lam_H=1e-2, steps=3, batch_size=8, progress=False)
    full = deep_train.immunize_model(model, dp, dh, **kw)
    fast = deep_train.immunize_model(
        model,
        dp,
        dh,
        block_inputs_p=networks.block_inputs(model, dp),
        block_inputs_h=networks.block_inputs(model, dh),
        **kw,
    )
    assert torch.allclose(
        torch.tensor(full.history.loss), torch.tensor(fast.history.loss), rtol=1e-5
    )
    for (n, a), (_, b) in zip(
        full.model.named_parameters(), fast.model.named_parameters(), strict=False
    ):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), n
    with pytest.raises(ValueError, match="block_inputs_p"):
        deep_train.immunize_model(
            model,
            dp,
            dh,
            block_inputs_p=networks.block_inputs(model, dh),
            block_inputs_h=networks.block_inputs(model, dh),
            **kw,
        )


# ---------------------------------------------------------------------------------------------
# the constrained method holds (ii) ≤ 1 on its evaluation groups (issue 12)

GROUPS = dict(n_groups=3, group_size=16, seed=0)


def _constrained(m, dp, dh, **kw):
    lp, lh = deep_objective.balance_lambdas(
        m, dp, dh, method="constrained", ratio_h=5.0, batch_size=16
    )
    args = dict(
        method="constrained",
        lam_P=lp,
        lam_H=lh,
        steps=12,
        eta=0.05,
        batch_size=16,
        max_grad_norm=10.0,
        constraint_check=GROUPS,
        check_every=4,
        restoration_steps=6,
        progress=False,
    )
    args.update(kw)
    return deep_train.immunize_model(m, dp, dh, **args)


@pytest.fixture(scope="module")
def constrained_task():
    m = tiny("resnet18", num_classes=3).eval()
    return m, separable_data(96), tiny_data(96, seed=3)


def test_the_check_reports_what_rir_theta0_reports(constrained_task):
    m, dp, dh = constrained_task
    im = _constrained(m, dp, dh, check_every=None).model
    zp, zh = networks.block_inputs(m, dp), networks.block_inputs(m, dh)
    for kw in ({}, dict(block_inputs_p=zp, block_inputs_h=zh)):
        check = deep_eval._RIRCheck(m, dp, dh, **GROUPS, **kw)
        r = deep_eval.rir_theta0(m, im, dp, dh, **GROUPS, **kw)
        assert (check.i(im), check.ii(im)) == (r.i, r.ii)  # bit for bit
        assert (check.i(m), check.ii(m)) == (1.0, 1.0)
        assert float(check.log_ii(im)) == pytest.approx(math.log(r.ii), rel=1e-9)


def test_constrained_returns_a_model_with_ii_at_most_one_on_its_groups(
    constrained_task,
):
    m, dp, dh = constrained_task
    res = _constrained(m, dp, dh)
    r = deep_eval.rir_theta0(m, res.model, dp, dh, **GROUPS)
    assert r.ii <= 1.0
    s = res.settings
    assert (s["best_i"], s["best_ii"]) == (
        r.i,
        r.ii,
    )  # what it checked is what is measured
    checks = res.history.dropna(subset=["check_ii"])
    assert list(checks.step) == [3, 7, 11]
    assert (checks.restoration_steps <= 6).all()
    if (
        s["best_step"] >= 0
    ):  # the returned iterate is the feasible check with the largest (i)
        feasible = checks[checks.check_ii <= 1.0]
        assert s["best_step"] == int(feasible.step[feasible.check_i.idxmax()])
        assert r.i == feasible.check_i.max() > 1.0
    else:
        assert (r.i, r.ii) == (1.0, 1.0)


def test_without_its_checks_the_constraint_is_not_held_and_the_checks_repair_it(
    constrained_task,
):
    """The batch-only switching step leaves (ii) > 1; restoration and fallback bring it back."""
    m, dp, dh = constrained_task
    batch_only = _constrained(m, dp, dh, check_every=None)
    assert "check_ii" not in batch_only.history
    assert deep_eval.rir_theta0(m, batch_only.model, dp, dh, **GROUPS).ii > 1.0
    # restoration alone, from the infeasible model: every kept step lowers the measured (ii)
    model = copy.deepcopy(batch_only.model)
    params = [
        p for n, p in model.named_parameters() if n in set(networks.freeze(model))
    ]
    check = deep_eval._RIRCheck(m, dp, dh, **GROUPS)
    before = check.ii(model)
    i, ii, taken, _ = deep_train._restore(model, params, check, 40, 1e-2)
    assert (
        0 < taken <= 40
        and ii < before
        and ii == check.ii(model)
        and i == check.i(model)
    )
    # the fallback alone (no restoration): the best feasible iterate, θ0 at worst
    res = _constrained(m, dp, dh, restoration_steps=0)
    assert deep_eval.rir_theta0(m, res.model, dp, dh, **GROUPS).ii <= 1.0
    assert (res.history.dropna(subset=["check_ii"]).restoration_steps == 0).all()


def test_constrained_check_arguments_are_validated(constrained_task):
    m, dp, dh = constrained_task
    with pytest.raises(ValueError, match="constraint_check"):
        _constrained(m, dp, dh, constraint_check=dict(groups=3))
    with pytest.raises(ValueError, match="check_every"):
        _constrained(m, dp, dh, check_every=0)
    with pytest.raises(ValueError, match="group_size"):
        _constrained(m, dp, dh, constraint_check=dict(group_size=500))
