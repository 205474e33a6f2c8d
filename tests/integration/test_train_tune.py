"""Ray Train and Ray Tune on a real feature set, with MLflow on the embedded SQLite store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest

from ray_app.core.settings import SearchDimension, Settings
from ray_app.core.storage import DataRoot
from ray_app.data.feature_store import build_features
from ray_app.data.features import compute_features
from ray_app.data.ingest import read_bars, run_ingest
from ray_app.models.families import spec
from ray_app.registry.tracking import TrackingError
from ray_app.training.train import (
    TrainingData,
    fit_in_process,
    load_training_data,
    results_path,
    run_training,
)
from ray_app.training.tune import SearchError, run_search, trial

pytestmark = pytest.mark.integration


def small_settings(root: Path, **extra: Any) -> Settings:
    settings = Settings(
        data_root=str(root),
        ingest={"source": "sample", "tickers": ["AAPL", "GOOG", "IBM", "MSFT"]},
        split={"n_folds": 2, "test_days": 60, "holdout_months": 3},
        train={"hparams": {"hidden_size": 8, "epochs": 3, "batch_size": 512}},
        tune={
            "num_samples": 4,
            "max_concurrent": 2,
            "search_space": {
                "mlp": {
                    "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
                    "hidden_size": {"type": "choice", "values": [4, 8]},
                },
                "lightgbm": {"num_leaves": {"type": "choice", "values": [4, 8]}},
            },
        },
        **extra,
    )
    return settings


@pytest.fixture(scope="module")
def feature_root(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train") / "data"
    settings = small_settings(root)
    run_ingest(settings)
    build_features(settings)
    return root


@pytest.fixture
def data(feature_root: Path) -> TrainingData:
    return load_training_data(small_settings(feature_root))


LIGHTGBM = {"num_boost_round": 30, "report_every": 10, "min_data_in_leaf": 50}


@pytest.mark.parametrize(("kind", "workers"), [("mlp", 1), ("mlp", 2), ("lightgbm", 2)])
def test_ray_train_with_one_and_two_workers(
    feature_root: Path, data: TrainingData, kind: str, workers: int
) -> None:
    """The torch families on a TorchTrainer; LightGBM data-parallel on a LightGBMTrainer,
    its rows fed by Ray Data (each worker boosts on its shard, one model)."""
    settings = small_settings(feature_root)
    settings.train.num_workers = workers
    model = spec(settings, kind, LIGHTGBM if kind == "lightgbm" else None)
    outcome = run_training(settings, data, model)
    assert outcome.model.kind == kind
    steps = 3 if kind == "mlp" else 30
    assert 1 <= outcome.model.best_epoch <= steps
    every = 1 if kind == "mlp" else 10
    epochs = list(outcome.history["epoch"])
    assert epochs[:-1] == list(range(every, every * len(epochs), every))
    holdout = data.frame[data.split.holdout.test_mask]
    preds = outcome.model.predict_frame(holdout)
    assert len(preds) == len(holdout) and np.isfinite(preds["pred"]).all()


def test_scaler_is_fitted_on_the_training_window_only(
    feature_root: Path, data: TrainingData
) -> None:
    settings = small_settings(feature_root)
    fold = data.tune_fold
    model = fit_in_process(data, settings, fold.train_mask, fold.test_mask)
    train_rows = data.frame.loc[fold.train_mask, data.columns]
    np.testing.assert_allclose(model.scaler.mean, train_rows.mean().to_numpy())


@pytest.mark.parametrize("kind", ["mlp", "gru", "lightgbm"])
def test_predictions_never_look_ahead(feature_root: Path, data: TrainingData, kind: str) -> None:
    """Altering every bar after day t leaves every prediction for days <= t unchanged."""
    settings = small_settings(feature_root)
    settings.train.model = kind
    settings.train.hparams = LIGHTGBM if kind == "lightgbm" else {"epochs": 3, "window": 5}
    fold = data.tune_fold
    model = fit_in_process(data, settings, fold.train_mask, None)
    bars = read_bars(DataRoot(str(feature_root)), "IBM")
    cut = pd.Timestamp("2011-06-30")
    altered = bars.copy()
    later = altered["date"] > cut
    rng = np.random.default_rng(7)
    for column in ("open", "high", "low", "close", "adj_close"):
        altered.loc[later, column] *= rng.uniform(0.5, 1.5, later.sum())
    altered.loc[later, "high"] = altered.loc[later, ["open", "high", "low", "close"]].max(axis=1)
    spec = settings.features
    before = model.predict_frame(compute_features("IBM", bars, spec))
    after = model.predict_frame(compute_features("IBM", altered, spec))
    early = before["date"] <= cut
    assert early.sum() > 1000
    np.testing.assert_array_equal(
        before.loc[early, "pred"], after.loc[after["date"] <= cut, "pred"]
    )
    assert not np.array_equal(before.loc[~early, "pred"], after.loc[after["date"] > cut, "pred"])


def test_a_search_across_families_logs_every_trial_as_a_child_run(
    feature_root: Path, data: TrainingData
) -> None:
    """Each trial picks a family, then that family's hyperparameters; all report one loss."""
    settings = small_settings(feature_root)
    settings.tune.families = ["mlp", "lightgbm"]
    settings.tune.num_samples = 6
    space = settings.tune.search_space["lightgbm"]
    space["num_boost_round"] = SearchDimension(type="choice", values=[30])
    outcome = run_search(settings, data)
    assert outcome.failed == 0 and len(outcome.trials) == 6
    assert set(outcome.trials["config/family"]) == {"mlp", "lightgbm"}
    assert outcome.best.kind in ("mlp", "lightgbm")
    picked = outcome.trials["config/lightgbm/num_leaves"].dropna()
    assert (
        set(picked) <= {4, 8}
        and len(picked) == (outcome.trials["config/family"] == "lightgbm").sum()
    )
    children = mlflow.search_runs(
        experiment_names=[settings.mlflow.experiment],
        filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'",
    )
    assert len(children) == 6
    assert set(children["params.family"]) == {"mlp", "lightgbm"}
    assert set(children["tags.feature_version"]) == {data.manifest.version}
    assert set(children["tags.data_version"]) == {data.manifest.data_version}
    assert children["tags.code_version"].str.len().eq(12).all()
    client = mlflow.MlflowClient()
    history = client.get_metric_history(children["run_id"].iloc[0], "val_loss")
    assert [m.step for m in history] == list(range(1, len(history) + 1))
    logged = client.get_run(children["run_id"].iloc[0]).data.metrics
    assert {"train_loss", "best_val_loss", "best_epoch", "time_this_iter_s"} <= set(logged)
    assert checkpoints(settings, outcome.name) == []  # tune.checkpoint_every: 0


