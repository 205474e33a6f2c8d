"""Where the A/B evidence reads from: the prediction log, the outcomes, the variants' scores.

- The prediction log (``data.predictions``): one row per answered ticker prediction, served
  or shadow, written by the serving app; the A/B report selects by feature date.
- Outcomes (``monitoring.outcomes.realised_returns``): the realised next-day return of each
  ticker-day, the training target; NaN while the next bar is not in (pending).
- Precomputed predictions (``data.signals``): what each variant's model version predicts for
  every ticker on the day it served, as the variants persisted them when they precomputed
  them, so champion, challenger and shadow are paired on every ticker-day, not only on the
  ones clients asked for. A version whose table is missing (written by an older build, or
  removed) is scored here the same way (``score_frames`` over the serving feature table).
"""

from __future__ import annotations

import datetime as dt
from typing import cast

import pandas as pd

from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.predictions import PREDICTIONS, read_predictions
from ray_app.data.signals import SIGNALS, read_scores
from ray_app.monitoring.ab import FRAME_COLUMNS

LOG = PREDICTIONS


def read_log(root: DataRoot, start: dt.date | None, end: dt.date | None) -> pd.DataFrame:
    """The prediction log's rows whose feature date is in [start, end] (None: open).

    The log is partitioned by request day: a replay asks about past feature dates today."""
    log = read_predictions(root)
    keep = pd.Series(True, index=log.index)
    if start is not None:
        keep &= log["feature_date"] >= start
    if end is not None:
        keep &= log["feature_date"] <= end
    return log[keep].reset_index(drop=True)


def served_predictions(log: pd.DataFrame) -> pd.DataFrame:
    """The log's answers (served and shadow) as ``FRAME_COLUMNS``."""
    return log[FRAME_COLUMNS].astype({"model_version": str}).reset_index(drop=True)


def served_versions(log: pd.DataFrame) -> pd.DataFrame:
    """(variant, feature_date, model_version): the version that answered most of a variant's
    rows for a feature date (a rollout mid-day leaves a few rows of the old one)."""
    counts = log.groupby(["variant", "feature_date", "model_version"]).size()
    top = counts.reset_index(name="rows").sort_values("rows", ascending=False, kind="stable")
    return (
        top.drop_duplicates(["variant", "feature_date"])
        .drop(columns="rows")
        .sort_values(["variant", "feature_date"])
        .reset_index(drop=True)
    )


def precomputed_predictions(settings: Settings, log: pd.DataFrame) -> pd.DataFrame:
    """Every ticker's prediction from the version each variant served on each feature date
    of ``log``, as ``FRAME_COLUMNS``."""
    versions = served_versions(log)
    if versions.empty:
        return pd.DataFrame(columns=FRAME_COLUMNS)
    scores = pd.concat(
        [version_scores(settings, v) for v in sorted(set(versions["model_version"]))],
        ignore_index=True,
    )
    merged = versions.merge(scores, on=["model_version", "feature_date"], how="inner")
    return merged[FRAME_COLUMNS]


def version_scores(settings: Settings, version: str) -> pd.DataFrame:
    """(model_version, ticker, feature_date, predicted_return) of ``version`` for every row of
    the feature sets its variants served (features are point in time: a day's row is the same
    in every later set, so any one of them gives the day's prediction)."""
    root = DataRoot(settings.data_root)
    folder = (SIGNALS, f"model={settings.mlflow.model_name}", f"version={version}")
    tables = [
        read_scores(root, settings.mlflow.model_name, version, name.removesuffix(".parquet"))
        for name in root.list_files(*folder)
        if name.endswith(".parquet")
    ]
    frame = pd.concat(tables, ignore_index=True) if tables else scored_here(settings, version)
    frame = frame.dropna(subset=["predicted_return"]).drop_duplicates(
        ["ticker", "feature_date"], keep="last"
    )
    return frame.assign(model_version=str(version))[
        ["model_version", "ticker", "feature_date", "predicted_return"]
    ]


def scored_here(settings: Settings, version: str) -> pd.DataFrame:
    """``version``'s predictions for every row of the newest feature set, computed as a
    variant precomputes them (the same model, scaler, columns and windows)."""
    from ray_app.registry.versions import load_version
    from ray_app.serving.features import FeatureTable
    from ray_app.serving.loader import ServedModel
    from ray_app.serving.predictor import ColumnSelector, ServingModel, score_frames

    trained = load_version(settings, int(version))
    model = cast(ServingModel, ServedModel(settings.mlflow.model_name, int(version), trained))
    table = FeatureTable.load(settings)
    preds = score_frames(model, ColumnSelector(model.columns), tuple(table.columns), table.frames)
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "ticker": ticker,
                    "feature_date": table.frames[ticker][0].astype("datetime64[D]").astype(object),
                    "predicted_return": values,
                }
            )
            for ticker, values in preds.items()
        ],
        ignore_index=True,
    )
