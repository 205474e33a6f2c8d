"""Where the A/B evidence reads from: the prediction log, the outcomes, the variants' scores.

- The prediction log: ``<data_root>/predictions/day=YYYY-MM-DD/*.parquet``, one row per answered
  ticker prediction (``LOG_COLUMNS``), written by the serving app.
- Outcomes: the realised next-day return of each ticker-day, which is the training target
  (``target_ret``, the next bar's log return) of the newest feature set, so a live loss is the
  loss training minimised; a ticker-day whose next bar is not in yet is absent (pending).
- Precomputed predictions: what each variant's model version predicts for every ticker on the
  day it served, computed exactly as the variants precompute them (``score_frames`` over the
  serving feature table), so champion, challenger and shadow are paired on every ticker-day,
  not only on the ones clients asked for.
"""

from __future__ import annotations

import datetime as dt
from typing import cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.feature_store import load_feature_set
from ray_app.data.features import TARGET
from ray_app.monitoring.ab import FRAME_COLUMNS

LOG = "predictions"
LOG_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("client", pa.string()),
        ("variant", pa.string()),
        ("role", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("ticker", pa.string()),
        ("feature_date", pa.date32()),
        ("predicted_return", pa.float64()),
        ("source", pa.string()),
    ]
)
LOG_COLUMNS = LOG_SCHEMA.names


def read_log(root: DataRoot, start: dt.date | None, end: dt.date | None) -> pd.DataFrame:
    """The prediction log's rows whose feature date is in [start, end] (None: open), with
    exactly ``LOG_COLUMNS``; an empty frame of that schema when there is none."""
    if not root.exists(LOG):
        return LOG_SCHEMA.empty_table().to_pandas()
    dataset = ds.dataset(root.path(LOG), filesystem=root.fs, format="parquet", partitioning="hive")
    where = None
    if start is not None:
        where = ds.field("feature_date") >= pa.scalar(start, pa.date32())
    if end is not None:
        upper = ds.field("feature_date") <= pa.scalar(end, pa.date32())
        where = upper if where is None else where & upper
    table = dataset.to_table(columns=LOG_COLUMNS, filter=where)
    return table.cast(LOG_SCHEMA).to_pandas()


def realised_returns(
    settings: Settings, start: dt.date | None = None, end: dt.date | None = None
) -> pd.DataFrame:
    """(ticker, feature_date, realised_return) of every ticker-day whose next bar is known,
    from the newest feature set."""
    frame, _ = load_feature_set(DataRoot(settings.data_root), training=True)
    out = pd.DataFrame(
        {
            "ticker": frame["ticker"].astype(str),
            "feature_date": pd.to_datetime(frame["date"]).dt.date,
            "realised_return": frame[TARGET].astype(float),
        }
    )
    keep = np.ones(len(out), dtype=bool)
    if start is not None:
        keep &= out["feature_date"] >= start
    if end is not None:
        keep &= out["feature_date"] <= end
    return out[keep].reset_index(drop=True)


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
    the newest feature set: features are point in time, so an older day's row is the row
    the variant served that day."""
    from ray_app.registry.versions import load_version
    from ray_app.serving.features import FeatureTable
    from ray_app.serving.loader import TorchModel
    from ray_app.serving.predictor import ColumnSelector, ServingModel, score_frames

    trained = load_version(settings, int(version))
    model = cast(ServingModel, TorchModel(settings.mlflow.model_name, int(version), trained))
    table = FeatureTable.load(settings)
    preds = score_frames(model, ColumnSelector(model.columns), tuple(table.columns), table.frames)
    parts = [
        pd.DataFrame(
            {
                "ticker": ticker,
                "feature_date": table.frames[ticker][0].astype("datetime64[D]").astype(object),
                "predicted_return": values,
            }
        )
        for ticker, values in preds.items()
    ]
    frame = pd.concat(parts, ignore_index=True).dropna(subset=["predicted_return"])
    frame.insert(0, "model_version", str(version))
    return frame
