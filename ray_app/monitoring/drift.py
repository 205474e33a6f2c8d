"""Daily drift of what is served against what the serving model was trained on.

For each model a variant served on the day, the feature rows it answered from (the prediction
log's ticker and feature date, looked up in the feature store) are compared, feature by
feature, with the rows of that model's training window (the ``feature_version``,
``train_start`` and ``train_end`` tags of its registered version), by the population stability
index and the two-sample Kolmogorov-Smirnov statistic. The predicted returns it served are
compared the same way with its predictions over the training window. A day without logged
predictions is measured on the day's feature rows and the champion's predictions for them.

Why not Evidently: version 0.7.23 installs beside Ray 2.60, but ``import evidently`` fails
with pandas 3 (it imports ``infer_dtype_from_object`` from ``pandas.core.dtypes.common``,
which pandas 3 removed). PSI is a few lines of numpy, KS is ``scipy.stats.ks_2samp`` (scipy
comes with MLflow in the training image), and the report is plain HTML.

The rows go to ``ray_app.data.drift_table`` (Parquet and the HTML report under the data
root), which the prediction API exports as the ``ray_app_drift_*`` gauges.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ray_app.core.errors import RayAppError
from ray_app.core.settings import DriftSettings, Settings
from ray_app.core.storage import DataRoot
from ray_app.data.drift_table import (
    COLUMNS,
    FEATURE,
    PREDICTION,
    PREDICTION_NAME,
    report_path,
    write_drift,
)
from ray_app.data.feature_store import feature_manifest, load_feature_set
from ray_app.data.predictions import read_predictions
from ray_app.models.families import TrainedModel
from ray_app.registry.versions import (
    CHALLENGER,
    CHAMPION,
    TRAIN_END,
    TRAIN_START,
    champion_version,
    load_version,
    version_lineage,
)

EPS = 1e-4  # share given to an empty PSI bin: the index stays finite
HISTORY_DAYS = 400  # feature rows read before the first day measured (calendar days) ...
HISTORY_SESSIONS = 250  # ... enough for a model whose input reads this many rows back
REFERENCES = ("monitoring", "drift", "references")
REFERENCES_KEPT = 8  # model versions per registered model whose reference is kept
REFERENCE_KEY = "ray_app.reference"  # feature version and row limit it was built with
PREDICTIONS = "_reference_prediction"
PREDICT_ROWS = 50_000  # feature rows scored at once
LOG, FEATURE_ROWS = "prediction_log", "feature_rows"
LogReader = Callable[[DataRoot, dt.date, dt.date], pd.DataFrame]


class DriftError(RayAppError):
    """Nothing to measure: no feature rows on or before the day, or no model to compare."""


def psi(reference: np.ndarray, current: np.ndarray, bins: int) -> float:
    """Population stability index of ``current`` against ``reference``, over ``bins`` bins cut
    at the reference's quantiles: sum((c - r) * ln(c / r)) over the bins' shares."""
    ref, cur = _finite(reference), _finite(current)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    shares = [
        np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
        / len(values)
        for values in (ref, cur)
    ]
    r, c = (np.clip(share, EPS, None) for share in shares)
    return float(np.sum((c - r) * np.log(c / r)))


def ks(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """The two-sample Kolmogorov-Smirnov statistic and its p-value."""
    from scipy.stats import ks_2samp

    result = ks_2samp(_finite(reference), _finite(current))
    return float(result.statistic), float(result.pvalue)


def _finite(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[np.isfinite(array)]


@dataclass
class Served:
    """What one variant served over the window: its model and the rows it answered from
    (``ticker``, ``date``, ``predicted_return``; NaN predictions are computed here)."""

    variant: str
    model_name: str
    version: int
    rows: pd.DataFrame


@dataclass
class Reference:
    """A model's training window: its feature rows and its predictions over them."""

    frame: pd.DataFrame
    predictions: np.ndarray
    start: pd.Timestamp
    end: pd.Timestamp


@dataclass
class DriftResult:
    """One day's drift: the rows stored (``ray_app.data.drift_table.COLUMNS``), where the
    served rows came from, and where the HTML report is."""

    day: dt.date
    source: str
    table: pd.DataFrame
    report: str

    @property
    def drifted(self) -> pd.DataFrame:
        return self.table[self.table["drifted"]]


