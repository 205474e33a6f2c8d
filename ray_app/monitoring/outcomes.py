"""Live quality: served predictions scored against what the market did next.

The label of a daily prediction arrives one trading day later, so the loop closes exactly:
once the next bars are ingested, ``run_monitor`` joins the prediction log
(``data.predictions``) with the realised next-day returns of the raw bars and scores every
variant and model version, per day and over the trailing 20 and 60 scored days. A day's
predictions are those made from that day's features (``feature_date``); each (ticker, day) of
a model version counts once, however many requests asked for it (served and shadow answers
of one version are the same number). A day whose next bar is not in yet is pending: its row
says so and its metrics are NaN, never zero.

Whatever label the model was trained on (``features.label``), its predictions are scored
against the realised next-day log return, the one outcome every label shares: the IC, the
rank IC and the long-short book compare each day's ordering, which an excess-return or a
rank label keeps (they order the day's tickers as their returns do). Directional accuracy
and MAE read the prediction as a return: under the other labels "up" means above the index
or above the day's median, and the error mixes scales, so read them for the next-day return
label only.

Outputs: ``<data_root>/monitoring/live_metrics.parquet`` (``data.live_metrics``), which the
Serve ingress exports as ``ray_app_live_*`` gauges; and MLflow metrics
``live_<variant>_<metric>_<window>`` on the run of each model version, one step per day.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.features import adjusted
from ray_app.data.ingest import latest_manifest, read_bars
from ray_app.data.live_metrics import COLUMNS, METRICS, WINDOWS, write_live_metrics
from ray_app.data.predictions import read_predictions
from ray_app.models.metrics import long_short_weights, pearson_ic, rank_ic
from ray_app.registry.live import MetricPoint, log_points, version_run

GROUP = ["variant", "model_name", "model_version"]
LOGGED = ("monitoring", "mlflow_logged.json")


@dataclass(frozen=True)
class MonitorResult:
    """What one monitor run scored and where it wrote it."""

    predictions: int  # distinct (variant, version, ticker, day) predictions
    scored_days: int  # (variant, version, day) groups with outcomes
    pending_days: int  # (variant, version, day) groups still waiting for theirs
    path: str
    table: pd.DataFrame
    mlflow_points: int


def realised_returns(
    settings: Settings,
    start: dt.date | None = None,
    end: dt.date | None = None,
    tickers: list[str] | None = None,
) -> pd.DataFrame:
    """``ticker, feature_date, realised_return``: the log return from the close of
    ``feature_date`` to the next bar's close, on adjusted prices: the training target
    (``data.features``) of that row. NaN while the next bar is not ingested (pending);
    tickers without stored bars are left out."""
    root = DataRoot(settings.data_root)
    manifest = latest_manifest(root)
    stored = sorted(manifest.tickers) if manifest else []
    wanted = tickers if tickers is not None else stored
    frames = []
    for ticker in wanted:
        if manifest is None or ticker not in manifest.tickers:
            continue
        px = adjusted(read_bars(root, ticker, manifest))
        days = pd.to_datetime(px["date"]).dt.date
        ret = np.log(px["close"]).diff().shift(-1)
        frame = pd.DataFrame({"ticker": ticker, "feature_date": days, "realised_return": ret})
        keep = pd.Series(True, index=frame.index)
        if start is not None:
            keep &= days >= start
        if end is not None:
            keep &= days <= end
        frames.append(frame[keep])
    if not frames:
        return pd.DataFrame(columns=["ticker", "feature_date", "realised_return"])
    return pd.concat(frames, ignore_index=True)


def _long_short(frame: pd.DataFrame, quantile: float) -> pd.Series:
    """Daily return of the long-short book the day's predictions make (gross, simple
    returns); NaN on a day with no ranking to trade (under two tickers, or flat preds)."""
    weights = long_short_weights(frame, quantile)
    simple = frame.assign(simple=np.expm1(frame["target_ret"].to_numpy()))
    simple = simple.pivot(index="date", columns="ticker", values="simple").reindex_like(weights)
    gross = (weights * simple.fillna(0.0)).sum(axis=1)
    return gross.where(weights.abs().sum(axis=1) > 0)


def daily_scores(scored: pd.DataFrame, quantile: float) -> pd.DataFrame:
    """One model version's scored rows (``date, ticker, pred, target_ret``) as per-day sums
    and correlations, indexed by day: what the windows aggregate."""
    hit = (scored["target_ret"] > 0) == (scored["pred"] > 0)
    err = (scored["target_ret"] - scored["pred"]).abs()
    by_day = scored.assign(hit=hit.astype(float), err=err).groupby("date")
    daily = pd.DataFrame(
        {"n": by_day.size(), "hits": by_day["hit"].sum(), "err": by_day["err"].sum()}
    )
    daily["ic"] = pearson_ic(scored).daily
    daily["rank_ic"] = rank_ic(scored).daily
    daily["long_short"] = _long_short(scored, quantile)
    return daily.sort_index()


def window_metrics(daily: pd.DataFrame, days: int) -> pd.DataFrame:
    """Metrics over each day's trailing ``days`` scored days (fewer at the start): row-weighted
    accuracy and MAE, mean daily IC, rank IC and long-short return."""
    sums = daily[["n", "hits", "err"]].rolling(days, min_periods=1).sum()
    means = daily[["ic", "rank_ic", "long_short"]].rolling(days, min_periods=1).mean()
    return pd.DataFrame(
        {
            "n": sums["n"].astype("int64"),
            "directional_accuracy": sums["hits"] / sums["n"],
            "mae": sums["err"] / sums["n"],
            **{c: means[c] for c in ("ic", "rank_ic", "long_short")},
        }
    )


def live_metrics(
    predictions: pd.DataFrame, realised: pd.DataFrame, quantile: float
) -> pd.DataFrame:
    """The live metrics table (``data.live_metrics.COLUMNS``) of logged ``predictions``."""
    keys = [*GROUP, "ticker", "feature_date"]
    distinct = predictions.drop_duplicates(keys)[[*keys, "predicted_return"]]
    joined = distinct.merge(realised, on=["ticker", "feature_date"], how="left")
    rows = []
    for (variant, model, version), group in joined.groupby(GROUP, sort=True):
        known = group["realised_return"].notna()
        tags = {"variant": variant, "model_name": model, "model_version": version}
        pending = sorted(set(group["feature_date"]) - set(group.loc[known, "feature_date"]))
        for day in pending:
            n = int((group["feature_date"] == day).sum())
            nan = dict.fromkeys(METRICS, float("nan"))
            rows.append({**tags, "day": day, "window": "1d", "n": n, **nan, "pending": True})
        if not known.any():
            continue
        scored = group[known].rename(
            columns={
                "feature_date": "date",
                "predicted_return": "pred",
                "realised_return": "target_ret",
            }
        )
        daily = daily_scores(scored, quantile)
        for window, days in WINDOWS.items():
            for day, values in window_metrics(daily, days).iterrows():
                rows.append({**tags, "day": day, "window": window, **values, "pending": False})
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
    table = pd.DataFrame(rows)
    table["n"] = table["n"].astype("int64")
    return table.sort_values(["variant", "model_version", "day", "window"], ignore_index=True)[
        list(COLUMNS)
    ]


def _points(rows: pd.DataFrame, after: dt.date | None) -> list[MetricPoint]:
    """One version's scored rows after day ``after`` as MLflow points (step: day ordinal)."""
    points = []
    for record in rows[~rows["pending"]].to_dict("records"):
        day: dt.date = record["day"]
        if after is not None and day <= after:
            continue
        moment = dt.datetime.combine(day, dt.time(), dt.timezone.utc)
        for name in METRICS:
            value = float(record[name])
            if np.isfinite(value):
                key = f"live_{record['variant']}_{name}_{record['window']}"
                points.append(
                    MetricPoint(key, value, int(moment.timestamp() * 1000), day.toordinal())
                )
    return points


