"""tools.tables: the results tables are updated entry by entry, never clobbered."""

import pandas as pd
import pytest

from tools.tables import replace_rows


def test_replace_rows_swaps_only_the_matching_keys_and_keeps_the_rest(tmp_path):
    path = tmp_path / "sub" / "t.csv"
    first = pd.DataFrame(
        dict(setup=["a", "a", "b"], entry=["x", "y", "x"], v=[1.5, 2.5, 3.5])
    )
    replace_rows(path, first, ("setup", "entry"))
    assert pd.read_csv(path).equals(first)
    new = pd.DataFrame(dict(setup=["a", "a"], entry=["x", "x"], v=[10.5, 11.5]))
    out = replace_rows(path, new, ("setup", "entry"))
    got = pd.read_csv(path)
    assert got.equals(out)
    # (a, x) replaced by both new rows; (a, y) and (b, x) untouched
    assert sorted(got.v) == [2.5, 3.5, 10.5, 11.5]
    assert got[(got.setup == "b") & (got.entry == "x")].v.tolist() == [3.5]
    with pytest.raises(ValueError, match="key columns"):
        replace_rows(path, new.drop(columns="entry"), ("setup", "entry"))
