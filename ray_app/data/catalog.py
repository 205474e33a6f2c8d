"""What is stored under the data root: raw data and feature set versions, and how fresh."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.feature_store import FEATURES, latest_feature_version, read_feature_manifest
from ray_app.data.ingest import latest_manifest, manifest_path, raw_versions


def _age_days(day: dt.date, today: dt.date) -> int:
    return (today - day).days


def data_status(settings: Settings, today: dt.date | None = None) -> dict[str, Any]:
    """Versions, paths (the raw manifest, and its tickers' Parquet ``files``, which
    ``pandas.read_parquet`` reads as one frame; a feature set's folder, a Parquet dataset),
    tickers, ranges, rows, freshness, and every raw version kept (``raw_versions``: whether
    it can still be read)."""
    today = today or dt.date.today()
    root = DataRoot(settings.data_root)
    status: dict[str, Any] = {
        "data_root": root.display(),
        "raw": None,
        "raw_versions": [],
        "features": [],
    }
    raw = latest_manifest(root)
    for kept in raw_versions(root):
        status["raw_versions"].append(
            {
                "version": kept.version,
                "parent": kept.parent,
                "created_at": kept.created_at.isoformat(),
                "tickers": len(kept.tickers),
                "rows": kept.rows,
                "last_date": kept.last_date.isoformat(),
                "latest": raw is not None and kept.version == raw.version,
                "unreadable": kept.unreadable,
            }
        )
    if raw is not None:
        status["raw"] = {
            "version": raw.version,
            "path": root.display(*manifest_path(raw.version)),
            "files": [root.display(*e.path.split("/")) for e in raw.tickers.values() if e.path],
            "source": raw.source,
            "created_at": raw.created_at.isoformat(),
            "tickers": sorted(raw.tickers),
            "rows": raw.rows,
            "first_date": raw.first_date.isoformat(),
            "last_date": raw.last_date.isoformat(),
            "days_since_last_bar": _age_days(raw.last_date, today),
        }
    latest = latest_feature_version(root)
    for version in root.list_dirs(FEATURES):
        manifest = read_feature_manifest(root, version)
        if manifest is None:
            continue  # an interrupted build: no manifest, not a feature set
        status["features"].append(
            {
                "version": version,
                "data_version": manifest.data_version,
                "path": root.display(FEATURES, version),
                "latest": version == latest,
                "created_at": manifest.created_at.isoformat(),
                "tickers": sorted(manifest.tickers),
                "rows": manifest.rows,
                "first_date": manifest.first_date.isoformat(),
                "last_date": manifest.last_date.isoformat(),
                "columns": len(manifest.columns),
                "days_since_last_row": _age_days(manifest.last_date, today),
                "current": raw is not None and manifest.data_version == raw.version,
            }
        )
    status["features"].sort(key=lambda f: f["created_at"], reverse=True)
    return status
