"""The prediction log: every answered prediction, one Parquet row each, partitioned by day.

Layout: ``<data_root>/predictions/day=YYYY-MM-DD/<file>.parquet``, the day being the UTC day
of the request. Each flush of each ingress replica writes files of its own (the writer's id
and a sequence number name them), so replicas never overwrite each other, and a file appears
whole or not at all (``DataRoot`` writes to a hidden name, then moves it). The folder is a
Hive-partitioned dataset: ``pandas.read_parquet(<root>/predictions)`` and
``ray.data.read_parquet(<root>/predictions)`` read it as it is, on a local root or on s3://.

The live monitor joins these rows with the realised returns (``ray_app.monitoring``); the
writer that batches rows off the request path lives in ``ray_app.serving.prediction_log``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ray_app.core.storage import DataRoot

PREDICTIONS = "predictions"
CLIENT_HASH_CHARS = 16
SCHEMA = pa.schema(
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
COLUMNS = tuple(SCHEMA.names)
ROLES = ("served", "shadow")
SOURCES = ("precomputed", "cache", "live")


@lru_cache(maxsize=65_536)
def client_hash(client_id: str | None) -> str:
    """What the log keeps of a client id: a sha256 hex prefix, never the id itself ("" when
    the request named none). Cached: the same clients come back on every request."""
    if not client_id:
        return ""
    return hashlib.sha256(client_id.encode()).hexdigest()[:CLIENT_HASH_CHARS]


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """One request's predictions from one variant, as the request path hands them over: one
    object per request (rows are spread out only at flush time, off the request path).
    ``sources`` is one source for every ticker or one per ticker."""

    request_id: str
    ts_us: int
    client: str
    variant: str
    role: str
    model_name: str
    model_version: int
    tickers: Sequence[str]
    feature_dates: Sequence[dt.date]
    preds: Sequence[float]
    sources: str | Sequence[str]

    def __len__(self) -> int:
        return len(self.tickers)


def to_table(logged: Sequence[LoggedRequest]) -> pa.Table:
    """The rows of ``logged``, one per ticker, in ``SCHEMA``."""
    counts = [len(r) for r in logged]

    def spread(values: list[object]) -> list[object]:
        return list(np.repeat(np.array(values, dtype=object), counts))

    columns = {
        "request_id": spread([r.request_id for r in logged]),
        "ts": spread([r.ts_us for r in logged]),
        "client": spread([r.client for r in logged]),
        "variant": spread([r.variant for r in logged]),
        "role": spread([r.role for r in logged]),
        "model_name": spread([r.model_name for r in logged]),
        "model_version": spread([str(r.model_version) for r in logged]),
        "ticker": [t for r in logged for t in r.tickers],
        "feature_date": [d for r in logged for d in r.feature_dates],
        "predicted_return": [p for r in logged for p in r.preds],
        "source": [
            s
            for r in logged
            for s in ([r.sources] * len(r) if isinstance(r.sources, str) else r.sources)
        ],
    }
    return pa.table({name: pa.array(columns[name], SCHEMA.field(name).type) for name in COLUMNS})


def write_predictions(root: DataRoot, table: pa.Table, name: str) -> list[str]:
    """Write ``table`` as ``<name>.parquet`` in the folder of each UTC day its rows fall on;
    returns the paths written. ``name`` must be unique per writer and flush."""
    days = pc.cast(pc.cast(table["ts"], pa.timestamp("us")), pa.date32())
    written = []
    for day in sorted(set(days.to_pylist())):
        part = table.filter(pc.equal(days, pa.scalar(day, pa.date32())))
        parts = (PREDICTIONS, f"day={day.isoformat()}", f"{name}.parquet")
        root.write_table(part, *parts)
        written.append(root.display(*parts))
    return written


def _day(folder: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(folder.removeprefix("day="))
    except ValueError:
        return None


def read_predictions(
    root: DataRoot,
    start: dt.date | None = None,
    end: dt.date | None = None,
    columns: list[str] | None = None,
) -> pd.DataFrame:
    """Every logged prediction whose request day (UTC) lies in ``[start, end]`` (either bound
    None: open), with exactly ``COLUMNS`` (or ``columns``: Parquet reads no others); an empty
    frame with them when there is none."""
    tables = [SCHEMA.empty_table().select(columns or SCHEMA.names)]
    for folder in root.list_dirs(PREDICTIONS):
        day = _day(folder)
        if day is None or (start and day < start) or (end and day > end):
            continue
        for file in root.list_files(PREDICTIONS, folder):
            path = root.path(PREDICTIONS, folder, file)
            tables.append(pq.read_table(path, columns=columns, filesystem=root.fs, schema=SCHEMA))
    return pa.concat_tables(tables).to_pandas()
