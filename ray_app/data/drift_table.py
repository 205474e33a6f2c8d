"""The drift table: what ``ray-app drift`` measured, stored for the Serve app to export.

The drift step runs once a day inside a Ray job that then ends, so it cannot keep a gauge
alive; it writes its rows here and the long-lived prediction API reads the newest day and
exports them (``ray_app.serving.quality``). One Parquet file per day under
``monitoring/drift/day=YYYY-MM-DD/``, beside its HTML report, and a ``_latest.json`` pointer
written last, so a reader never sees half a day.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

from ray_app.core.storage import DataRoot

DRIFT = ("monitoring", "drift")
LATEST = "_latest.json"
TABLE_FILE = "drift.parquet"
REPORT_FILE = "drift.html"
FEATURE, PREDICTION = "feature", "prediction"
PREDICTION_NAME = "predicted_return"
# One row per (variant, model version, kind, name): the statistics and what they compared.
COLUMNS = {
    "day": "datetime64[s]",
    "variant": "str",
    "model_name": "str",
    "model_version": "str",
    "kind": "str",  # FEATURE or PREDICTION
    "name": "str",  # the feature, or PREDICTION_NAME
    "psi": "float64",  # NaN: fewer current rows than drift.min_rows
    "ks": "float64",
    "ks_pvalue": "float64",
    "psi_threshold": "float64",
    "ks_threshold": "float64",
    "drifted": "bool",
    "n_reference": "int64",
    "n_current": "int64",
    "reference_start": "datetime64[s]",
    "reference_end": "datetime64[s]",
    "source": "str",  # "prediction_log" or "feature_rows" (the log had nothing that day)
}


def day_folder(day: dt.date) -> tuple[str, ...]:
    return (*DRIFT, f"day={day.isoformat()}")


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=kind) for name, kind in COLUMNS.items()})


def write_drift(root: DataRoot, day: dt.date, table: pd.DataFrame, report_html: str) -> None:
    """Store one day's rows and report, then point ``_latest`` at the day (the commit)."""
    missing = sorted(set(COLUMNS) - set(table.columns))
    if missing:
        raise ValueError(f"drift table lacks column(s) {', '.join(missing)}")
    folder = day_folder(day)
    rows = table[list(COLUMNS)].astype(COLUMNS)
    root.write_parquet(rows, *folder, TABLE_FILE, metadata={"ray_app.day": str(day)})
    _write_text(root, report_html, *folder, REPORT_FILE)
    latest = root.read_json(*DRIFT, LATEST) or {}
    if latest.get("day", "") <= day.isoformat():
        root.write_json({"day": day.isoformat()}, *DRIFT, LATEST)


def _write_text(root: DataRoot, text: str, *parts: str) -> None:
    path = root.path(*parts)
    root.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with root.fs.open_output_stream(path) as out:
        out.write(text.encode())


def read_drift(root: DataRoot, day: dt.date | None = None) -> pd.DataFrame | None:
    """The rows of ``day`` (default: the newest day measured); None when there are none."""
    if day is None:
        latest = root.read_json(*DRIFT, LATEST)
        if latest is None:
            return None
        day = dt.date.fromisoformat(latest["day"])
    parts = (*day_folder(day), TABLE_FILE)
    return root.read_parquet(*parts) if root.exists(*parts) else None


def report_path(root: DataRoot, day: dt.date) -> str:
    """Where the day's HTML report is, as users paste it."""
    return root.display(*day_folder(day), REPORT_FILE)