def log_to_mlflow(settings: Settings, table: pd.DataFrame) -> int:
    """Log the days not logged before onto each model version's run; returns the points
    logged. What was logged is recorded under the data root, so a rerun adds only new days."""
    root = DataRoot(settings.data_root)
    logged: dict[str, str] = dict(root.read_json(*LOGGED) or {})
    count = 0
    for (variant, model, version), rows in table.groupby(GROUP, sort=True):
        key = f"{variant}/{model}/{version}"
        last = dt.date.fromisoformat(logged[key]) if key in logged else None
        points = _points(rows, last)
        run_id = version_run(settings, str(model), str(version)) if points else None
        if run_id is None:
            continue
        log_points(settings, run_id, points)
        count += len(points)
        logged[key] = max(rows.loc[~rows["pending"], "day"]).isoformat()
    root.write_json(logged, *LOGGED)
    return count


def run_monitor(settings: Settings, mlflow: bool = True) -> MonitorResult:
    """The ``monitor`` step: score every logged prediction whose outcome is known, write the
    live metrics table and log the new days to MLflow."""
    root = DataRoot(settings.data_root)
    predictions = read_predictions(root)
    tickers = sorted(set(predictions["ticker"]))
    realised = realised_returns(settings, tickers=tickers)
    table = live_metrics(predictions, realised, settings.evaluate.quantile)
    path = write_live_metrics(root, table)
    points = log_to_mlflow(settings, table) if mlflow and not table.empty else 0
    day_rows = table[table["window"] == "1d"]
    return MonitorResult(
        predictions=len(predictions.drop_duplicates([*GROUP, "ticker", "feature_date"])),
        scored_days=int((~day_rows["pending"]).sum()) if len(day_rows) else 0,
        pending_days=int(day_rows["pending"].sum()) if len(day_rows) else 0,
        path=path,
        table=table,
        mlflow_points=points,
    )
