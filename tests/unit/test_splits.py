"""Walk-forward splits: ordered, embargoed, holdout untouched, and honest about bad arguments."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pandas as pd
import pytest

from ray_app.core.settings import FeatureSettings
from ray_app.training.splits import Fold, WalkForward, min_embargo, walk_forward

DATES = pd.bdate_range("2020-01-01", "2022-06-30")


def panel(seed: int = 0) -> pd.DataFrame:
    """Three tickers on business days, one of them missing random days, sorted (date, ticker)."""
    rng = np.random.default_rng(seed)
    rows = [(d, t) for d in DATES for t in ("AAA", "BBB", "CCC")]
    frame = pd.DataFrame(rows, columns=["date", "ticker"])
    frame = frame[(frame["ticker"] != "CCC") | (rng.random(len(frame)) > 0.3)]
    return frame.reset_index(drop=True)


def positions(frame: pd.DataFrame, mask: np.ndarray) -> np.ndarray:
    """Positions of the masked rows' dates among the frame's unique dates."""
    dates = np.unique(frame["date"].to_numpy())
    return np.unique(np.searchsorted(dates, frame.loc[mask, "date"].to_numpy()))


def split(frame: pd.DataFrame, **kwargs: object) -> WalkForward:
    args: dict[str, object] = dict(n_folds=4, test_days=40, train_days=120, embargo_days=10)
    args.update(kwargs)
    return walk_forward(frame, **args)  # type: ignore[arg-type]


def all_folds(result: WalkForward) -> list[Fold]:
    return result.folds + ([result.holdout] if result.holdout else [])


@pytest.mark.parametrize("mode", ["expanding", "rolling"])
def test_train_strictly_before_test_with_exact_embargo(mode: str) -> None:
    frame = panel()
    result = split(frame, mode=mode, holdout_months=3)
    for fold in all_folds(result):
        train, test = positions(frame, fold.train_mask), positions(frame, fold.test_mask)
        assert not (fold.train_mask & fold.test_mask).any()
        assert train.max() < test.min()
        assert test.min() - train.max() - 1 == result.embargo_days == 10
        assert np.array_equal(train, np.arange(train.min(), train.max() + 1))
        assert np.array_equal(test, np.arange(test.min(), test.max() + 1))
        assert fold.train.end < fold.test.start
        train_dates = frame.loc[fold.train_mask, "date"]
        assert train_dates.min() == fold.train.start and train_dates.max() == fold.train.end
        assert fold.train.n_dates == len(train) and fold.test.n_dates == len(test)


def test_test_blocks_are_consecutive_and_end_at_the_development_data() -> None:
    frame = panel()
    result = split(frame, holdout_months=0)
    tests = [positions(frame, f.test_mask) for f in result.folds]
    assert all(len(t) == 40 for t in tests)
    assert all(a.max() + 1 == b.min() for a, b in pairwise(tests))
    assert tests[-1].max() == len(np.unique(frame["date"])) - 1
    assert result.holdout is None


def test_expanding_grows_and_rolling_keeps_a_fixed_window() -> None:
    frame = panel()
    expanding = split(frame, mode="expanding")
    rolling = split(frame, mode="rolling")
    grown = [f.train.n_dates for f in expanding.folds]
    assert all(b - a == 40 for a, b in pairwise(grown))
    assert all(f.train.start == pd.Timestamp(DATES[0]) for f in expanding.folds)
    assert [f.train.n_dates for f in rolling.folds] == [120] * 4
    assert [f.train.end for f in rolling.folds] == [f.train.end for f in expanding.folds]
    assert [f.test.start for f in rolling.folds] == [f.test.start for f in expanding.folds]


def test_holdout_is_the_last_months_and_never_in_a_fold() -> None:
    frame = panel()
    result = split(frame, holdout_months=6)
    holdout = result.holdout
    assert holdout is not None
    held_dates = frame.loc[holdout.test_mask, "date"]
    assert held_dates.max() == pd.Timestamp("2022-06-30")
    assert held_dates.min() == pd.Timestamp("2021-12-31")  # first business day after 2021-12-30
    assert held_dates.nunique() == len(DATES[pd.Timestamp("2021-12-30") < DATES])
    for fold in result.folds:
        assert not (fold.train_mask & holdout.test_mask).any()
        assert not (fold.test_mask & holdout.test_mask).any()
        assert fold.test.end < holdout.test.start
    # The holdout model trains on every development date, embargoed from the holdout.
    assert holdout.train.start == pd.Timestamp(DATES[0])
    assert holdout.train.end == result.folds[-1].test.end
    dev, held = positions(frame, holdout.train_mask), positions(frame, holdout.test_mask)
    assert held.min() - dev.max() - 1 == 10


def test_masks_follow_the_frame_rows_even_when_unsorted() -> None:
    frame = panel()
    shuffled = frame.sample(frac=1.0, random_state=1).reset_index(drop=True)
    a, b = split(frame, holdout_months=2), split(shuffled, holdout_months=2)
    for fa, fb in zip(all_folds(a), all_folds(b), strict=True):
        assert (fa.train, fa.test) == (fb.train, fb.test)
        train_dates = shuffled.loc[fb.train_mask, "date"]
        assert train_dates.between(fb.train.start, fb.train.end).all()
        in_range = shuffled["date"].between(fb.test.start, fb.test.end).to_numpy()
        assert np.array_equal(in_range, fb.test_mask)
        assert np.array_equal(np.flatnonzero(fb.test_mask), fb.test_index)


def test_training_labels_and_test_look_backs_do_not_overlap() -> None:
    """With the minimum embargo, the last training label (row date + horizon) and the test
    rows' look-back windows (first test date - longest window + 1) stay apart."""
    spec = FeatureSettings()
    embargo = min_embargo(spec)
    frame = panel()
    result = split(frame, n_folds=2, embargo_days=embargo, holdout_months=3)
    longest = max(*spec.volatility_windows, spec.beta_window)
    for fold in all_folds(result):
        last_label = positions(frame, fold.train_mask).max() + 1
        first_look_back = positions(frame, fold.test_mask).min() - longest + 1
        assert last_label < first_look_back


