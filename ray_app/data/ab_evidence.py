"""The A/B evidence table: the daily comparisons of each challenger with the baseline, stored
for the Serve app to export.

The daily ``ab_evidence`` step (``ray_app.monitoring.report.record_daily_evidence``) runs in a
Ray job that ends, so it cannot keep a gauge alive; it writes its comparisons here and every
ingress replica reads them and exports them (``ray_app.serving.quality``). One Parquet file,
replaced whole (written under a temporary name, then moved), so a reader sees one day's
figures or the day before's, never a mix.
"""

from __future__ import annotations

import pandas as pd

from ray_app.core.storage import DataRoot

EVIDENCE = ("monitoring", "ab", "evidence.parquet")
# One row per (source, challenger): the paired comparison with the baseline variant.
COLUMNS = {
    "day": "datetime64[s]",  # the newest feature date the comparison covers
    "source": "str",  # "precomputed" (every ticker-day) or "served" (the prediction log)
    "variant": "str",  # the challenger
    "baseline": "str",
    "days": "int64",
    "ticker_days": "int64",
    "loss_diff": "float64",  # mean daily loss, challenger minus baseline (negative: better)
    "dm_p_value": "float64",
    "rank_ic_diff": "float64",  # challenger minus baseline, with its bootstrap interval
    "rank_ic_diff_low": "float64",
    "rank_ic_diff_high": "float64",
    "verdict": "str",
}


def empty_evidence() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=kind) for name, kind in COLUMNS.items()})


def write_evidence(root: DataRoot, table: pd.DataFrame) -> None:
    """Replace the table with ``table`` (an empty one clears what the ingress exports)."""
    missing = sorted(set(COLUMNS) - set(table.columns))
    if missing:
        raise ValueError(f"A/B evidence table lacks column(s) {', '.join(missing)}")
    root.write_parquet(table[list(COLUMNS)].astype(COLUMNS), *EVIDENCE, metadata={})


def read_evidence(root: DataRoot) -> pd.DataFrame | None:
    """The newest comparisons; None before the first daily step."""
    return root.read_parquet(*EVIDENCE) if root.exists(*EVIDENCE) else None
