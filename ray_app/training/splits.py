"""Walk-forward splits over trading dates, with an embargo and a final holdout; never shuffled.

Returns are serially dependent and features look back up to tens of days, so a random split
(or adjacent train and test days) lets a model see the test period through its training
labels. Every split here trains strictly before it tests and leaves ``embargo_days`` trading
dates out in between; the most recent months are set aside first as a holdout that no fold
ever touches, and the same embargo separates them from the data before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from ray_app.core.settings import FeatureSettings

Mode = Literal["expanding", "rolling"]


@dataclass(frozen=True)
class DateRange:
    """First and last date (inclusive) of a block of trading dates, and how many it holds."""

    start: pd.Timestamp
    end: pd.Timestamp
    n_dates: int


@dataclass(frozen=True, eq=False)
class Fold:
    """One train/test split: date ranges plus boolean row masks over the split frame."""

    name: str
    train: DateRange
    test: DateRange
    train_mask: np.ndarray
    test_mask: np.ndarray

    @property
    def train_index(self) -> np.ndarray:
        return np.flatnonzero(self.train_mask)

    @property
    def test_index(self) -> np.ndarray:
        return np.flatnonzero(self.test_mask)


@dataclass(frozen=True, eq=False)
class WalkForward:
    """The walk-forward folds, oldest first, and the holdout (trained on all development
    dates the mode allows, tested on the final months), or None without one."""

    folds: list[Fold]
    holdout: Fold | None
    embargo_days: int
    mode: Mode


def min_embargo(spec: FeatureSettings, horizon: int = 1, sequence_window: int = 1) -> int:
    """The smallest safe embargo in trading dates: the target horizon plus the longest look-back.

    The look-back is the largest window, lag or return horizon of ``spec`` (the MACD signal
    line averages a series built on the slow average, so it counts slow + signal; the
    Alpha-style windows count when that set is on), widened by a sequence model's input
    window beyond its last row. Cross-sectional companions read their own day only, so they
    add nothing.
    """
    if horizon < 1 or sequence_window < 1:
        raise ValueError(
            f"horizon and sequence_window must be >= 1, got {horizon} and {sequence_window}"
        )
    _, slow, signal = spec.macd
    lookbacks = [
        *spec.return_horizons,
        *spec.volatility_windows,
        *spec.lags,
        spec.rsi_window,
        slow + signal,
        spec.bollinger_window,
        spec.atr_window,
        spec.volume_window,
        spec.beta_window,
        *(spec.alpha_windows if spec.alpha_features else []),
    ]
    return horizon + max(lookbacks) + sequence_window - 1


def _range(dates: np.ndarray, start: int, stop: int) -> DateRange:
    return DateRange(pd.Timestamp(dates[start]), pd.Timestamp(dates[stop - 1]), stop - start)


def _fold(
    name: str, dates: np.ndarray, codes: np.ndarray, train: tuple[int, int], test: tuple[int, int]
) -> Fold:
    """A fold from [start, stop) positions in the unique ``dates``; ``codes`` maps rows there."""
    return Fold(
        name,
        _range(dates, *train),
        _range(dates, *test),
        (codes >= train[0]) & (codes < train[1]),
        (codes >= test[0]) & (codes < test[1]),
    )


def _check_args(
    mode: str, n_folds: int, test_days: int, train_days: int, embargo_days: int, holdout_months: int
) -> None:
    if mode not in ("expanding", "rolling"):
        raise ValueError(f"mode must be 'expanding' or 'rolling', got {mode!r}")
    for name, value, least in (
        ("n_folds", n_folds, 1),
        ("test_days", test_days, 1),
        ("train_days", train_days, 1),
        ("embargo_days", embargo_days, 0),
        ("holdout_months", holdout_months, 0),
    ):
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")


def _holdout_start(dates: np.ndarray, months: int) -> int:
    """Position of the first date within ``months`` calendar months of the last date."""
    if months == 0:
        return len(dates)
    cutoff = pd.Timestamp(dates[-1]) - pd.DateOffset(months=months)
    return int(np.searchsorted(dates, cutoff.to_datetime64(), side="right"))


def walk_forward(
    frame: pd.DataFrame,
    *,
    n_folds: int,
    test_days: int,
    train_days: int,
    embargo_days: int,
    mode: Mode = "expanding",
    holdout_months: int = 0,
) -> WalkForward:
    """Walk-forward folds over the unique sorted dates of ``frame["date"]``.

    The last ``holdout_months`` months are split off first; ``embargo_days`` dates before
    them are dropped, and the remaining development dates end with ``n_folds`` consecutive
    test blocks of ``test_days`` dates. Each fold trains on dates ending ``embargo_days``
    before its test block: all earlier dates (``expanding``, at least ``train_days``) or
    exactly the last ``train_days`` (``rolling``). Pass ``embargo_days >= min_embargo(spec)``.
    """
    _check_args(mode, n_folds, test_days, train_days, embargo_days, holdout_months)
    if "date" not in frame or frame.empty:
        raise ValueError("walk_forward needs a non-empty frame with a 'date' column")
    dates = np.unique(frame["date"].to_numpy())
    codes = np.searchsorted(dates, frame["date"].to_numpy())
    held = _holdout_start(dates, holdout_months)
    n_dev = held - embargo_days if held < len(dates) else held
    needed = train_days + embargo_days + n_folds * test_days
    if n_dev < needed:
        held_out = ""
        if held < len(dates):
            held_out = f" after a {holdout_months}-month holdout and its embargo"
        raise ValueError(
            f"not enough dates: {max(n_dev, 0)} of {len(dates)} dates remain{held_out}, but "
            f"{n_folds} folds x {test_days} test dates + {embargo_days} embargo + "
            f"{train_days} training dates need {needed}"
        )
    folds = []
    for k in range(n_folds):
        test_start = n_dev - (n_folds - k) * test_days
        train_stop = test_start - embargo_days
        train_start = 0 if mode == "expanding" else train_stop - train_days
        folds.append(
            _fold(
                f"fold_{k}",
                dates,
                codes,
                (train_start, train_stop),
                (test_start, test_start + test_days),
            )
        )
    holdout = None
    if held < len(dates):
        train_start = 0 if mode == "expanding" else n_dev - train_days
        holdout = _fold("holdout", dates, codes, (train_start, n_dev), (held, len(dates)))
    return WalkForward(folds, holdout, embargo_days, mode)
