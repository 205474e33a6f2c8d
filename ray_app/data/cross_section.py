"""Cross-sectional transforms: each day's feature values against the other tickers' that day.

Daily returns are mostly market-wide moves; what a ranking model can use is how a ticker
stands against the rest of the day's universe. ``<name>_csrank`` is a column's rank among
the day's tickers, scaled to -0.5 (lowest) .. 0.5 (highest), ties sharing their mean rank;
``<name>_cszscore`` is its distance from the day's mean in the day's standard deviations
(population). A day where the column is the same for every ticker (or that has one ticker)
gets 0 for both: nobody stands out. The rank label ranks ``target_ret`` the same way.

Point in time: a value of day t reads the rows of day t only, and each of those is point in
time (``ray_app.data.features``), so cutting every ticker's history at t leaves every row up
to t unchanged. The universe of a day is the tickers with a feature row that day: a ticker
in its warm-up, or one that failed to build, is not part of it.

The functions take rows of any number of days and tickers (``ticker``, ``date`` and the
columns), so the feature store can hand them one day's rows from a Ray Data group and the
tests a frame they made by hand.
"""

from __future__ import annotations

import pandas as pd

from ray_app.core.settings import FeatureSettings
from ray_app.data.features import CS_SUFFIXES, KEYS, RANK_TARGET, TARGET, ratio_or_zero


def cs_rank(values: pd.Series, day: pd.Series) -> pd.Series:
    """Rank of each value among the values of its day, -0.5 .. 0.5; NaN values stay NaN and
    are not ranked."""
    by_day = values.groupby(day)
    rank = by_day.rank(method="average")
    count = by_day.transform("count")
    return (
        ((rank - 1) / (count - 1).where(count > 1) - 0.5)
        .where(count > 1, 0.0)
        .where(values.notna())
    )


def cs_zscore(values: pd.Series, day: pd.Series) -> pd.Series:
    """(value - day's mean) / day's population std; 0 on a day whose values are all equal
    (tested on the range, so rounding in the std cannot blow a flat day up)."""
    by_day = values.groupby(day)
    spread = by_day.transform("max") - by_day.transform("min")
    std = by_day.transform("std", ddof=0).where(spread > 0, 0.0)
    zscore = ratio_or_zero(values - by_day.transform("mean"), std)
    return pd.Series(zscore, index=values.index).where(values.notna())


def inputs(spec: FeatureSettings) -> list[str]:
    """The stored columns the cross-sectional pass reads, besides ``ticker`` and ``date``."""
    return [*spec.cross_sectional, *([TARGET] if spec.label == "next_return_csrank" else [])]


def companions(rows: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """``<name>_csrank`` and ``<name>_cszscore`` of each of ``names`` for ``rows``, aligned
    with them (same index), in ``feature_names`` order.

    The rows are put in (date, ticker) order and the values in NumPy float64 first: a day's
    mean and std then add the same numbers in the same order with the same arithmetic however
    the rows arrived (a Ray Data group hands Arrow-backed columns; a test's concat, NumPy
    ones), so the result is equal to the last bit, as the point-in-time check compares it.
    """
    ordered = rows.reset_index(drop=True).sort_values(["date", "ticker"], kind="stable")
    transforms = dict(zip(CS_SUFFIXES, (cs_rank, cs_zscore), strict=True))
    out = {
        f"{name}{suffix}": transform(ordered[name].astype("float64"), ordered["date"])
        for name in names
        for suffix, transform in transforms.items()
    }
    return pd.DataFrame(out, index=ordered.index).sort_index().set_axis(rows.index)


def cross_section(rows: pd.DataFrame, spec: FeatureSettings) -> pd.DataFrame:
    """``ticker``, ``date``, the companions of ``spec.cross_sectional`` and, with the rank
    label, ``target_ret_csrank`` (NaN where ``target_ret`` is: the newest day)."""
    out = pd.concat([rows[KEYS], companions(rows, spec.cross_sectional)], axis=1)
    if spec.label == "next_return_csrank":
        out[RANK_TARGET] = cs_rank(rows[TARGET].astype("float64"), rows["date"])
    return out
