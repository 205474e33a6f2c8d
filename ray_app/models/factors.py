"""Classic one-line cross-sectional factors as baselines: short-term reversal and momentum.

The first question a quant asks of a daily-return model is whether it beats the signals
anyone computes in one line from past prices; a model that cannot is not worth serving. A
factor's prediction is only the per-day cross-sectional rank of its signal: it orders the
day's tickers and says nothing about the size of their returns (so evaluation scores it on
its ranking, and gives it no point errors).

- ``reversal_1d``: minus the last day's log return (yesterday's losers bounce back).
- ``reversal_5d``: minus the last five days' log return.
- ``momentum_21d``: the log return from 21 trading days ago to one day ago. Skipping the
  most recent day is the usual "12-1" rule of momentum (Jegadeesh and Titman, 1993) at a
  month's horizon: it keeps the one-day reversal, a baseline of its own, out of momentum.

Point in time: a row's signal sums its ticker's ``ret_1d`` (the log return into that row's
close, from the bars) over that row and the rows before it, never a later one. A ticker's
feature rows are its consecutive bars after the features' warm-up (``data.features`` drops
the warm-up and days whose inputs are degenerate, which real prices do not produce), so h
rows back is h bars back, as in the ``ret_{h}d`` features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

RETURN_COLUMN = "ret_1d"


@dataclass(frozen=True)
class Factor:
    """A signal ``sign * log(close[t - skip] / close[t - horizon])``, ranked per day."""

    name: str
    horizon: int  # trading days the return reaches back
    skip: int = 0  # the most recent days left out
    sign: float = 1.0  # -1: bet against the move (reversal)

    def signal(self, history: pd.DataFrame) -> pd.Series:
        """The signal of every row of ``history`` (feature rows with ``ticker``, ``date`` and
        ``ret_1d``), aligned with its index; NaN where the ticker has under ``horizon`` rows
        up to that row."""
        if RETURN_COLUMN not in history:
            raise ValueError(f"factor {self.name} needs column {RETURN_COLUMN!r}")
        ordered = history.sort_values(["ticker", "date"], kind="stable")
        window = self.horizon - self.skip
        summed = (
            ordered.groupby("ticker", sort=False)[RETURN_COLUMN]
            .rolling(window, min_periods=window)
            .sum()
            .reset_index(level=0, drop=True)
        )
        moved = summed.groupby(ordered["ticker"], sort=False).shift(self.skip)
        return (self.sign * moved).reindex(history.index)


FACTORS = (
    Factor("reversal_1d", horizon=1, sign=-1.0),
    Factor("reversal_5d", horizon=5, sign=-1.0),
    Factor("momentum_21d", horizon=21, skip=1),
)
FACTOR_NAMES = tuple(f.name for f in FACTORS)


def daily_rank(dates: pd.Series, values: pd.Series) -> np.ndarray:
    """Each value's rank among its day's values, scaled to [-0.5, 0.5] (ties share their
    average rank), so days with more or fewer tickers score alike. A missing value, or a
    day with one value, gets 0: the middle, no view."""
    by_day = values.groupby(dates.to_numpy())
    spread = (by_day.rank() - 1) / (by_day.transform("count") - 1) - 0.5
    return spread.fillna(0.0).to_numpy(dtype=np.float64)


def factor_predictions(history: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """One column per factor for ``rows`` (``date``, ``ticker``), index kept: each row's rank
    among the day's ``rows`` of the factor's signal, computed on ``history`` (feature rows
    holding ``rows`` and the days before them, so the first days of ``rows`` have a past).
    """
    keys = ["date", "ticker"]
    signals = history[keys].assign(**{f.name: f.signal(history) for f in FACTORS})
    picked = rows[keys].merge(signals, on=keys, how="left", validate="1:1")
    return pd.DataFrame(
        {f.name: daily_rank(picked["date"], picked[f.name]) for f in FACTORS}, index=rows.index
    )
