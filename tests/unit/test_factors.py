"""The factor baselines: their signals from known price paths, point in time, and the
per-day rank that is their prediction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ray_app.models.factors import FACTORS, Factor, daily_rank, factor_predictions

DAYS = pd.bdate_range("2024-01-01", periods=40)


def history(seed: int = 0, tickers: str = "ABCD") -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Feature-like rows (``ticker``, ``date``, ``ret_1d``) of random price paths, shuffled,
    and each ticker's closes: ``close[i]`` is the close before day i's, ``close[i + 1]`` day
    i's, so day 0's ``ret_1d`` already looks back one bar, as a feature row after the warm-up
    does."""
    rng = np.random.default_rng(seed)
    closes, frames = {}, []
    for ticker in tickers:
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, len(DAYS) + 1)))
        closes[ticker] = close
        ret = np.diff(np.log(close))
        frames.append(pd.DataFrame({"ticker": ticker, "date": DAYS, "ret_1d": ret}))
    frame = pd.concat(frames, ignore_index=True).sample(frac=1.0, random_state=seed)
    return frame, closes


@pytest.mark.parametrize("factor", FACTORS, ids=lambda f: f.name)
def test_each_signal_is_its_return_over_the_window(factor: Factor) -> None:
    """``sign * log(close[t - skip] / close[t - horizon])``, from the price path itself; NaN
    while the ticker has fewer than ``horizon`` returns up to the row."""
    frame, closes = history()
    signal = factor.signal(frame)
    for ticker, day, value in zip(frame["ticker"], frame["date"], signal, strict=True):
        t = DAYS.get_loc(day) + 1  # index of the row's own close in ``closes``
        log_close = np.log(closes[ticker])
        if t - factor.horizon < 0:
            assert np.isnan(value)
        else:
            expected = factor.sign * (log_close[t - factor.skip] - log_close[t - factor.horizon])
            assert value == pytest.approx(expected, abs=1e-12)


def test_the_classic_factors() -> None:
    """Reversal bets against the last 1 and 5 days; momentum rides days 21..1 back, skipping
    the last day (which the one-day reversal covers)."""
    by_name = {f.name: f for f in FACTORS}
    assert by_name["reversal_1d"] == Factor("reversal_1d", horizon=1, sign=-1.0)
    assert by_name["reversal_5d"] == Factor("reversal_5d", horizon=5, sign=-1.0)
    assert by_name["momentum_21d"] == Factor("momentum_21d", horizon=21, skip=1)
    frame, _ = history()
    np.testing.assert_allclose(by_name["reversal_1d"].signal(frame), -frame["ret_1d"])


@pytest.mark.parametrize("factor", FACTORS, ids=lambda f: f.name)
def test_a_signal_uses_only_rows_up_to_its_date(factor: Factor) -> None:
    """Changing every return after a cut-off, or cutting the rows there, leaves the signal of
    every row up to the cut-off as it was."""
    frame, _ = history(seed=1)
    cut = DAYS[25]
    before = frame["date"] <= cut
    full = factor.signal(frame)
    future = frame.assign(ret_1d=np.where(before, frame["ret_1d"], 0.5))
    pd.testing.assert_series_equal(factor.signal(future)[before], full[before])
    pd.testing.assert_series_equal(factor.signal(frame[before]), full[before])
    assert not np.allclose(factor.signal(future)[~before], full[~before], equal_nan=True)


def test_a_factor_needs_the_daily_return() -> None:
    with pytest.raises(ValueError, match="ret_1d"):
        FACTORS[0].signal(pd.DataFrame({"ticker": ["A"], "date": [DAYS[0]], "ret_1d_x": [0.1]}))


def test_daily_rank_spans_minus_to_plus_a_half_per_day() -> None:
    dates = pd.Series([DAYS[0]] * 5 + [DAYS[1]] * 3 + [DAYS[2]])
    values = pd.Series([0.3, -1.0, 0.3, 2.0, np.nan, 5.0, 1.0, 3.0, 7.0])
    ranks = daily_rank(dates, values)
    # Day 0: -1.0, 0.3, 0.3, 2.0 rank 1, 2.5, 2.5, 4 of 4; the missing value has no view.
    np.testing.assert_allclose(ranks[:5], [0.0, -0.5, 0.0, 0.5, 0.0])
    np.testing.assert_allclose(ranks[5:8], [0.5, -0.5, 0.0])
    assert ranks[8] == 0.0  # one ticker that day: nothing to rank against


def test_factor_predictions_rank_the_rows_with_a_past_from_history() -> None:
    """The scored rows (here the last five days) get signals that reach back into the days
    before them, and are ranked among themselves, day by day."""
    frame, closes = history(seed=2)
    rows = frame[frame["date"] >= DAYS[-5]][["date", "ticker"]]
    preds = factor_predictions(frame, rows)
    assert list(preds.columns) == [f.name for f in FACTORS] and preds.index.equals(rows.index)
    assert (preds.abs() <= 0.5).all().all() and not (preds == 0).all().any()
    last = rows["date"] == DAYS[-1]
    momentum = {t: np.log(c[-2] / c[-22]) for t, c in closes.items()}  # days 21..1 back
    order = sorted(momentum, key=momentum.__getitem__)
    expected = {t: i / (len(order) - 1) - 0.5 for i, t in enumerate(order)}
    got = dict(zip(rows.loc[last, "ticker"], preds.loc[last, "momentum_21d"], strict=True))
    assert got == pytest.approx(expected)
