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
    with pytest.raises(ValueError, match="rows"):
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