def test_min_embargo_is_horizon_plus_longest_look_back() -> None:
    assert min_embargo(FeatureSettings()) == 1 + 60
    assert min_embargo(FeatureSettings(beta_window=100), horizon=5) == 105
    assert min_embargo(FeatureSettings(macd=(12, 50, 30))) == 1 + 80
    assert min_embargo(FeatureSettings(), sequence_window=20) == 1 + 60 + 19
    assert min_embargo(FeatureSettings(alpha_windows=[120])) == 1 + 60  # the set is off
    assert min_embargo(FeatureSettings(alpha_features=True, alpha_windows=[120])) == 1 + 120
    with pytest.raises(ValueError, match="horizon"):
        min_embargo(FeatureSettings(), horizon=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n_folds=20, test_days=40), "not enough dates: .*20 folds x 40 test dates"),
        (dict(holdout_months=28), "after a 28-month holdout"),
        (dict(holdout_months=40), "not enough dates: 0 of"),
        (dict(mode="random"), "mode must be 'expanding' or 'rolling'"),
        (dict(embargo_days=-1), "embargo_days must be >= 0"),
        (dict(n_folds=0), "n_folds must be >= 1"),
        (dict(test_days=0), "test_days must be >= 1"),
    ],
)
def test_bad_arguments_are_refused_clearly(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split(panel(), **kwargs)


def test_empty_or_dateless_frames_are_refused() -> None:
    with pytest.raises(ValueError, match="'date' column"):
        split(pd.DataFrame({"ticker": ["A"]}))
    with pytest.raises(ValueError, match="'date' column"):
        split(panel().iloc[:0])


def test_exactly_enough_dates_is_accepted() -> None:
    frame = pd.DataFrame({"date": DATES[: 120 + 10 + 4 * 40], "ticker": "AAA"})
    result = split(frame)
    assert result.folds[0].train.n_dates == 120
    with pytest.raises(ValueError, match="not enough dates"):
        split(frame.iloc[1:])