def run_drift(
    settings: Settings, day: dt.date | None = None, read_log: LogReader | None = None
) -> DriftResult:
    """Measure, store and report the drift of ``day`` (default: today, UTC).

    ``read_log`` reads the prediction log between two days (default: the log's own reader).
    """
    day = day or dt.datetime.now(dt.timezone.utc).date()
    root = DataRoot(settings.data_root)
    cfg = settings.drift
    start = day - dt.timedelta(days=cfg.window_days - 1)
    log = (read_log or _read_log)(root, start, day)
    served = log[log["role"] == "served"] if len(log) else log
    features, whole = _recent_features(root, cfg, day, served)
    if len(served):
        source, groups = LOG, _served_groups(served, features)
    else:
        source, groups = FEATURE_ROWS, [_day_rows(settings, features, day)]
    tables: list[pd.DataFrame] = []
    references: dict[tuple[str, int], tuple[TrainedModel, Reference]] = {}
    for group in groups:
        model, reference = _reference(settings, group, references)
        if not whole and model.window > HISTORY_SESSIONS:  # its inputs reach further back
            (features, _), whole = load_feature_set(root, training=False), True
        rows = _with_predictions(group.rows, model, features)
        tables.append(_measure(cfg, group, model.columns, rows, reference, day, source))
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=[*COLUMNS])
    write_drift(root, day, table, render_report(table, day, source))
    return DriftResult(day, source, table, report_path(root, day))


def _recent_features(
    root: DataRoot, cfg: DriftSettings, day: dt.date, served: pd.DataFrame
) -> tuple[pd.DataFrame, bool]:
    """The newest feature set's rows from ``HISTORY_DAYS`` before the first row measured,
    and whether that is the whole set: the rows measured and the input windows of models
    that read up to ``HISTORY_SESSIONS`` rows back, without reading twenty years."""
    manifest = feature_manifest(root)
    first = min(day, manifest.last_date) - dt.timedelta(days=2 * cfg.window_days + 10)
    if len(served):
        first = min(first, pd.to_datetime(served["feature_date"]).min().date())
    since = first - dt.timedelta(days=HISTORY_DAYS)
    if since <= manifest.first_date:
        return load_feature_set(root, training=False)[0], True
    return load_feature_set(root, training=False, since=since)[0], False


def _read_log(root: DataRoot, start: dt.date, end: dt.date) -> pd.DataFrame:
    """The prediction log between two days (``ray_app.data.predictions``)."""
    return read_predictions(root, start, end)


def _served_groups(log: pd.DataFrame, features: pd.DataFrame) -> list[Served]:
    """One group per (variant, model, version) in the log, with its rows' feature values."""
    keys = features[["ticker", "date"]]
    groups = []
    for (variant, name, version), rows in log.groupby(
        ["variant", "model_name", "model_version"], sort=True
    ):
        answered = pd.DataFrame(
            {
                "ticker": rows["ticker"].astype(str),
                "date": pd.to_datetime(rows["feature_date"]).astype(keys["date"].dtype),
                "predicted_return": rows["predicted_return"].astype("float64"),
            }
        )
        groups.append(Served(str(variant), str(name), int(str(version)), answered))
    return groups


def _day_rows(settings: Settings, features: pd.DataFrame, day: dt.date) -> Served:
    """The feature rows of the newest ``window_days`` feature dates on or before ``day``,
    for the champion (the challenger before there is one), whose predictions are computed."""
    dates = _dates(features)
    dates = dates[dates <= pd.Timestamp(day)]
    if not len(dates):
        raise DriftError(f"no feature rows on or before {day}: nothing to measure")
    chosen = dates[-settings.drift.window_days :]
    rows = features.loc[features["date"].isin(chosen), ["ticker", "date"]]
    rows = rows.assign(predicted_return=np.nan).reset_index(drop=True)
    champion = champion_version(settings)
    alias = CHAMPION if champion is not None else CHALLENGER
    version, _ = version_lineage(settings, alias)
    return Served(alias, settings.mlflow.model_name, version, rows)


def _reference(
    settings: Settings, group: Served, cache: dict[tuple[str, int], tuple[TrainedModel, Reference]]
) -> tuple[TrainedModel, Reference]:
    """The group's model and its training window (feature rows and predictions), once per
    model version: read from the data root when an earlier run kept it."""
    key = (group.model_name, group.version)
    if key in cache:
        return cache[key]
    scoped = settings.model_copy(deep=True)
    scoped.mlflow.model_name = group.model_name
    model = load_version(scoped, group.version)
    root, limit = DataRoot(settings.data_root), settings.drift.reference_max_rows
    reference = _kept_reference(root, group, model, limit)
    if reference is None:
        reference = _build_reference(scoped, group, model, limit)
        _keep_reference(root, group, model, reference, limit)
    cache[key] = (model, reference)
    return model, reference


