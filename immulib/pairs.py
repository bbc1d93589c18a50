"""The MNIST digit-pair task (paper §5.1, Fig. 2 and Table 2): its features, its Gram matrices,
and the sweep of every method over the 90 ordered pairs, fast enough for a laptop.

For an ordered pair (a, b), a ≠ b, D_P holds the training images of digit a and D_H those of digit
b, balanced in count exactly as :func:`immulib.data.digit_pair` (the authors' code) draws them.
:func:`digit_features` is the one definition of a pair's features (pixels of a setup, scaled by
the authors' :data:`MEAN`/:data:`STD`); every chapter, benchmark and test uses it.

Everything the immunizers need is a function of Gram matrices, so nothing in the loop touches the
images: :func:`digit_grams` computes K_c = X_cᵀX_c and s_c = X_cᵀ1 once per digit, and a pair's K_P
is K_a minus the Gram of the images of a that ``digit_pair`` leaves out. :func:`problem` stacks
pairs into one :class:`immulib.linear.Problem`, and :func:`run_batch`/:func:`sweep` run them through
the same engine as :func:`immulib.immunize` (:func:`immulib.linear.run`), batched along the
leading dimension. The pre-training head is an a-vs-b least-squares classifier, targets +1 on D_P
and −1 on D_H (``sup="a_vs_b"``, this book's choice: the released code trains it on constant
labels), or Algorithm 1's L(D_P) with targets +1 (``sup="P"``). Chapter: {ref}`ch-mnist-pairs`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import evaluate, linear
from ._validate import choice, integer, threads
from ._validate import progress as _progress
from .data import ImageSet
from .linalg import SHIFT

__all__ = [
    "MEAN",
    "SETUPS",
    "STD",
    "SUBSET",
    "DigitGrams",
    "all_pairs",
    "digit_features",
    "digit_grams",
    "pair_indices",
    "pixel_support",
    "problem",
    "run_batch",
    "splits",
    "sweep",
]

MEAN, STD = 0.1307, 0.3081  # MNIST's pixel mean and std (the authors' normalisation)
SETUPS: tuple[str, ...] = ("well_posed", "authors")
#: a stated subset of pairs (one per row of Fig. 2, every digit once as D_P and once as D_H)
SUBSET: tuple[tuple[int, int], ...] = tuple((a, (a + 3) % 10) for a in range(10))
EPS = float(np.finfo(np.float64).eps)


def all_pairs() -> list[tuple[int, int]]:
    """The 90 ordered pairs (a, b), a ≠ b: D_P = digit a, D_H = digit b.

    Chapter: {ref}`ch-mnist-pairs`.
    """
    return [(a, b) for a in range(10) for b in range(10) if a != b]


def pixel_support(
    data: ImageSet, setup: str = "well_posed", *, min_frac: float = 0.01
) -> np.ndarray:
    """Indices of the pixels a setup keeps: all 784 (``"authors"``) or, for ``"well_posed"``, the
    pixels that are nonzero in more than ``min_frac`` of the training images of *every* digit.

    One support for all digits keeps one dimension for all pairs (so pairs batch) and makes every
    per-digit Gram matrix full rank and far from the 10⁻⁶ shift, so the κ conventions agree.

    Chapter: {ref}`ch-mnist-pairs`.
    """
    if not isinstance(data, ImageSet):
        raise TypeError(f"data must be an ImageSet, got {type(data).__name__}")
    if setup not in SETUPS:
        raise ValueError(f"setup must be one of {SETUPS}, got {setup!r}")
    if not (isinstance(min_frac, float) and 0 <= min_frac < 1):
        raise ValueError(f"min_frac must be a float in [0, 1), got {min_frac!r}")
    flat = data.images.reshape(len(data.images), -1)
    if setup == "authors":
        return np.arange(flat.shape[1])
    active = np.stack([(flat[data.labels == c] > 0).mean(0) for c in range(10)])
    return np.flatnonzero((active > min_frac).all(0))


def digit_features(
    images: np.ndarray, pixels: np.ndarray | None = None, device="cpu"
) -> torch.Tensor:
    """The features of the digit-pair task: the chosen ``pixels`` (default all 784) of 28 × 28
    uint8 images, scaled to [0, 1] and standardised with the authors' :data:`MEAN` and :data:`STD`,
    float64, one row per image. Chapter: {ref}`ch-mnist-pairs`."""
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"images must be N × 28 × 28, got shape {images.shape}")
    flat = images.reshape(len(images), 28 * 28)
    if pixels is not None:
        flat = flat[:, np.asarray(pixels)]
    x = torch.from_numpy(np.ascontiguousarray(flat)).to(device, torch.float64)
    return (x / 255 - MEAN) / STD


def pair_indices(
    data: ImageSet, a: int, b: int, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the images :func:`immulib.data.digit_pair` returns for (a, b, seed).

    Chapter: {ref}`ch-mnist-pairs`.
    """
    idx_a, idx_b = np.flatnonzero(data.labels == a), np.flatnonzero(data.labels == b)
    n = min(len(idx_a), len(idx_b))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(idx_a, n, replace=False)), np.sort(
        rng.choice(idx_b, n, replace=False)
    )


