"""Live metrics from logged predictions and realised returns, checked against the same
figures computed directly (scipy, numpy) on synthetic days; pending days stay pending."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ray_app.data.live_metrics import COLUMNS, latest_gauges
from ray_app.monitoring.outcomes import live_metrics

TICKERS = [f"T{i}" for i in range(10)]
DAYS = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(25)]


def synthetic(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions of two versions (one also logged as a shadow and asked twice) and the
    realised returns, with the last day's outcome unknown."""
    rng = np.random.default_rng(seed)
    realised = pd.DataFrame(
        [(t, d, rng.normal(0, 0.02)) for d in DAYS for t in TICKERS],
        columns=["ticker", "feature_date", "realised_return"],
    )
    realised.loc[realised["feature_date"] == DAYS[-1], "realised_return"] = np.nan
    rows = []
    for variant, version, role in (("champion", "1", "served"), ("challenger", "2", "shadow")):
        noise = rng.normal(0, 0.02, len(realised))
        pred = 0.3 * realised["realised_return"].fillna(0).to_numpy() + noise
        for (t, d, _), p in zip(realised.itertuples(index=False), pred, strict=True):
            rows.append((variant, role, "m", version, t, d, p))
    preds = pd.DataFrame(
        rows,
        columns=[
            "variant",
            "role",
            "model_name",
            "model_version",
            "ticker",
            "feature_date",
            "predicted_return",
        ],
    )
    repeated = preds[preds["variant"] == "champion"].assign(role="served")
    return pd.concat([preds, repeated], ignore_index=True), realised


def direct(preds: pd.DataFrame, realised: pd.DataFrame, days: list[dt.date]) -> dict[str, float]:
    """The metrics of ``days`` computed straight from their definitions."""
    joined = preds.drop_duplicates(["ticker", "feature_date"]).merge(
        realised, on=["ticker", "feature_date"]
    )
    joined = joined[joined["feature_date"].isin(days)]
    y, p = joined["realised_return"].to_numpy(), joined["predicted_return"].to_numpy()
    per_day = [g for _, g in joined.groupby("feature_date")]
    ls = []
    for g in per_day:
        order = g.sort_values(["predicted_return", "ticker"])
        k = int(np.floor(0.2 * len(g)))
        simple = np.expm1(order["realised_return"].to_numpy())
        ls.append(simple[-k:].mean() - simple[:k].mean())
    return {
        "n": len(joined),
        "directional_accuracy": float(np.mean((y > 0) == (p > 0))),
        "mae": float(np.mean(np.abs(y - p))),
        "ic": float(
            np.mean([stats.pearsonr(g.predicted_return, g.realised_return)[0] for g in per_day])
        ),
        "rank_ic": float(
            np.mean([stats.spearmanr(g.predicted_return, g.realised_return)[0] for g in per_day])
        ),
        "long_short": float(np.mean(ls)),
    }


def test_daily_and_window_metrics_equal_their_definitions() -> None:
    preds, realised = synthetic()
    table = live_metrics(preds, realised, quantile=0.2)
    assert tuple(table.columns) == COLUMNS
    champion = preds[preds["variant"] == "champion"]
    checks = [
        ("1d", DAYS[5], [DAYS[5]]),
        ("20d", DAYS[23], DAYS[4:24]),
        ("60d", DAYS[10], DAYS[:11]),
    ]
    for window, day, days in checks:
        row = table[
            (table["variant"] == "champion") & (table["day"] == day) & (table["window"] == window)
        ].iloc[0]
        expected = direct(champion, realised, days)
        assert row["n"] == expected.pop("n")  # each ticker-day once, however often asked
        for name, value in expected.items():
            assert row[name] == pytest.approx(value, abs=1e-12), (window, name)
        assert not row["pending"]


def test_a_day_without_outcome_is_pending_never_zero() -> None:
    preds, realised = synthetic()
    table = live_metrics(preds, realised, quantile=0.2)
    pending = table[table["pending"]]
    assert set(pending["day"]) == {DAYS[-1]} and set(pending["window"]) == {"1d"}
    assert set(pending["variant"]) == {"champion", "challenger"}
    assert (
        pending[["directional_accuracy", "ic", "rank_ic", "mae", "long_short"]].isna().all().all()
    )
    assert (pending["n"] == len(TICKERS)).all()
    gauges = {(g.variant, g.window): g for g in latest_gauges(table)}
    assert gauges[("champion", "20d")].pending_days == 1
    newest = table[
        (table["variant"] == "champion") & (table["window"] == "20d")
    ]  # scored days only
    assert gauges[("champion", "20d")].values["rank_ic"] == newest.iloc[-1]["rank_ic"]


def test_nothing_logged_gives_an_empty_table() -> None:
    preds, realised = synthetic()
    table = live_metrics(preds.iloc[:0], realised, quantile=0.2)
    assert table.empty and tuple(table.columns) == COLUMNS