def _build_reference(
    settings: Settings, group: Served, model: TrainedModel, limit: int
) -> Reference:
    """The model's training window read from its feature set, its predictions over it, and a
    seeded sample of ``limit`` rows of each."""
    _, lineage = version_lineage(settings, group.version)
    frame, _ = load_feature_set(DataRoot(settings.data_root), model.feature_version)
    if TRAIN_START in lineage and TRAIN_END in lineage:
        window = frame["date"].between(
            pd.Timestamp(lineage[TRAIN_START]), pd.Timestamp(lineage[TRAIN_END])
        )
        frame = frame[window]  # versions registered before the tags: the whole feature set
    if frame.empty:
        raise DriftError(f"model {group.model_name} v{group.version}: empty training window")
    predictions = _predict(model, frame)["pred"].to_numpy(dtype=np.float64)
    if len(frame) > limit:
        frame = frame.sample(limit, random_state=0)
    if len(predictions) > limit:
        predictions = np.random.default_rng(0).choice(predictions, limit, replace=False)
    return Reference(frame, predictions, frame["date"].min(), frame["date"].max())


def _reference_path(group: Served) -> tuple[str, ...]:
    """Where a model version's reference is kept (the name hashed: any registry name)."""
    name = hashlib.sha256(group.model_name.encode()).hexdigest()[:16]
    return (*REFERENCES, name, f"{group.version}.parquet")


def _kept_reference(
    root: DataRoot, group: Served, model: TrainedModel, limit: int
) -> Reference | None:
    """The reference an earlier run kept for this version, if it was built as it would be
    now (same feature set, same row limit); None otherwise.

    A registered version never changes, and neither do its feature set and its training
    window, so the reference is built once: it reads and scores the whole training window,
    most of a daily drift run's time otherwise (10 s of 11 at 500 tickers x 20 years).
    """
    parts = _reference_path(group)
    if not root.exists(*parts):
        return None
    meta = root.read_metadata(*parts)
    if meta.get(REFERENCE_KEY) != f"{model.feature_version}:{limit}":
        return None
    frame = root.read_parquet(*parts)
    predictions = frame.pop(PREDICTIONS).to_numpy(dtype=np.float64)
    return Reference(frame, predictions, pd.Timestamp(meta["start"]), pd.Timestamp(meta["end"]))


def _keep_reference(
    root: DataRoot, group: Served, model: TrainedModel, reference: Reference, limit: int
) -> None:
    """Store the model's columns of the reference and its predictions (same length: both
    sampled to ``limit``), then drop the oldest versions' beyond ``REFERENCES_KEPT``."""
    frame = reference.frame[model.columns].reset_index(drop=True)
    frame[PREDICTIONS] = reference.predictions
    metadata = {
        REFERENCE_KEY: f"{model.feature_version}:{limit}",
        "start": reference.start.isoformat(),
        "end": reference.end.isoformat(),
    }
    parts = _reference_path(group)
    root.write_parquet(frame, *parts, metadata=metadata)
    kept = sorted(root.list_files(*parts[:-1]), key=lambda f: int(f.split(".")[0]))
    for stale in kept[:-REFERENCES_KEPT]:
        root.delete(*parts[:-1], stale)


def _with_predictions(
    rows: pd.DataFrame, model: TrainedModel, features: pd.DataFrame
) -> pd.DataFrame:
    """The served rows joined to their feature values; predictions missing from the log are
    the model's, computed with enough earlier rows that a sequence model has its window."""
    joined = rows.merge(features, on=["ticker", "date"], how="inner")
    missing = joined["predicted_return"].isna()
    if missing.any():
        dates = _dates(features)
        first = dates.searchsorted(joined.loc[missing, "date"].min())
        since = dates[max(0, first - model.window)]
        wanted = features["ticker"].isin(joined.loc[missing, "ticker"].unique())
        preds = _predict(model, features[wanted & (features["date"] >= since)])
        found = joined[["ticker", "date"]].merge(preds, on=["ticker", "date"], how="left")["pred"]
        joined.loc[missing, "predicted_return"] = found[missing].to_numpy()
    return joined


def _dates(features: pd.DataFrame) -> pd.DatetimeIndex:
    """The feature dates, sorted (an index: numpy cannot search datetime64[ns] by Timestamp)."""
    return pd.DatetimeIndex(features["date"].unique()).sort_values()


