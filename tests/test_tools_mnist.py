"""tools.attacker and tools.mnist_sweep --score: the attacker-side columns of a sweep (synthetic digits)."""

import numpy as np
import pandas as pd
import pytest
import torch

from immulib import data, evaluate
from immulib import pairs as mp
from tools import attacker, mnist_sweep

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def test_digits(digits):
    return data.ImageSet(digits.images[::2], digits.labels[::2])


def test_pair_attacker_is_score_on_the_pairs_rows_beside_the_identity(
    digits, test_digits
):
    grams = mp.digit_grams(digits, "well_posed")
    att = attacker.PairAttacker(
        digits, test_digits, grams.pixels, ref_steps=20, max_steps=300
    )
    D = len(grams.pixels)
    eye = torch.eye(D, dtype=torch.float64)
    row = att((4, 7), 1, eye)
    assert list(row) == list(attacker.COLUMNS)
    for c in evaluate.STEP_COLUMNS:  # the identity is its own reference
        assert row[c] == row[c + "_id"], c
    # the targets are what the identity's line-search attacker reaches in ref_steps steps
    assert 1 <= row["steps_H_test_exact"] <= 20 and 1 <= row["steps_P_test_exact"] <= 20
    assert row["dist"] == 0 and not row["slower_than_identity"]
    theta = torch.from_numpy(np.random.default_rng(5).standard_normal((D, D)))
    rows = mp.splits(
        digits, test_digits, 4, 7, pixels=grams.pixels, seed=1, compress=True
    )
    goal = evaluate.identity_targets(**rows, steps=20)
    want = evaluate.score(theta, **rows, **goal, max_steps=300)
    got = att((4, 7), 1, theta)
    for c in (*evaluate.STEP_COLUMNS, "def31", "slower_than_identity", "loss_P_kept"):
        assert got[c] == want[c], c
    assert got["dist"] == pytest.approx(float(torch.linalg.norm(theta - eye)))
    assert (got["target_H"], got["target_P"]) == (goal["target"], goal["target_P"])
    # another seed draws other training rows: its own cache entry
    other = att((4, 7), 2, theta)
    assert other["steps_H_test_exact_id"] == row["steps_H_test_exact_id"]
    assert len(att._cache) == 2


def test_mnist_sweep_score_adds_the_columns_and_keeps_the_sweep(
    digits, test_digits, tmp_path, monkeypatch
):
    monkeypatch.setattr(
        mnist_sweep.data,
        "load_mnist",
        lambda split="train": digits if split == "train" else test_digits,
    )
    args = ["--entries", "ours", "--pairs", "subset", "--steps", "4"]
    plain, scored = tmp_path / "plain.csv", tmp_path / "scored.csv"
    mnist_sweep.main([*args, "--out", str(plain)])
    mnist_sweep.main(
        [*args, "--score", "--ref-steps", "10", "--max-attack-steps", "200"]
        + ["--out", str(scored)]
    )
    p, s = pd.read_csv(plain), pd.read_csv(scored)
    assert len(s) == len(mp.SUBSET) and not set(attacker.COLUMNS) & set(p.columns)
    assert set(attacker.COLUMNS) <= set(s.columns)
    for c in (
        "i",
        "ii",
        "rir",
        "kappa_P",
        "kappa_H",
    ):  # scoring does not move the sweep
        assert np.array_equal(p[c].to_numpy(), s[c].to_numpy()), c
    assert s[list(evaluate.STEP_COLUMNS)].notna().all().all()
    assert (s.steps_H_test_exact_id <= 10).all() and (s.target_H > 0).all()
    assert (s.dist > 0).all() and (s.max_attack_steps == 200).all()
    # a second entry is added beside the first, which is kept
    mnist_sweep.main(["--entries", "r_well_only", "--pairs", "subset", "--steps", "2"]
                     + ["--out", str(scored)])  # fmt: skip
    both = pd.read_csv(scored)
    assert both.groupby("entry").size().to_dict() == {"ours": 10, "r_well_only": 10}
    assert both[both.entry == "ours"].steps_H_test_exact.notna().all()
