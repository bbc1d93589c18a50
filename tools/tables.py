"""The tools' shared way to update a committed results table (CSV) entry by entry."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def replace_rows(path: Path, rows: pd.DataFrame, on: tuple[str, ...]) -> pd.DataFrame:
    """Write ``path`` with ``rows`` in place of the rows that share their values of the columns
    ``on`` (every combination that ``rows`` holds), keeping all other rows; returns the table
    written. A run that stops part-way leaves a usable file: each call writes it whole."""
    path = Path(path)
    missing = [c for c in on if c not in rows.columns]
    if missing:
        raise ValueError(f"rows lack the key columns {missing}")
    old = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=list(on))
    keys = rows[list(on)].drop_duplicates()
    hit = old[list(on)].merge(keys, how="left", indicator=True)["_merge"] == "both"
    out = pd.concat([old[~hit.to_numpy()], rows], ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False, float_format="%.6g")
    return out