def splits(
    train: ImageSet,
    test: ImageSet,
    a: int,
    b: int,
    *,
    pixels: np.ndarray | None = None,
    seed: int = 0,
    compress: bool = False,
) -> dict[str, torch.Tensor]:
    """The rows an attacker is scored on for the pair (a, b), as the keywords of
    :func:`immulib.evaluate.score`: ``XP``, ``yP``, ``XH``, ``yH`` the balanced training images of
    a and b that :func:`pair_indices` draws for ``seed`` (the rows the defender used), and
    ``XP_test`` … ``yH_test`` **all** test images of a and b; targets +1 on a, −1 on b (the a-vs-b
    head's), features :func:`digit_features` on ``pixels``. ``compress=True`` returns each
    task's rows as :func:`immulib.evaluate.compress`'s D + 1 rows: the same probe, scored in a
    time that does not grow with the thousands of images.

    Chapter: {ref}`ch-mnist-pairs`.
    """
    for name, d in (("train", train), ("test", test)):
        if not isinstance(d, ImageSet):
            raise TypeError(f"{name} must be an ImageSet, got {type(d).__name__}")
    ((a, b),) = _check_pairs([(a, b)])
    if not isinstance(compress, bool):
        raise TypeError(f"compress must be True or False, got {compress!r}")
    out = {}
    ia, ib = pair_indices(train, a, b, seed=seed)
    ta, tb = (np.flatnonzero(test.labels == d) for d in (a, b))
    for suffix, images, rows_a, rows_b in (
        ("", train.images, ia, ib),
        ("_test", test.images, ta, tb),
    ):
        for task, rows, sign in (("P", rows_a, 1.0), ("H", rows_b, -1.0)):
            X = digit_features(images[rows], pixels)
            y = torch.full((len(X),), sign, dtype=torch.float64)
            if compress:
                X, y = evaluate.compress(X, y)
            out[f"X{task}{suffix}"], out[f"y{task}{suffix}"] = X, y
    return out


@dataclass(frozen=True)
class DigitGrams:
    """Per-digit Gram matrices K[c] = X_cᵀX_c and sums s[c] = X_cᵀ1 over all training images of c.

    Chapter: {ref}`ch-mnist-pairs`.
    """

    data: ImageSet
    setup: str
    pixels: np.ndarray
    K: torch.Tensor  # (10, D, D)
    s: torch.Tensor  # (10, D)

    def pair(self, a: int, b: int, seed: int = 0):
        """(K_P, K_H, s_P, s_H, N) of the balanced pair: the full Grams minus the left-out images."""
        out = []
        for c, keep in zip(
            (a, b), pair_indices(self.data, a, b, seed=seed), strict=True
        ):
            dropped = np.setdiff1d(np.flatnonzero(self.data.labels == c), keep)
            X = digit_features(self.data.images[dropped], self.pixels, self.K.device)
            K = self.K[c] - X.T @ X
            out.append(((K + K.T) / 2, self.s[c] - X.sum(0)))
        return out[0][0], out[1][0], out[0][1], out[1][1], len(keep)


def digit_grams(
    data: ImageSet,
    setup: str = "well_posed",
    *,
    min_frac: float = 0.01,
    device: str | torch.device = "cpu",
) -> DigitGrams:
    """The ten Gram matrices of a setup (see :func:`pixel_support`), float64, on ``device``.

    Chapter: {ref}`ch-mnist-pairs`.
    """
    pixels = pixel_support(data, setup, min_frac=min_frac)
    K, s = [], []
    for c in range(10):
        X = digit_features(data.images[data.labels == c], pixels, device)
        K.append(X.T @ X)
        s.append(X.sum(0))
    K = torch.stack(K)
    return DigitGrams(data, setup, pixels, (K + K.transpose(1, 2)) / 2, torch.stack(s))