def checkpoints(settings: Settings, search: str) -> list[str]:
    """The epochs checkpointed by the search's trials, as Tune's folder names."""
    return sorted(p.name for p in Path(results_path(settings), search).glob("*/checkpoint_*"))


def crashing_trial(config: dict[str, Any], **kwargs: Any) -> None:
    """A trial body that crashes for the small network: the search must go on."""
    if config["mlp"]["hidden_size"] == 4:
        raise RuntimeError("simulated crash")
    trial(config, **kwargs)


def test_a_crashing_trial_is_recorded_and_the_search_goes_on(
    feature_root: Path, data: TrainingData
) -> None:
    settings = small_settings(feature_root)
    settings.tune.num_samples = 6
    settings.tune.checkpoint_every = 2
    outcome = run_search(settings, data, trial_fn=crashing_trial)
    assert outcome.failed >= 1 and outcome.best.hparams.hidden_size == 8  # type: ignore[attr-defined]
    finished = 6 - outcome.failed  # 3 epochs each: one checkpoint, after the second
    assert checkpoints(settings, outcome.name) == ["checkpoint_000000"] * finished
    children = mlflow.search_runs(
        experiment_names=[settings.mlflow.experiment],
        filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'",
    )
    assert (children["status"] == "FAILED").sum() == outcome.failed


def test_bad_search_inputs_fail_before_any_trial(feature_root: Path, data: TrainingData) -> None:
    settings = small_settings(feature_root)
    settings.tune.search_space["mlp"]["hidden_size"].values = [0, 8]
    with pytest.raises(SearchError, match=r"mlp.hidden_size=0: .*greater than or equal to 1"):
        run_search(settings, data)
    with pytest.raises(SearchError, match="no search named nope to resume"):
        run_search(small_settings(feature_root), data, name="nope", resume=True)
    offline = small_settings(feature_root, mlflow={"tracking_uri": "http://127.0.0.1:9"})
    with pytest.raises(TrackingError, match="unreachable"):
        run_search(offline, data)
