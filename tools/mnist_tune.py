"""Regenerate immulib/tables/mnist_tuned.csv: the fair protocol on MNIST digit pairs.

    IMMULIB_DATA=/path/to/data python -m tools.mnist_tune --workers 2   # ~11 min on 2 cores

For every method entry of :data:`immulib.protocol.GRIDS`, in the well-posed setup, with the same
budget of ``--steps`` full-batch steps:

1. **grid** (seed 0, the ten pairs of :data:`immulib.pairs.SUBSET`): each of the entry's four
   settings is run on every pair; the setting kept is the one :func:`immulib.protocol.select`
   ranks first on the median (i) and median (ii) over the pairs (training rows): feasible
   settings ((ii) ≤ 1) by the largest (i), else the largest RIR; while it lies at an end of the
   settings tried, the grid is widened (:func:`immulib.protocol.search`, at most
   :data:`immulib.protocol.WIDEN` more settings, ``widened`` marks their rows; a setting that
   diverges on some pair gets one row with ``diverged`` true and is never kept);
2. **seeds** (the ten pairs): the kept setting is run again with seeds 1 and 2 (another balanced
   subsample of the two digits and another ω_0), so that seed 0's grid row and these give three
   seeds per pair;
3. **all** (seed 0, all 90 pairs): the kept setting on every ordered pair (``--no-all`` skips
   it); the ten pairs of the subset repeat their grid rows there.

Every θ is then scored from the attacker's side by :func:`immulib.evaluate.score` on the pair's
training images and on **all MNIST test images** of its two digits (:func:`immulib.pairs.splits`,
compressed to D + 1 rows per task by :func:`immulib.evaluate.compress`, the same probe):
the ``steps_*`` columns (exact line search and the tuned fixed step, D_H and D_P), ``*_id`` the
identity's counts on the same rows, ``def31``, ``slower_than_identity`` and ``loss_P_kept``. The
targets follow chapter 05's rule (a target the identity cannot reach makes a column say
nothing): per pair and task, ``target_H`` and ``target_P`` are the relative suboptimality the
identity's line-search attacker reaches on that task's test images in ``--ref-steps`` steps.

The entries run in ``--workers`` processes (one torch thread each); the file is written after
every entry (a partial file is usable). ``stage`` says which step made a row, ``setting`` is the
knobs as JSON, ``chosen`` marks the kept setting, ``dist`` is ‖θ − θ_0‖_F (θ_0 the identity).
Chapter 06 reads the file.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import pandas as pd
import torch

from immulib import data, pairs, protocol
from tools.attacker import PairAttacker
from tools.tables import replace_rows

OUT = Path(__file__).resolve().parents[1] / "immulib" / "tables" / "mnist_tuned.csv"
SETUP = "well_posed"
_STATE: dict = {}  # per process: the options, the Gram matrices, the attacker (tools.attacker)


def _setup(options: dict) -> None:
    """Load the data once per process."""
    torch.set_num_threads(1)
    train, test = data.load_mnist("train"), data.load_mnist("test")
    grams = pairs.digit_grams(train, SETUP, device=options["device"])
    _STATE.update(
        options=options,
        grams=grams,
        attacker=PairAttacker(
            train,
            test,
            grams.pixels,
            ref_steps=options["ref_steps"],
            max_steps=options["max_attack_steps"],
        ),
    )


def _run(entry, knobs, seed, stage, chosen_pairs) -> pd.DataFrame:
    """One sweep of ``entry`` at ``knobs``, scored; one row per pair (pinv convention)."""
    opt = _STATE["options"]
    t0 = time.perf_counter()
    thetas = {}
    df = pairs.sweep(
        protocol.method_of(entry),
        SETUP,
        pairs=chosen_pairs,
        steps=opt["steps"],
        seed=seed,
        grams=_STATE["grams"],
        device=opt["device"],
        num_threads=1,
        progress=False,
        thetas=thetas,
        **knobs,
    )
    df = df[df.convention == "pinv"].drop(columns=list(knobs), errors="ignore")
    scored = pd.DataFrame(
        [
            _STATE["attacker"]((a, b), seed, thetas[(a, b)])
            for a, b in zip(df.a, df.b, strict=True)
        ],
        index=df.index,
    )
    df = pd.concat([df, scored], axis=1).assign(
        entry=entry, stage=stage, setting=json.dumps(knobs, sort_keys=True)
    )
    print(
        f"{entry} {stage} seed {seed} {knobs}: median (i) {df.i.median():.3g}, "
        f"median (ii) {df.ii.median():.3g}, median held-out D_H steps × "
        f"{(df.steps_H_test_exact / df.steps_H_test_exact_id).median():.3g}, "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return df


def _entry(entry: str) -> pd.DataFrame:
    """The grid (widened at its ends by :func:`immulib.protocol.search`), the seeds and (unless
    --no-all) the 90 pairs of one entry."""
    opt = _STATE["options"]
    runs: dict[str, pd.DataFrame] = {}

    def medians(knobs: dict) -> dict:
        df = _run(entry, knobs, 0, "grid", "subset")
        runs[json.dumps(knobs, sort_keys=True)] = df
        return dict(i=float(df.i.median()), ii=float(df.ii.median()))

    knobs, rows = protocol.search(protocol.GRIDS[entry], medians)
    widened = {json.dumps(r["knobs"], sort_keys=True) for r in rows if r["widened"]}
    keep = json.dumps(knobs, sort_keys=True)
    grid = pd.concat(runs.values())
    grid["chosen"] = grid.setting == keep
    grid["widened"] = grid.setting.isin(widened)
    grid["diverged"] = False
    for r in rows:  # a setting that diverged on some pair: one row that says so
        if r["diverged"]:
            s = json.dumps(r["knobs"], sort_keys=True)
            print(f"{entry} grid {r['knobs']}: diverged", flush=True)
            grid = pd.concat([grid, pd.DataFrame([dict(
                entry=entry, stage="grid", setting=s, seed=0, chosen=False,
                widened=r["widened"], diverged=True,
            )])], ignore_index=True)  # fmt: skip
    parts = [grid]
    parts += [_run(entry, knobs, s, "seeds", "subset") for s in opt["seeds"]]
    if opt["all"]:
        parts.append(_run(entry, knobs, 0, "all", "all"))
    for d in parts[1:]:
        d["chosen"], d["widened"], d["diverged"] = True, keep in widened, False
    return pd.concat(parts)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--entries",
        nargs="+",
        choices=list(protocol.GRIDS),
        default=list(protocol.GRIDS),
    )
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ref-steps", type=int, default=100)
    parser.add_argument("--max-attack-steps", type=int, default=3000)
    parser.add_argument(
        "--no-all", dest="all", action="store_false", help="skip the 90-pair stage"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("entries", "out")}
    t0 = time.perf_counter()

    def store(rows: pd.DataFrame) -> None:
        replace_rows(args.out, rows, ("entry",))

    if args.workers <= 1:
        _setup(options)
        for entry in args.entries:
            store(_entry(entry))
    else:
        with ProcessPoolExecutor(
            args.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_setup,
            initargs=(options,),
        ) as pool:
            for job in as_completed([pool.submit(_entry, e) for e in args.entries]):
                store(job.result())
    print(f"the protocol ran in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
