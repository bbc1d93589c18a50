"""The tools' shared attacker-side columns of an MNIST pair's θ (``tools.mnist_tune``, ``tools.mnist_sweep``)."""

from __future__ import annotations

import torch

from immulib import evaluate, pairs
from immulib.data import ImageSet

#: the columns :class:`PairAttacker` adds to a sweep's row
COLUMNS = (
    [*evaluate.STEP_COLUMNS]
    + [c + "_id" for c in evaluate.STEP_COLUMNS]
    + ["def31", "slower_than_identity", "loss_P_kept", "dist", "target_H", "target_P"]
)


class PairAttacker:
    """Scores a pair's θ by :func:`immulib.evaluate.score` on the pair's training images and on
    **all MNIST test images** of its two digits (:func:`immulib.pairs.splits`, compressed to
    D + 1 rows per task), beside the identity's counts on the same rows (``*_id``), and ``dist`` = ‖θ − I‖_F. The targets follow
    chapter 05's rule: per pair and task, the relative suboptimality that the identity's
    line-search attacker reaches on the test images in ``ref_steps`` steps. The rows, targets
    and the identity's row are computed once per (pair, seed).
    """

    def __init__(
        self,
        train: ImageSet,
        test: ImageSet,
        pixels,
        *,
        ref_steps: int = 100,
        max_steps: int = 3000,
    ):
        self.train, self.test, self.pixels = train, test, pixels
        self.ref_steps, self.max_steps = ref_steps, max_steps
        self._cache: dict = {}

    def __call__(self, ab: tuple[int, int], seed: int, theta) -> dict:
        """The :data:`COLUMNS` of θ on the pair ``ab`` = (a, b) drawn with ``seed``."""
        if (ab, seed) not in self._cache:
            rows = pairs.splits(
                self.train, self.test, *ab, pixels=self.pixels, seed=seed, compress=True
            )
            goal = evaluate.identity_targets(**rows, steps=self.ref_steps)
            D = rows["XP"].shape[1]
            ident = evaluate.score(
                torch.eye(D, dtype=torch.float64),
                **rows,
                **goal,
                max_steps=self.max_steps,
            )
            self._cache[(ab, seed)] = rows, goal, ident
        rows, goal, ident = self._cache[(ab, seed)]
        r = evaluate.score(theta, **rows, **goal, max_steps=self.max_steps)
        out = {c: r[c] for c in evaluate.STEP_COLUMNS}
        out.update({c + "_id": ident[c] for c in evaluate.STEP_COLUMNS})
        for c in ("def31", "slower_than_identity", "loss_P_kept"):
            out[c] = r[c]
        return dict(
            out,
            dist=r["theta_dist"],
            target_H=goal["target"],
            target_P=goal["target_P"],
        )
