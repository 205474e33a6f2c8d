"""LightGBM on Ray Train: a ``LightGBMTrainer`` fed by Ray Data.

The training rows travel as a Ray Dataset split across the workers (``train``); every worker
gets all the validation rows (``validation`` is not split), so each one measures the same
validation loss and early stopping ends all of them at the same round. Each worker boosts with
``ray.train.lightgbm.get_network_params()``, which joins the workers into one data-parallel
LightGBM model. Ray's ``RayTrainReportCallback`` checkpoints at the last configured round,
which early stopping never reaches, and the trees of every round; so the family's own loop
(``models.families.lightgbm.boost``) reports every ``report_every`` rounds, and rank 0
checkpoints the trees up to the best round (``model.txt``, LightGBM's text format, the file
``RayTrainReportCallback.get_model`` reads) with the metrics' history once boosting ends.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ray_app.core.settings import Settings
from ray_app.models.families import Arrays, FitResult, ModelSpec
from ray_app.models.families.lightgbm import (
    WEIGHTS_FILE,
    LightGBMFamily,
    LightGBMParams,
    boost,
    rows,
)
from ray_app.training.train import RaySession, fit_config, results_path

TARGET_COLUMN = "__target__"
HISTORY_FILE = "history.json"


def _frame(x: np.ndarray, y: np.ndarray, columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows(x), columns=columns)
    frame[TARGET_COLUMN] = y
    return frame


def _split(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    x = frame.drop(columns=TARGET_COLUMN).to_numpy(dtype=np.float32)
    return x, frame[TARGET_COLUMN].to_numpy(dtype=np.float32)


def worker_loop(config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker: its shard of the training rows, all the
    validation rows, one data-parallel booster."""
    import ray.train
    from ray.train.lightgbm import get_network_params, normalize_pandas_for_lightgbm

    def shard(name: str) -> pd.DataFrame:
        dataset = ray.train.get_dataset_shard(name).materialize()
        return normalize_pandas_for_lightgbm(dataset.to_pandas())

    params = LightGBMParams(**config["hparams"])
    session = RaySession(ray.train, distributed=True)
    train, val = _split(shard("train")), _split(shard("validation"))
    network = get_network_params() if session.world > 1 else {}
    booster, history = boost(
        params, config["fit"], train, val, session, extra=network, columns=config["columns"]
    )
    fitted = LightGBMFamily.result(booster, history)
    if session.rank != 0:
        ray.train.report(history[-1], checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / WEIGHTS_FILE).write_text(fitted.weights)
        summary = {"best_epoch": fitted.best_epoch, "history": history}
        (Path(folder) / HISTORY_FILE).write_text(json.dumps(summary))
        checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(history[-1], checkpoint=checkpoint)


def fit(
    settings: Settings, model: ModelSpec, arrays: Arrays, columns: list[str], name: str
) -> FitResult:
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, RunConfig, ScalingConfig
    from ray.train.lightgbm import LightGBMTrainer

    cfg = settings.train
    datasets: dict[str, Any] = {
        "train": ray.data.from_pandas(_frame(arrays.x_train, arrays.y_train, columns)),
        "validation": ray.data.from_pandas(_frame(arrays.x_val, arrays.y_val, columns)),
    }
    config = {
        "kind": model.kind,
        "hparams": model.hparams.model_dump(),
        "fit": fit_config(settings),
        "columns": columns,
    }
    trainer = LightGBMTrainer(
        worker_loop,
        train_loop_config=config,
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=name,
            storage_path=results_path(settings),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    assert result.checkpoint is not None  # rank 0 always reports one
    with result.checkpoint.as_directory() as folder:
        weights = (Path(folder) / WEIGHTS_FILE).read_text()
        summary = json.loads((Path(folder) / HISTORY_FILE).read_text())
    return FitResult(weights, int(summary["best_epoch"]), summary["history"])