# ---------------------------------------------------------------------------------------------
# pairs as a batch of linear problems


def problem(
    grams: DigitGrams, pairs, *, seed: int = 0, sup: str = "a_vs_b"
) -> linear.Problem:
    """The pairs (a, b) as one :class:`immulib.linear.Problem` (B = len(pairs)); harmful targets −1.

    Chapter: {ref}`ch-mnist-pairs`.
    """
    choice(sup, "sup", ("a_vs_b", "P"))
    parts = [grams.pair(a, b, seed) for a, b in _check_pairs(pairs)]
    KP, KH, sP, sH = (torch.stack([p[i] for p in parts]) for i in range(4))
    N = torch.tensor(
        [float(p[4]) for p in parts], dtype=torch.float64, device=KP.device
    )
    if sup == "P":
        Ks, bs, cs, Ns = KP, sP, N, N
    else:
        Ks, bs, cs, Ns = KP + KH, sP - sH, 2 * N, 2 * N
    return linear.Problem(KP, KH, Ks, bs, cs, Ns, bH=-sH, cH=N, NH=N)


def run_batch(
    grams: DigitGrams,
    pairs,
    method: str = "ours",
    *,
    steps: int = 100,
    seed: int = 0,
    sup: str = "a_vs_b",
    **kw,
):
    """Run ``method`` on a batch of pairs at once; returns (θ (B, D, D), ω (B, D), problem, history).

    θ_0 = I and ω_0 ~ N(0, I/D) from ``seed`` (the same for every pair, as one
    :func:`immulib.immunize` call per pair with that seed would draw it, unless ``theta_init`` is
    given); ``kw`` are the knobs of :func:`immulib.linear.run` (``policy``, ``eta``, ``lam_P``, ...).

    Chapter: {ref}`ch-mnist-pairs`.
    """
    choice(method, "method", linear.METHODS)
    prob = problem(grams, pairs, seed=seed, sup=sup)
    D = prob.D
    gen = torch.Generator().manual_seed(integer(seed, "seed", 0))
    omega = (torch.randn(D, generator=gen, dtype=torch.float64) / math.sqrt(D)).to(
        prob.KP.device
    )
    theta, omega, history, _ = linear.run(
        prob,
        method,
        steps=steps,
        omega_init=omega,
        progress=kw.pop("progress", False),
        **kw,
    )
    return theta, omega, prob, history


# ---------------------------------------------------------------------------------------------
# kappa of a batch, both conventions from one eigvalsh


def _kappas(H):
    """{"pinv": κ, "shifted": κ} of each symmetric PSD matrix in H (B, n, n), as in immulib.linalg."""
    lam = torch.linalg.eigvalsh(H)
    n = H.shape[-1]
    out = {}
    a = lam.abs()
    tol = a.max(1).values * n * EPS
    big = torch.full_like(lam, math.inf)
    out["pinv"] = a.max(1).values / torch.where(a > tol[:, None], a, big).min(1).values
    sh = lam + SHIFT
    out["shifted"] = sh.max(1).values / torch.where(sh > SHIFT, sh, big).min(1).values
    return out


# ---------------------------------------------------------------------------------------------
# the sweep


def _check_pairs(pairs):
    if pairs == "all":
        return all_pairs()
    if pairs == "subset":
        return list(SUBSET)
    if isinstance(pairs, str) or not isinstance(pairs, (list, tuple)):
        raise TypeError(
            f'pairs must be "all", "subset" or a list of (a, b), got {pairs!r}'
        )
    out = []
    for p in pairs:
        if (
            not isinstance(p, (tuple, list))
            or len(p) != 2
            or not all(isinstance(x, (int, np.integer)) and 0 <= x <= 9 for x in p)
            or p[0] == p[1]
        ):
            raise ValueError(f"pairs must hold (a, b) with a ≠ b digits 0–9, got {p!r}")
        out.append((int(p[0]), int(p[1])))
    return out


