"""Signals: the variants' precomputed tables, read back as a day's table per variant, and the
pipeline step that writes the day's file once every variant has the new feature set."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ray_app.core.errors import RayAppError
from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.signals import ServedTable, daily_signals, read_scores, write_scores
from ray_app.ops.deploy import write_signals

DATES = np.arange(np.datetime64("2024-01-01"), np.datetime64("2024-01-06"))


def frames(scale: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Three tickers; IBM lacks its first prediction (too little history) and its last day."""
    ibm = np.array([np.nan, 3.0, 1.0, -2.0])
    return {
        "AAPL": (DATES, scale * np.arange(5.0)),
        "MSFT": (DATES, scale * -np.arange(5.0)),
        "IBM": (DATES[:4], scale * ibm),
    }


def stored(tmp_path: Path) -> DataRoot:
    root = DataRoot(str(tmp_path))
    write_scores(root, ServedTable("champion", "m", "1", "fs1"), frames(1.0), "d1")
    write_scores(root, ServedTable("challenger", "m", "2", "fs1"), frames(-1.0), "d2")
    return root


def test_a_days_signals_are_each_tickers_newest_row_ranked_per_variant(tmp_path: Path) -> None:
    root = stored(tmp_path)
    scores = read_scores(root, "m", "1", "fs1")
    assert len(scores) == 13 and scores["predicted_return"].notna().all()  # no NaN rows
    table = daily_signals(root, dt.date(2024, 1, 5))
    champion = table[table["variant"] == "champion"].set_index("ticker")
    assert champion.loc["IBM", "feature_date"] == dt.date(2024, 1, 4)  # its newest row
    assert champion["rank"].to_dict() == {"AAPL": 1, "IBM": 2, "MSFT": 3}
    assert champion.loc["AAPL", "predicted_return"] == 4.0
    challenger = table[table["variant"] == "challenger"].set_index("ticker")
    assert challenger["rank"].to_dict() == {"MSFT": 1, "IBM": 2, "AAPL": 3}
    assert set(challenger["model_version"]) == {"2"}
    early = daily_signals(root, dt.date(2024, 1, 2), ["champion"])
    assert early.set_index("ticker")["predicted_return"].to_dict() == {
        "AAPL": 1.0,
        "IBM": 3.0,
        "MSFT": -1.0,
    }
    with pytest.raises(RayAppError, match="shadow"):
        daily_signals(root, dt.date(2024, 1, 2), ["shadow"])


def test_the_pipeline_step_writes_the_days_file_once_the_variants_have_the_set(
    tmp_path: Path,
) -> None:
    stored(tmp_path)
    settings = Settings(data_root=str(tmp_path), pipeline={"smoke_timeout_s": 0.1})
    serving = ["champion", "challenger"]
    detail = write_signals(settings, "fs1", serving)
    written = pd.read_parquet(tmp_path / "signals" / "daily" / "day=2024-01-05.parquet")
    assert len(written) == 6 and "6 signal(s) as of 2024-01-05" in detail
    with pytest.raises(RayAppError, match="not precomputed feature set fs2"):
        write_signals(settings, "fs2", serving)
    with pytest.raises(RayAppError, match="shadow have not precomputed"):  # no table yet
        write_signals(settings, "fs1", [*serving, "shadow"])
