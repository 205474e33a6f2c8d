"""The live metrics table: served predictions scored against realised returns.

``ray_app.monitoring.outcomes`` computes it (the ``monitor`` step) and writes it here, at
``<data_root>/monitoring/live_metrics.parquet``; the Serve ingress reads it back to export
gauges (serving may not import ``monitoring``, so the table's layout lives in this layer).
One row per variant, model version, day (the feature date the predictions were made from) and
window (``1d``, ``20d``, ``60d``: that day alone, or the trailing trading days with outcomes).
A day whose next bar is not in yet is ``pending``: its metrics are NaN, never zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ray_app.core.storage import DataRoot

LIVE_METRICS = ("monitoring", "live_metrics.parquet")
WINDOWS = {"1d": 1, "20d": 20, "60d": 60}
METRICS = ("directional_accuracy", "ic", "rank_ic", "mae", "long_short")
SCHEMA = pa.schema(
    [
        ("variant", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("day", pa.date32()),
        ("window", pa.string()),
        ("n", pa.int64()),
        *[(name, pa.float64()) for name in METRICS],
        ("pending", pa.bool_()),
    ]
)
COLUMNS = tuple(SCHEMA.names)


def write_live_metrics(root: DataRoot, frame: pd.DataFrame) -> str:
    """Replace the table with ``frame`` (exactly ``COLUMNS``), atomically."""
    table = pa.Table.from_pandas(frame[list(COLUMNS)], schema=SCHEMA, preserve_index=False)
    root.write_table(table, *LIVE_METRICS)
    return root.display(*LIVE_METRICS)


def read_live_metrics(root: DataRoot) -> pd.DataFrame:
    """The table, or an empty frame with its columns before the first monitor run."""
    if not root.exists(*LIVE_METRICS):
        return SCHEMA.empty_table().to_pandas()
    return pq.read_table(root.path(*LIVE_METRICS), filesystem=root.fs, schema=SCHEMA).to_pandas()


@dataclass(frozen=True)
class LiveGauge:
    """What a gauge shows for one variant and window: the newest scored day of the newest
    model version the variant served, and how many of its days still wait for an outcome."""

    variant: str
    window: str
    values: dict[str, float]
    pending_days: int


def latest_gauges(frame: pd.DataFrame) -> list[LiveGauge]:
    """Per variant and window, the metrics of the newest scored day (of the newest model
    version scored that day); variants with nothing scored yet show only pending days."""
    out = []
    for variant, rows in frame.groupby("variant", sort=True):
        pending = int(rows.loc[rows["pending"] & (rows["window"] == "1d"), "day"].nunique())
        scored = rows[~rows["pending"]]
        for window in WINDOWS:
            these = scored[scored["window"] == window]
            if these.empty:
                continue
            ordered = these.assign(v=pd.to_numeric(these["model_version"], errors="coerce"))
            last = ordered.sort_values(["day", "v"]).iloc[-1]
            values = {name: float(last[name]) for name in METRICS}
            out.append(LiveGauge(str(variant), window, values, pending))
        if scored.empty:
            out.append(LiveGauge(str(variant), "1d", {}, pending))
    return out
