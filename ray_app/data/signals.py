"""Signals in bulk: every ticker's prediction of a day, as a table, from the served models.

A variant precomputes its model's prediction for every row of the feature set it serves (the
table the ingress answers from). It persists that table once, here::

    <data_root>/signals/model=<model_name>/version=<model_version>/<feature_version>.parquet
        ticker, feature_date, predicted_return

and records which one it serves in ``<data_root>/signals/variants/<variant>.json``. A model
version and a feature set never change once written, so the table is the same for every
replica that serves them: a replica that restarts, a second one, or the one a rollback returns
to reads it back (``read_served_scores``) rather than predicting every row again. A day's
signals (``daily_signals``) are read from those tables: per ticker, the newest row on or
before the day, exactly the number ``/v1/predict`` with ``as_of`` answers, ranked within each
variant (1: the highest predicted return). ``ray-app signals --date D`` prints or exports them
and writes them to ``<data_root>/signals/daily/day=D.parquet``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ray_app.core.errors import RayAppError
from ray_app.core.storage import DataRoot

SIGNALS = "signals"
VARIANTS = "variants"
DAILY = "daily"
SCORE_SCHEMA = pa.schema(
    [("ticker", pa.string()), ("feature_date", pa.date32()), ("predicted_return", pa.float64())]
)
DIGEST_KEY = "model_digest"
DAILY_COLUMNS = (
    "ticker",
    "feature_date",
    "predicted_return",
    "rank",
    "model_name",
    "model_version",
    "variant",
)


class SignalsError(RayAppError, LookupError):
    """No precomputed table for what was asked."""


@dataclass(frozen=True)
class ServedTable:
    """Which precomputed table a variant serves."""

    variant: str
    model_name: str
    model_version: str
    feature_version: str


def scores_parts(model_name: str, model_version: str, feature_version: str) -> tuple[str, ...]:
    return (
        SIGNALS,
        f"model={model_name}",
        f"version={model_version}",
        f"{feature_version}.parquet",
    )


def write_scores(
    root: DataRoot,
    served: ServedTable,
    frames: dict[str, tuple[np.ndarray, np.ndarray]],
    model_digest: str,
) -> str:
    """``store_scores``, then point the variant at the table."""
    path = store_scores(root, served, frames, model_digest)
    point_variant(root, served)
    return path


def store_scores(
    root: DataRoot,
    served: ServedTable,
    frames: dict[str, tuple[np.ndarray, np.ndarray]],
    model_digest: str,
) -> str:
    """Persist a model's predictions for every row of a feature set (``frames``: per ticker,
    its dates and predictions; rows without a prediction are left out), with the digest of
    the model that made them. No variant is pointed at them: a rollout precomputes the table
    before the variant serves it."""
    tickers, dates, preds = [], [], []
    for ticker, (days, values) in sorted(frames.items()):
        keep = np.isfinite(values)
        tickers += [ticker] * int(keep.sum())
        dates.append(days[keep].astype("datetime64[D]"))
        preds.append(values[keep])
    table = pa.table(
        {
            "ticker": pa.array(tickers, pa.string()),
            "feature_date": pa.array(np.concatenate(dates) if dates else [], pa.date32()),
            "predicted_return": pa.array(np.concatenate(preds) if preds else [], pa.float64()),
        },
        metadata={DIGEST_KEY: model_digest},
    )
    parts = scores_parts(served.model_name, served.model_version, served.feature_version)
    root.write_table(table, *parts)
    return root.display(*parts)


def point_variant(root: DataRoot, served: ServedTable) -> None:
    """Record that ``served.variant`` serves the table of ``served``'s model and feature set."""
    root.write_json(
        {
            "model_name": served.model_name,
            "model_version": served.model_version,
            "feature_version": served.feature_version,
        },
        SIGNALS,
        VARIANTS,
        f"{served.variant}.json",
    )


