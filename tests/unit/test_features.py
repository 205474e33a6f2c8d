"""Features: point in time (no look-ahead) on real bars, and the next-day target."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ray_app.core.settings import FeatureSettings, IngestSettings
from ray_app.data.features import TARGET, compute_features, feature_names, spec_hash
from ray_app.data.sources import CsvSource, SampleSource
from ray_app.data.validation import validate_bars

SPEC = FeatureSettings()


def load(source: CsvSource | SampleSource, ticker: str) -> pd.DataFrame:
    return validate_bars(ticker, source.fetch(ticker, None, None).bars, IngestSettings())[0]


def assert_point_in_time(
    ticker: str, bars: pd.DataFrame, index: pd.DataFrame | None, cuts: list[str]
) -> None:
    full = compute_features(ticker, bars, SPEC, index)
    columns = feature_names(SPEC, index is not None)
    for cut in map(pd.Timestamp, cuts):
        cut_index = None if index is None else index[index["date"] <= cut]
        partial = compute_features(ticker, bars[bars["date"] <= cut], SPEC, cut_index)
        expected = full[full["date"] <= cut]
        assert len(partial) == len(expected) > 100
        np.testing.assert_array_equal(partial[columns].to_numpy(), expected[columns].to_numpy())
        assert not partial["has_target"].iloc[-1] and expected["has_target"].iloc[-1]


def test_no_look_ahead_on_real_kaggle_bars(kaggle_dir: Path) -> None:
    source = CsvSource(kaggle_dir)
    spy = load(source, "SPY")
    for ticker in ("AIG", "NVDA", "PG"):
        assert_point_in_time(
            ticker, load(source, ticker), spy, ["2008-10-15", "2013-06-28", "2017-06-01"]
        )


def test_no_look_ahead_on_bundled_sample_bars() -> None:
    source = SampleSource()
    assert_point_in_time("AAPL", load(source, "AAPL"), None, ["2005-01-31", "2011-08-08"])


def test_future_bars_do_not_change_the_past() -> None:
    """Scrambling every bar after day t leaves every feature row <= t unchanged."""
    bars = load(SampleSource(), "IBM")
    cut = pd.Timestamp("2009-06-30")
    scrambled = bars.copy()
    after = scrambled["date"] > cut
    rng = np.random.default_rng(0)
    for col in ("open", "high", "low", "close", "adj_close", "volume"):
        scrambled.loc[after, col] = rng.permutation(scrambled.loc[after, col].to_numpy())
    a, b = compute_features("IBM", bars, SPEC), compute_features("IBM", scrambled, SPEC)
    cols = feature_names(SPEC, False)
    np.testing.assert_array_equal(
        a.loc[a["date"] <= cut, cols].to_numpy(), b.loc[b["date"] <= cut, cols].to_numpy()
    )


def test_target_is_the_next_days_log_return() -> None:
    bars = load(SampleSource(), "MSFT")
    frame = compute_features("MSFT", bars, SPEC)
    adj = bars.set_index("date")["adj_close"]
    day = frame.iloc[200]
    following = adj.index[adj.index.get_loc(day["date"]) + 1]
    assert day[TARGET] == pytest.approx(np.log(adj[following] / adj[day["date"]]))
    assert day["target_dir"] == int(day[TARGET] > 0)
    assert frame["has_target"].sum() == len(frame) - 1
    assert frame.iloc[-1]["date"].date() == dt.date(2013, 3, 1)


def test_market_features_need_the_index() -> None:
    assert "beta_60d" in feature_names(SPEC, True) and "beta_60d" not in feature_names(SPEC, False)
    assert spec_hash(SPEC, True) != spec_hash(SPEC, False)
    assert spec_hash(SPEC, True) != spec_hash(FeatureSettings(rsi_window=10), True)


def test_no_feature_is_missing_or_infinite() -> None:
    frame = compute_features("GOOG", load(SampleSource(), "GOOG"), SPEC)
    values = frame[feature_names(SPEC, False)].to_numpy()
    assert np.isfinite(values).all()
