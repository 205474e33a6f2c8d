"""Serving predicts exactly what the registered pyfunc predicts, batched or not."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from ray_app.core.settings import Settings
from ray_app.models.families import TrainedModel, names
from ray_app.registry.integrity import RegistryError
from ray_app.serving.args import ServeArgs
from ray_app.serving.features import FeatureTable
from ray_app.serving.loader import RegistryLoader, ServedModel, import_loader
from ray_app.serving.predictor import ColumnSelector, Job, predict_jobs
from tests.unit.test_models import COLUMNS as PANEL_COLUMNS
from tests.unit.test_models import panel, random_model

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


def registered(settings: Settings, model: TrainedModel) -> int:
    """``model`` logged and registered (its files' sha256 as tags) in the SQLite registry
    under ``settings``'s data root; its version number."""
    from ray_app.registry.tracking import connect_mlflow
    from ray_app.registry.versions import log_model, register_challenger

    with mlflow.start_run(experiment_id=connect_mlflow(settings)) as run:
        uri = log_model(model, panel(n_days=30))
    return register_challenger(settings, uri, run.info.run_id, {})


@pytest.mark.parametrize("kept_by", ["cluster", "registry"])
def test_the_node_cache_serves_a_version_only_while_its_files_match_their_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, kept_by: str
) -> None:
    """A replica that loads a version again takes the node's cached copy instead of
    downloading it, once the copy's files match the hashes recorded for the version: those the
    cluster kept when a replica downloaded it (the registry is not asked), else the registry's
    tags. A changed copy is refused and replaced by the registry's checked files."""
    import ray.experimental.internal_kv  # noqa: F401  (Ray's loggers set up: the replica's)

    from ray_app.registry import versions as registry
    from ray_app.serving import loader as loader_module

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # set, not only the variable: another test may have set the process's URI already
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)
    monkeypatch.setattr(logging.getLogger("ray"), "propagate", True)  # for caplog
    settings = Settings(data_root=str(tmp_path / "data"))
    version = registered(settings, random_model("mlp", PANEL_COLUMNS))
    downloads: list[Path] = []
    download = registry._model_files

    def counted(model_uri: str, into: Path) -> Path:
        downloads.append(into)
        return download(model_uri, into)

    monkeypatch.setattr(registry, "_model_files", counted)
    if kept_by == "cluster":  # Ray's key-value store, as a replica has it
        store: dict[str, dict[str, str]] = {}
        monkeypatch.setattr(loader_module, "known_hashes", store.get)
        monkeypatch.setattr(loader_module, "remember_hashes", store.__setitem__)
    loader = RegistryLoader(ServeArgs(data_root=settings.data_root))
    first = loader("challenger")
    assert (first.version, len(downloads)) == (version, 1)
    if kept_by == "cluster":

        def not_asked(*args: object) -> None:
            raise AssertionError("the registry was asked for the hashes the cluster keeps")

        monkeypatch.setattr(registry, "recorded_hashes", not_asked)
    again = loader(str(version))  # a restarted replica, pinned to the version: no download
    assert len(downloads) == 1
    x = np.random.default_rng(0).normal(size=(3, first.window, len(first.columns)))
    assert np.array_equal(again.predict(x), first.predict(x))

    cached = next((tmp_path / f"ray-app-models-{os.getuid()}").glob(f"*/{version}"))
    weights = cached / "weights.npz"
    weights.write_bytes(weights.read_bytes() + b"\0")  # the copy changed on the node
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        restored = loader(str(version))
    assert len(downloads) == 2 and np.array_equal(restored.predict(x), first.predict(x))
    assert "weights.npz do not match the sha256 recorded at registration" in caplog.text
    assert loader(str(version)).version == version and len(downloads) == 2  # cached again

    other = RegistryLoader(ServeArgs(data_root=str(tmp_path / "other")))
    with pytest.raises(RegistryError):
        other(str(version))  # another registry's version is another model: asked, not cached


def test_the_model_cache_is_used_only_when_it_is_this_users_private_folder(
    tmp_path: Path,
) -> None:
    """A folder others can write is not used for the cache (whatever they put there would be
    refused, at the cost of a download): made private when missing, refused when group- or
    world-writable."""
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