def read_served_scores(
    root: DataRoot, served: ServedTable, dates: dict[str, np.ndarray], model_digest: str
) -> dict[str, np.ndarray] | None:
    """The persisted table of ``served``'s model and feature set, per ticker aligned with
    ``dates`` (its feature rows' dates; NaN where the table holds no prediction), as
    ``write_scores`` was given it. None when none was persisted, when another model made it
    (another digest: a registry that was reset numbers its versions alike), or when it names
    a ticker or a date the rows lack (it was then not written from these rows)."""
    parts = scores_parts(served.model_name, served.model_version, served.feature_version)
    if not root.exists(*parts):
        return None
    path = root.path(*parts)
    made_by = (pq.read_schema(path, filesystem=root.fs).metadata or {}).get(DIGEST_KEY.encode())
    if made_by != model_digest.encode():
        return None
    table = pq.read_table(path, filesystem=root.fs, schema=SCORE_SCHEMA)
    names = table.column("ticker").combine_chunks().dictionary_encode()
    codes = names.indices.to_numpy()
    days = table.column("feature_date").to_numpy().astype("datetime64[D]")
    preds = table.column("predicted_return").to_numpy()
    out = {ticker: np.full(len(d), np.nan) for ticker, d in dates.items()}
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names.dictionary) + 1))
    for code, ticker in enumerate(names.dictionary.to_pylist()):
        rows = order[bounds[code] : bounds[code + 1]]
        if ticker not in dates:
            return None
        at = np.searchsorted(dates[ticker], days[rows])
        if (at >= len(dates[ticker])).any() or (dates[ticker][at] != days[rows]).any():
            return None
        out[ticker][at] = preds[rows]
    return out


def read_scores(
    root: DataRoot, model_name: str, model_version: str, feature_version: str
) -> pd.DataFrame:
    """A model version's precomputed predictions over feature set ``feature_version``."""
    parts = scores_parts(model_name, str(model_version), feature_version)
    if not root.exists(*parts):
        raise SignalsError(
            f"no precomputed predictions of {model_name} v{model_version} for feature set "
            f"{feature_version} under {root.display(SIGNALS)}: a variant serving it writes them"
        )
    return pq.read_table(root.path(*parts), filesystem=root.fs, schema=SCORE_SCHEMA).to_pandas()


def served_tables(root: DataRoot) -> list[ServedTable]:
    """The table each variant serves now, by variant name."""
    out = []
    for name in root.list_files(SIGNALS, VARIANTS):
        if not name.endswith(".json"):
            continue
        found = root.read_json(SIGNALS, VARIANTS, name) or {}
        out.append(
            ServedTable(
                name.removesuffix(".json"),
                str(found["model_name"]),
                str(found["model_version"]),
                str(found["feature_version"]),
            )
        )
    return out


def daily_signals(root: DataRoot, day: dt.date, variants: list[str] | None = None) -> pd.DataFrame:
    """Every ticker's prediction as of ``day`` from each variant (default: all of them; the
    champion and the challenger), with its rank among that variant's (1: highest)."""
    served = [s for s in served_tables(root) if variants is None or s.variant in variants]
    missing = sorted(set(variants or []) - {s.variant for s in served})
    if not served or missing:
        raise SignalsError(
            f"no precomputed predictions for variant(s) {', '.join(missing) or 'any'} under "
            f"{root.display(SIGNALS, VARIANTS)}: they appear once the variants serve a feature set"
        )
    frames = []
    for table in served:
        scores = read_scores(root, table.model_name, table.model_version, table.feature_version)
        asked = scores[scores["feature_date"] <= day]
        newest = asked.sort_values("feature_date").groupby("ticker", sort=True).tail(1)
        frames.append(
            newest.assign(
                rank=newest["predicted_return"].rank(ascending=False, method="first").astype(int),
                model_name=table.model_name,
                model_version=table.model_version,
                variant=table.variant,
            )
        )
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["variant", "rank"], ignore_index=True)[list(DAILY_COLUMNS)]


def write_daily(root: DataRoot, day: dt.date, frame: pd.DataFrame) -> str:
    """Keep ``day``'s signals under the data root (replacing an earlier export of that day)."""
    parts = (SIGNALS, DAILY, f"day={day.isoformat()}.parquet")
    root.write_parquet(frame, *parts, metadata={"day": day.isoformat()})
    return root.display(*parts)
