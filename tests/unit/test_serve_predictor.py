"""Serving predicts exactly what the registered pyfunc predicts, batched or not."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ray_app.models.families import TrainedModel, names
from ray_app.serving.args import ServeArgs
from ray_app.serving.features import FeatureTable
from ray_app.serving.loader import RegistryLoader, ServedModel, import_loader
from ray_app.serving.predictor import ColumnSelector, Job, predict_jobs
from tests.unit.test_models import random_model

COLUMNS = ["ret_1d", "vol_20d", "rsi_14", "macd"]
TABLE_COLUMNS = ["macd", "rsi_14", "extra", "vol_20d", "ret_1d"]  # another order, one more


def trained(kind: str, seed: int = 0) -> TrainedModel:
    return random_model(kind, COLUMNS, seed=seed, window=3)


def frame() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    dates = pd.bdate_range("2012-01-02", periods=8)
    rows = [
        {"ticker": t, "date": d, **dict(zip(TABLE_COLUMNS, rng.normal(size=5), strict=True))}
        for t in ("AAPL", "MSFT")
        for d in dates
    ]
    return pd.DataFrame(rows)


def as_table(data: pd.DataFrame) -> FeatureTable:
    frames = {
        t: (g["date"].to_numpy().astype("datetime64[D]"), g[TABLE_COLUMNS].to_numpy())
        for t, g in data.groupby("ticker")
    }
    return FeatureTable("fs", TABLE_COLUMNS, frames)


@pytest.mark.parametrize("kind", names())
def test_batched_serving_matches_the_pyfunc(kind: str) -> None:
    model = trained(kind)
    data = frame()
    expected = model.predict_frame(data).set_index(["ticker", "date"])["pred"]
    served = ServedModel("m", 3, model)
    table, select = as_table(data), ColumnSelector(served.columns)
    dates = sorted(data["date"].unique())[served.window - 1 :]
    jobs = [
        Job(tuple(TABLE_COLUMNS), np.stack([table.window(t, day.date(), served.window).rows]))
        for day in dates
        for t in ("AAPL", "MSFT")
    ]
    results = predict_jobs(served, select, jobs)
    got = [r.preds[0] for r in results]  # type: ignore[index]
    want = [expected[(t, day)] for day in dates for t in ("AAPL", "MSFT")]
    assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert {(r.model, r.version) for r in results} == {("m", 3)}


def test_a_job_with_too_few_rows_asks_for_more() -> None:
    served = ServedModel("m", 1, trained("gru"))
    short = Job(tuple(TABLE_COLUMNS), np.zeros((2, 1, len(TABLE_COLUMNS))))
    full = Job(tuple(TABLE_COLUMNS), np.zeros((1, 3, len(TABLE_COLUMNS))))
    results = predict_jobs(served, ColumnSelector(served.columns), [short, full])
    assert results[0].preds is None and results[0].needs_rows == 3
    assert results[1].preds is not None and len(results[1].preds) == 1


def test_rows_without_the_model_columns_are_refused() -> None:
    select = ColumnSelector(COLUMNS)
    with pytest.raises(ValueError, match="macd"):
        select(("ret_1d", "vol_20d", "rsi_14"))


def test_loader_paths_are_checked() -> None:
    assert import_loader("ray_app.serving.loader:RegistryLoader").__name__ == "RegistryLoader"
    with pytest.raises(ValueError, match="cannot import the model loader"):
        import_loader("ray_app.serving.loader:Nope")


def test_a_loaded_version_comes_back_from_the_node_cache_without_the_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray_app.registry import versions as registry

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    asked: list[str] = []

    def load_version(settings: Any, version: int) -> TrainedModel:
        asked.append(f"load {version}")
        return trained("gru")

    monkeypatch.setattr(registry, "resolve_version", lambda settings, ref: {"champion": 7}[ref])
    monkeypatch.setattr(registry, "load_version", load_version)
    loader = RegistryLoader(ServeArgs(data_root=str(tmp_path / "data")))
    first = loader("champion")
    assert (first.version, asked) == (7, ["load 7"])
    again = loader("7")  # a restarted replica, pinned to the version: no registry call
    assert (again.version, asked) == (7, ["load 7"])
    x = np.random.default_rng(0).normal(size=(3, first.window, len(first.columns)))
    assert np.array_equal(again.predict(x), first.predict(x))
    other = RegistryLoader(ServeArgs(data_root=str(tmp_path / "other")))
    with pytest.raises(KeyError):
        other("7")  # another registry's version 7 is another model: asked, not cached


def test_the_model_cache_is_used_only_when_it_is_this_users_private_folder(
    tmp_path: Path,
) -> None:
    """Cached models skip the registry's hash check, so a folder others can write is not
    trusted: made private when missing, refused when group- or world-writable."""
    from ray_app.serving.loader import private_folder

    fresh = tmp_path / "cache"
    assert private_folder(fresh) == fresh and (fresh.stat().st_mode & 0o777) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert private_folder(shared) is None
    link = tmp_path / "link"
    link.symlink_to(fresh)
    assert private_folder(link) is None  # a planted symlink is no folder of ours