def sweep(
    method: str = "ours",
    setup: str = "well_posed",
    *,
    pairs="all",
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 10,
    data: ImageSet | None = None,
    grams: DigitGrams | None = None,
    device: str | torch.device = "cpu",
    sup: str = "a_vs_b",
    num_threads: int | None = 1,
    progress: bool | None = None,
    thetas: dict | None = None,
    **kw,
) -> pd.DataFrame:
    """Immunize every pair with ``method`` in ``setup`` and score it; one tidy row per pair and κ convention.

    Chapter: {ref}`ch-mnist-pairs`.

    Parameters
    ----------
    method
        One of ``immulib.linear.METHODS`` (see :func:`run_batch`).
    setup
        ``"well_posed"`` (pixel support of :func:`pixel_support`, scored with ``"pinv"``) or
        ``"authors"`` (all 784 pixels, scored with ``"shifted"`` and ``"pinv"``).
    pairs
        ``"all"`` (90), ``"subset"`` (:data:`SUBSET`) or a list of (a, b).
    steps
        Full-batch steps (default 100 for every method).
    batch_size
        Pairs run together along a leading dimension.
    data, grams
        MNIST training split (default: :func:`immulib.data.load_mnist`) or precomputed
        :func:`digit_grams` of this setup.
    device
        ``"cpu"`` or ``"cuda"``; the loop runs in torch only.
    num_threads
        torch threads during the sweep (restored afterwards; default 1: batched LAPACK calls
        with several threads stall on a loaded machine); None leaves the setting alone.
    thetas
        If a dict, the immunized θ of every pair is stored in it under the key (a, b) (on the CPU).
    kw
        Passed to :func:`immulib.linear.run` (``policy``, ``eta``, ``lam_P``, ``lam_H``, ``mu``, ...;
        ``solver``: an :class:`immulib.linalg.ExtremeEigensolver` for the warm-started extreme
        eigenpairs instead of a full ``eigh`` per step, with its fallbacks in its ``stats``).

    Returns
    -------
    pandas.DataFrame
        Columns setup, method, convention, a, b, seed, steps, kappa_P0, kappa_H0, kappa_P,
        kappa_H, i, ii, rir, success (RIR > 1 and (ii) ≤ 1), seconds (per pair), plus the
        knobs given in ``kw``.
    """
    choice(setup, "setup", SETUPS)
    choice(method, "method", linear.METHODS)
    pairs = _check_pairs(pairs)
    steps = 100 if steps is None else integer(steps, "steps", 1)
    integer(batch_size, "batch_size", 1)
    show = _progress(progress)
    if thetas is not None and not isinstance(thetas, dict):
        raise TypeError(
            f"thetas must be a dict (filled with θ per pair) or None, got {type(thetas).__name__}"
        )
    if grams is None:
        if data is None:
            from .data import load_mnist

            data = load_mnist("train")
        grams = digit_grams(data, setup, device=device)
    elif not isinstance(grams, DigitGrams) or grams.setup != setup:
        raise ValueError(f"grams must be the DigitGrams of setup {setup!r}")
    conventions = ("pinv",) if setup == "well_posed" else ("shifted", "pinv")
    rows = []
    knobs = {k: v for k, v in kw.items() if isinstance(v, (int, float, str))}
    with threads(num_threads):
        bar = tqdm(
            total=len(pairs), disable=not show, desc=f"{method} ({setup})", leave=False
        )
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            t0 = time.perf_counter()
            theta, _, b, _ = run_batch(
                grams, chunk, method, steps=steps, seed=seed, sup=sup, **kw
            )
            if b.KP.is_cuda:
                torch.cuda.synchronize()
            sec = (time.perf_counter() - t0) / len(chunk)
            HP = theta.mT @ b.KP @ theta
            HH = theta.mT @ b.KH @ theta
            kap = {
                name: _kappas((H + H.mT) / 2)
                for name, H in (("P0", b.KP), ("H0", b.KH), ("P", HP), ("H", HH))
            }
            for j, (a, bb) in enumerate(chunk):
                if thetas is not None:
                    thetas[(a, bb)] = theta[j].detach().cpu()
                for conv in conventions:
                    k = {name: float(v[conv][j]) for name, v in kap.items()}
                    i, ii = k["H"] / k["H0"], k["P"] / k["P0"]
                    rows.append(
                        dict(
                            setup=setup,
                            method=method,
                            convention=conv,
                            a=a,
                            b=bb,
                            seed=seed,
                            steps=steps,
                            kappa_P0=k["P0"],
                            kappa_H0=k["H0"],
                            kappa_P=k["P"],
                            kappa_H=k["H"],
                            i=i,
                            ii=ii,
                            rir=i / ii,
                            success=bool(i / ii > 1 and ii <= 1),
                            seconds=sec,
                            **knobs,
                        )
                    )
            bar.update(len(chunk))
        bar.close()
    return pd.DataFrame(rows)
