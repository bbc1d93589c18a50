"""immulib.protocol: one budget, one grid size and one stated criterion for every method."""

import math

import numpy as np
import pytest
import torch

from immulib import linear, metrics, protocol


def test_every_method_gets_the_same_number_of_settings():
    sizes = {entry: len(grid) for entry, grid in protocol.GRIDS.items()}
    assert len(set(sizes.values())) == 1, sizes
    assert {protocol.method_of(e) for e in protocol.GRIDS} == set(linear.METHODS)


def test_criterion_prefers_feasible_settings_then_larger_i():
    rows = [
        dict(i=50.0, ii=2.0),
        dict(i=3.0, ii=0.9),
        dict(i=2.0, ii=0.1),
        dict(i=math.nan, ii=1.0),
    ]
    assert (
        protocol.select(rows) == rows[1]
    )  # feasible with the largest (i), not the largest RIR
    # no feasible setting: the largest RIR (25 against 20), not the largest (i)
    assert protocol.select([dict(i=50.0, ii=2.0), dict(i=60.0, ii=3.0)])["i"] == 50.0
    with pytest.raises(ValueError, match="rows must be a non-empty list"):
        protocol.select([])


def test_tune_keeps_diverged_settings_out_and_run_seeds_matches_immunize():
    rng = np.random.default_rng(0)
    XP = rng.standard_normal((40, 6)) @ np.diag(np.linspace(1, 3, 6))
    XH = rng.standard_normal((40, 6)) @ np.diag(np.linspace(1, 5, 6))
    yP = XP @ rng.standard_normal(6)
    prob = linear.Problem.from_data(XP, yP, XH)

    def score(theta):
        r = metrics.rir(XP, XH, theta)
        return dict(i=r.i, ii=r.ii)

    grid = [
        dict(policy="paper", eta=1e-3, lam_P=1e6, lam_H=0.0),
        dict(policy="paper", eta=1e-3),
    ]
    knobs, rows = protocol.tune(prob, "ours_paper", score, steps=30, grid=grid)
    assert rows[0]["diverged"] and not rows[1]["diverged"] and knobs == grid[1]
    theta, _ = protocol.run_seeds(
        prob, "constrained", {}, seeds=[0, 1], init="linear_default", steps=20
    )
    for j, seed in enumerate((0, 1)):
        ref = linear.immunize(
            XP,
            yP,
            XH,
            method="constrained",
            steps=20,
            seed=seed,
            init="linear_default",
            progress=False,
        )
        assert torch.allclose(theta[j], ref.theta, rtol=1e-9, atol=1e-12)


def test_widen_moves_every_knob_at_an_end_one_geometric_step_and_respects_limits():
    grid = [dict(policy="paper", eta=e) for e in (0.001, 0.005, 0.02, 0.05)]
    assert protocol.widen(grid, grid[-1]) == dict(policy="paper", eta=0.125)
    assert protocol.widen(grid, grid[0]) == dict(policy="paper", eta=0.0002)
    assert protocol.widen(grid, grid[1]) is None and not protocol.at_end(grid, grid[1])
    assert protocol.at_end(grid, grid[-1]) and protocol.at_end(grid, grid[0])
    # rho must stay below 1: 0.9 · 0.9/0.7 would leave (0, 1), so halfway to 1
    rho = [dict(rho=r) for r in (0.3, 0.5, 0.7, 0.9)]
    assert protocol.widen(rho, rho[-1]) == dict(rho=0.95)
    # two knobs: each one at an end moves, the other keeps its value
    two = [dict(eta=e, mu=m) for e in (0.003, 0.03) for m in (0.1, 1.0)]
    assert protocol.widen(two, dict(eta=0.03, mu=1.0)) == dict(eta=0.3, mu=10.0)
    three = two + [dict(eta=0.3, mu=1.0)]
    assert protocol.widen(three, dict(eta=0.03, mu=0.1)) == dict(eta=0.03, mu=0.01)


def test_search_widens_while_the_kept_setting_is_at_an_end_and_stops_on_divergence():
    grid = [dict(eta=e) for e in (0.01, 0.1, 1.0)]
    calls = []

    def rising(
        knobs,
    ):  # feasible everywhere, (i) grows with eta: always the largest kept
        calls.append(knobs["eta"])
        return dict(i=1 + knobs["eta"], ii=0.5)

    knobs, rows = protocol.search(grid, rising, widen_times=2)
    assert calls == [0.01, 0.1, 1.0, 10.0, 100.0] and knobs == dict(eta=100.0)
    assert [r["widened"] for r in rows] == [False] * 3 + [True] * 2
    assert protocol.stopped(rows, knobs) == "widened 2 times, still at an end"
    calls.clear()
    assert protocol.search(grid, rising, widen_times=0)[0] == dict(eta=1.0)
    assert calls == [0.01, 0.1, 1.0]

    def peaked(knobs):  # the best setting is inside the grid: nothing is added
        return dict(i=1 / (1 + abs(math.log10(knobs["eta"]) + 1)), ii=0.5)

    knobs, rows = protocol.search(grid, peaked)
    assert knobs == dict(eta=0.1) and len(rows) == 3
    assert protocol.stopped(rows, knobs) == "inside the values tried"

    def blows_up(knobs):  # the widened setting diverges: the previous end stays kept
        if knobs["eta"] > 1:
            raise FloatingPointError("diverged")
        return rising(knobs)

    knobs, rows = protocol.search(grid, blows_up)
    assert knobs == dict(eta=1.0) and rows[-1]["diverged"] and rows[-1]["widened"]
    assert protocol.stopped(rows, knobs) == "next setting diverged"
    # a grid setting beyond the kept one diverged: search adds nothing, for the same reason
    knobs, rows = protocol.search(grid + [dict(eta=3.0)], blows_up)
    assert (
        knobs == dict(eta=1.0)
        and len(rows) == 4
        and not any(r["widened"] for r in rows)
    )
    assert protocol.stopped(rows, knobs) == "next setting diverged"
    # two knobs: one at an end of the stable settings, beyond it only a diverged one
    two = [
        dict(eta=e, mu=m, diverged=False, widened=False) for e in (1, 2) for m in (1, 2)
    ]
    rows = [
        dict(
            knobs=dict(eta=r["eta"], mu=r["mu"]),
            **{k: r[k] for k in ("diverged", "widened")},
        )
        for r in two
    ]
    rows.append(
        dict(knobs=dict(eta=4, mu=4), diverged=True, widened=True)
    )  # widen((2, 2))
    assert protocol.stopped(rows, dict(eta=2, mu=2)) == "next setting diverged"
    assert (
        protocol.stopped(rows, dict(eta=1, mu=1)) == "widened 1 time, still at an end"
    )
    with pytest.raises(FloatingPointError, match="every setting"):
        protocol.search(grid, lambda k: blows_up(dict(eta=10.0)))
    with pytest.raises(ValueError, match="widen_times"):
        protocol.search(grid, rising, widen_times=-1)


def test_select_and_stopped_name_a_row_without_their_keys():
    with pytest.raises(ValueError, match=r"rows\[1\].*missing ii"):
        protocol.select([dict(i=2.0, ii=0.5), dict(i=3.0)])
    with pytest.raises(ValueError, match=r"rows\[0\].*missing diverged, widened"):
        protocol.stopped([dict(knobs=dict(eta=1.0))], dict(eta=1.0))
    with pytest.raises(TypeError, match="knobs must be a dict"):
        protocol.stopped(
            [dict(knobs=dict(eta=1.0), diverged=False, widened=False)], 1.0
        )
