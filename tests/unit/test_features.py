"""Features: point in time (no look-ahead) on real bars, the Alpha-style set, the next-day
target and the label options."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ray_app.core.settings import FeatureSettings, IngestSettings
from ray_app.core.storage import DataRoot
from ray_app.data.features import (
    EXCESS_TARGET,
    TARGET,
    check_spec,
    compute_features,
    feature_columns,
    feature_names,
    label_column,
    spec_hash,
)
from ray_app.data.sources import BAR_COLUMNS, CsvSource, SampleSource
from ray_app.data.validation import validate_bars

SPEC = FeatureSettings()
ALPHA = FeatureSettings(alpha_features=True)


def load(source: CsvSource | SampleSource, ticker: str) -> pd.DataFrame:
    return validate_bars(ticker, source.fetch(ticker, None, None).bars, IngestSettings())[0]


def assert_point_in_time(
    ticker: str,
    bars: pd.DataFrame,
    index: pd.DataFrame | None,
    cuts: list[str],
    spec: FeatureSettings = SPEC,
) -> None:
    full = compute_features(ticker, bars, spec, index)
    columns = feature_names(spec, index is not None)
    for cut in map(pd.Timestamp, cuts):
        cut_index = None if index is None else index[index["date"] <= cut]
        partial = compute_features(ticker, bars[bars["date"] <= cut], spec, cut_index)
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


def test_the_alpha_set_and_the_excess_label_have_no_look_ahead_on_real_kaggle_bars(
    kaggle_dir: Path,
) -> None:
    source = CsvSource(kaggle_dir)
    spy = load(source, "SPY")
    spec = ALPHA.model_copy(update={"label": "next_excess_return"})
    assert "resid_mom_20" in feature_names(spec, True)
    for ticker in ("AIG", "NVDA"):
        assert_point_in_time(ticker, load(source, ticker), spy, ["2008-10-15", "2017-06-01"], spec)


def test_the_alpha_set_has_no_look_ahead_on_bundled_sample_bars() -> None:
    bars = load(SampleSource(), "GOOG")
    assert_point_in_time("GOOG", bars, None, ["2006-03-31", "2010-05-06"], ALPHA)


def bar_frame(rows: list[tuple[float, float, float, float, float]]) -> pd.DataFrame:
    """Validated-looking bars from (open, high, low, close, volume), on business days."""
    frame = pd.DataFrame(rows, columns=["open", "high", "low", "close", "volume"])
    frame.insert(0, "date", pd.bdate_range("2024-01-01", periods=len(rows)))
    return frame.assign(adj_close=frame["close"])


def test_alpha_features_by_hand() -> None:
    """A rising series with constant volume: the bar's shape, the gaps and positions, and
    correlations that are 0 where volume never moved, on the last of 70 bars."""
    rows = [(100.0 + i, 102.0 + i, 99.0 + i, 101.0 + i, 1000.0) for i in range(70)]
    spec = ALPHA.model_copy(update={"alpha_windows": [5]})
    last = compute_features("UP", bar_frame(rows), spec).iloc[-1]
    assert last["kbar_body"] == pytest.approx(1 / 169)
    assert last["kbar_range"] == pytest.approx(3 / 169)
    assert last["kbar_upper"] == pytest.approx(1 / 169)
    assert last["kbar_lower"] == pytest.approx(1 / 169)
    assert last["kbar_close_pos"] == pytest.approx((170 - 169.5) / 3)
    assert last["ma_gap_5"] == pytest.approx(np.log(170 / 168))
    assert last["volume_ratio_5"] == pytest.approx(0.0)
    assert last["corr_pv_5"] == 0.0 and last["corr_rv_5"] == 0.0  # flat volume
    assert last["range_pos_5"] == pytest.approx((170 - (171 + 164) / 2) / (171 - 164))
    assert last["since_high_5"] == 0.0 and last["since_low_5"] == 1.0


def test_since_high_counts_to_the_most_recent_high() -> None:
    closes = [10.0] * 60 + [12.0, 11.0, 12.0, 11.0, 10.5]
    rows = [(c, c, c, c, 1000.0 + i) for i, c in enumerate(closes)]
    spec = ALPHA.model_copy(update={"alpha_windows": [5]})
    last = compute_features("X", bar_frame(rows), spec).iloc[-1]
    assert last["since_high_5"] == pytest.approx(2 / 4)  # the later of two equal highs
    assert last["since_low_5"] == 0.0


def test_the_excess_label_is_the_return_over_the_index_between_the_same_closes() -> None:
    """IBM stands in for the index; a missing index bar leaves the label unknown (never an
    as-of stand-in over other days), so the row is not trained on."""
    source = SampleSource()
    bars, index = load(source, "MSFT"), load(source, "IBM")
    gap = index["date"].iloc[900]
    index = index[index["date"] != gap]
    spec = SPEC.model_copy(update={"label": "next_excess_return"})
    frame = compute_features("MSFT", bars, spec, index).set_index("date")
    adj, idx = bars.set_index("date")["adj_close"], index.set_index("date")["adj_close"]
    day = frame.index[300]
    nxt = adj.index[adj.index.get_loc(day) + 1]
    own, market = np.log(adj[nxt] / adj[day]), np.log(idx[nxt] / idx[day])
    assert frame.loc[day, EXCESS_TARGET] == pytest.approx(own - market)
    assert frame.loc[day, TARGET] == pytest.approx(own)
    before = adj.index[adj.index.get_loc(gap) - 1]
    assert np.isnan(frame.loc[before, EXCESS_TARGET]) and not frame.loc[before, "has_target"]
    assert frame["has_target"].sum() == len(frame) - 3  # the newest row, and the gap's two
    with pytest.raises(ValueError, match="needs the index"):
        compute_features("MSFT", bars, spec)


def test_each_label_names_its_column_and_its_own_feature_version() -> None:
    labels = ("next_return", "next_excess_return", "next_return_csrank")
    specs = [SPEC.model_copy(update={"label": label}) for label in labels]
    assert [label_column(s) for s in specs] == [TARGET, EXCESS_TARGET, "target_ret_csrank"]
    assert len({spec_hash(s, True) for s in specs}) == 3
    assert all(feature_names(s, True) == feature_names(SPEC, True) for s in specs)


def test_defaults_keep_the_feature_versions_built_before_the_new_options() -> None:
    """The hashes the spec had before alpha_features, alpha_windows, cross_sectional and
    label existed: sets built then are still found, not rebuilt."""
    assert spec_hash(SPEC, True) == (
        "79498a8b69505ca230dbc7ffdadc6d22270d7e1d936f0775c858e7a52b2c9cb2"
    )
    assert spec_hash(SPEC, False) == (
        "78baffefe5bc2887d68650ae2b9212d352e7d01305d77e60a819d7a45e980ace"
    )
    assert spec_hash(ALPHA, True) != spec_hash(SPEC, True)
    with_cs = FeatureSettings(cross_sectional=["ret_5d"])
    assert spec_hash(with_cs, True) != spec_hash(SPEC, True)
    assert feature_names(with_cs, False)[-2:] == ["ret_5d_csrank", "ret_5d_cszscore"]


def test_a_spec_that_cannot_be_built_says_why() -> None:
    with pytest.raises(ValueError, match=r"beta_60d .*market features need the index"):
        check_spec(FeatureSettings(cross_sectional=["beta_60d"]), with_market=False)
    with pytest.raises(ValueError, match="kbar_body"):
        check_spec(FeatureSettings(cross_sectional=["kbar_body"]), with_market=True)
    check_spec(FeatureSettings(cross_sectional=["kbar_body"], alpha_features=True), True)


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


@pytest.mark.parametrize("spec", [SPEC, ALPHA], ids=["default", "alpha"])
def test_no_feature_is_missing_or_infinite(spec: FeatureSettings) -> None:
    frame = compute_features("GOOG", load(SampleSource(), "GOOG"), spec)
    values = frame[feature_names(spec, False)].to_numpy()
    assert np.isfinite(values).all()


def test_stored_bars_read_as_arrays_give_the_features_of_the_frame(tmp_path: Path) -> None:
    """The feature pass reads partitions as arrays (``read_columns``), the other callers as
    frames: both give the same features, bit for bit, with the index too."""
    root = DataRoot(str(tmp_path))
    for ticker in ("AAPL", "MSFT"):
        root.write_parquet(load(SampleSource(), ticker), f"{ticker}.parquet", metadata={})
    frames = {t: root.read_parquet(f"{t}.parquet", columns=BAR_COLUMNS) for t in ("AAPL", "MSFT")}
    arrays = {t: root.read_columns(f"{t}.parquet", columns=BAR_COLUMNS) for t in ("AAPL", "MSFT")}
    assert all(isinstance(a, np.ndarray) for a in arrays["AAPL"].values())
    spec = FeatureSettings(alpha_features=True, label="next_excess_return", index_ticker="MSFT")
    from_frames = feature_columns(frames["AAPL"], spec, frames["MSFT"])
    from_arrays = feature_columns(arrays["AAPL"], spec, arrays["MSFT"])
    assert list(from_arrays) == list(from_frames)
    for name, values in from_frames.items():
        assert from_arrays[name].dtype == values.dtype, name
        np.testing.assert_array_equal(from_arrays[name], values, err_msg=name)