def _predict(model: TrainedModel, frame: pd.DataFrame) -> pd.DataFrame:
    """``model.predict_frame`` a few tickers at a time: a sequence model's windows of a whole
    training window at once would not fit in memory."""
    tickers = frame["ticker"].unique()
    per_chunk = max(1, int(PREDICT_ROWS * len(tickers) / max(len(frame), 1)))
    parts = [
        model.predict_frame(frame[frame["ticker"].isin(tickers[i : i + per_chunk])])
        for i in range(0, len(tickers), per_chunk)
    ]
    return pd.concat(parts, ignore_index=True)


def _measure(
    cfg: DriftSettings,
    group: Served,
    columns: list[str],
    rows: pd.DataFrame,
    reference: Reference,
    day: dt.date,
    source: str,
) -> pd.DataFrame:
    """One row per feature and one for the predictions; NaN statistics below ``min_rows``."""
    absent = [c for c in columns if c not in rows]
    if absent:
        raise DriftError(
            f"model {group.model_name} v{group.version} needs feature(s) "
            f"{', '.join(absent)}, which the newest feature set lacks"
        )
    pairs = [(FEATURE, c, reference.frame[c].to_numpy(), rows[c].to_numpy()) for c in columns]
    pairs.append(
        (PREDICTION, PREDICTION_NAME, reference.predictions, rows["predicted_return"].to_numpy())
    )
    records = []
    for kind, name, ref, cur in pairs:
        n_cur, n_ref = len(_finite(cur)), len(_finite(ref))
        enough = n_cur >= cfg.min_rows and n_ref >= cfg.min_rows
        value = psi(ref, cur, cfg.bins) if enough else np.nan
        stat, pvalue = ks(ref, cur) if enough else (np.nan, np.nan)
        psi_limit = cfg.prediction_psi_threshold if kind == PREDICTION else cfg.psi_threshold
        records.append(
            {
                "day": pd.Timestamp(day),
                "variant": group.variant,
                "model_name": group.model_name,
                "model_version": str(group.version),
                "kind": kind,
                "name": name,
                "psi": value,
                "ks": stat,
                "ks_pvalue": pvalue,
                "psi_threshold": psi_limit,
                "ks_threshold": cfg.ks_threshold,
                "drifted": bool(enough and (value > psi_limit or stat > cfg.ks_threshold)),
                "n_reference": n_ref,
                "n_current": n_cur,
                "reference_start": reference.start,
                "reference_end": reference.end,
                "source": source,
            }
        )
    return pd.DataFrame.from_records(records, columns=[*COLUMNS])


# --- the HTML report ---------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { padding: 0.2em 0.8em; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.drifted td { background: #fde2e1; }
.bar { display: inline-block; height: 0.7em; background: #4a7bd0; }
.bar.over { background: #d0473a; }
"""


def render_report(table: pd.DataFrame, day: dt.date, source: str) -> str:
    """A self-contained HTML page: per served model, every statistic against its threshold,
    drifted rows first, each PSI drawn as a bar scaled to its threshold."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Drift {day}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Drift on {day}</h1>",
        f"<p>Served rows from: {html.escape(source)}. "
        f"{int(table['drifted'].sum())} of {len(table)} statistics over their threshold.</p>",
    ]
    for (variant, name, version), rows in table.groupby(
        ["variant", "model_name", "model_version"], sort=True
    ):
        first = rows.iloc[0]
        parts.append(
            f"<h2>{html.escape(str(variant))}: {html.escape(str(name))} "
            f"v{html.escape(str(version))}</h2><p>Reference: training window "
            f"{first['reference_start']:%Y-%m-%d} to {first['reference_end']:%Y-%m-%d}, "
            f"{int(first['n_reference'])} rows; current: {int(first['n_current'])} rows.</p>"
        )
        parts.append(_rows_table(rows.sort_values(["drifted", "psi"], ascending=False)))
    parts.append("</body></html>")
    return "\n".join(parts)


def _rows_table(rows: pd.DataFrame) -> str:
    head = "".join(
        f"<th>{c}</th>" for c in ("name", "kind", "PSI", "", "KS", "KS p-value", "drifted")
    )
    body = []
    for row in rows.to_dict("records"):
        value, limit = float(row["psi"]), float(row["psi_threshold"])
        scale = 0.0 if np.isnan(value) else min(value / limit, 2.0)
        over = " over" if scale > 1 else ""
        bar = f"<span class='bar{over}' style='width:{scale * 60:.0f}px'></span>"
        cells = [
            html.escape(str(row["name"])),
            html.escape(str(row["kind"])),
            _number(value),
            bar,
            _number(float(row["ks"])),
            _number(float(row["ks_pvalue"])),
            "yes" if row["drifted"] else "",
        ]
        css = " class='drifted'" if row["drifted"] else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _number(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.4f}"
