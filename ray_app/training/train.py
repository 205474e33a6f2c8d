"""Training: the set-up every fit shares, and the entry to each family's Ray Train loop.

``run_training`` trains on the tune fold with Ray Train through the family's loop in
``ray_app.training.families`` (a ``TorchTrainer`` for the torch families, a
``LightGBMTrainer`` fed by Ray Data for LightGBM). Tune (``ray_app.training.tune``) runs the
family's own fit in its trials, and evaluation (``ray_app.training.evaluate``) calls
``fit_in_process`` for its walk-forward refits: one ``build_arrays``, one fit per family.

The scaler is fitted on the training window only; inputs are built once on the driver and
shipped to workers through the object store (or Ray Data).
"""

from __future__ import annotations

import datetime as dt
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ray_app.core.errors import RayAppError
from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.feature_store import load_feature_set
from ray_app.data.manifests import FeatureManifest
from ray_app.models.families import (
    Arrays,
    FitConfig,
    FitResult,
    LoopSession,
    ModelSpec,
    TrainedModel,
    spec,
)
from ray_app.models.networks import StandardScaler, model_inputs
from ray_app.training.splits import WalkForward, min_embargo, walk_forward


class TrainingDataError(RayAppError):
    """The feature set is too short for the configured walk-forward split."""


@dataclass
class TrainingData:
    """A feature set's training rows, its manifest and the walk-forward split over it."""

    frame: pd.DataFrame
    columns: list[str]
    manifest: FeatureManifest
    split: WalkForward

    @property
    def tune_fold(self) -> Any:
        """The fold searched on and early-stopped against: the latest walk-forward fold."""
        return self.split.folds[-1]


def load_training_data(settings: Settings, feature_version: str | None = None) -> TrainingData:
    """Rows with a known target, split walk-forward with the embargo the spec needs."""
    frame, manifest = load_feature_set(DataRoot(settings.data_root), feature_version)
    features = manifest.spec
    cfg = settings.split
    chosen = [spec(settings), *(spec(settings, kind) for kind in settings.tune.families)]
    window = max(model.family.window(model.hparams) for model in chosen)
    embargo = cfg.embargo_days or min_embargo(features, horizon=1, sequence_window=window)
    try:
        split = walk_forward(
            frame,
            n_folds=cfg.n_folds,
            test_days=cfg.test_days,
            train_days=cfg.train_days,
            embargo_days=embargo,
            mode=cfg.mode,
            holdout_months=cfg.holdout_months,
        )
    except ValueError as exc:
        raise TrainingDataError(
            f"feature set {manifest.version} cannot be split as configured: {exc} "
            "(lower split.n_folds, split.test_days, split.train_days or split.holdout_months)"
        ) from None
    return TrainingData(frame, list(manifest.columns), manifest, split)


def build_arrays(
    frame: pd.DataFrame,
    columns: list[str],
    window: int,
    train_mask: np.ndarray,
    val_mask: np.ndarray | None,
) -> Arrays:
    """Scale with statistics of the training rows only, then build the windows of both sets."""
    scaler = StandardScaler.fit(frame.loc[train_mask, columns])
    inputs = model_inputs(frame, columns, window, scaler)
    take_train = train_mask[inputs.rows]
    take_val = val_mask[inputs.rows] if val_mask is not None else np.zeros_like(take_train)
    return Arrays(
        inputs.x[take_train],
        inputs.y[take_train],
        inputs.x[take_val],
        inputs.y[take_val],
        scaler,
    )


def load_state(folder: Path) -> dict[str, Any]:
    """A training checkpoint's state: tensors, numbers, lists and dicts only, loaded with
    ``weights_only=True`` so that a checkpoint can never run code when it is read."""
    import torch

    state: dict[str, Any] = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    return state


class RaySession(LoopSession):
    """Reports through ``ray.train`` or ``ray.tune`` (their APIs are the same shape), with a
    checkpoint (the loop's state, as tensors) every ``checkpoint_every`` steps (0: none);
    a step reported without state is never checkpointed."""

    def __init__(self, api: Any, distributed: bool, checkpoint_every: int = 1) -> None:
        self.api = api
        self.distributed = distributed
        self.checkpoint_every = checkpoint_every
        if distributed:
            context = api.get_context()
            self.rank, self.world = context.get_world_rank(), context.get_world_size()

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        every = self.checkpoint_every
        if state is None or self.rank != 0 or every == 0 or state["epoch"] % every:
            self.api.report(metrics)
            return
        import torch

        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / "state.pt")
            self.api.report(metrics, checkpoint=self.api.Checkpoint.from_directory(folder))

    def restore(self) -> dict[str, Any] | None:
        checkpoint = self.api.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return load_state(Path(folder))

    def prepare(self, model: Any) -> Any:
        if not self.distributed or self.world == 1:
            return model
        from ray.train.torch import prepare_model

        return prepare_model(model)


def fit_config(settings: Settings) -> FitConfig:
    """The fit's settings that are not hyperparameters."""
    cfg = settings.train
    return FitConfig(seed=cfg.seed, patience=cfg.patience, threads=cfg.torch_threads)


def fit_in_process(
    data: TrainingData,
    settings: Settings,
    train_mask: np.ndarray,
    val_mask: np.ndarray | None,
    model: ModelSpec | None = None,
) -> TrainedModel:
    """Fit without Ray (inside Ray tasks, for evaluation's refits): same set-up, same fit.

    ``model`` defaults to the one ``train`` describes. Without ``val_mask`` the fit runs the
    length its hyperparameters say (``Family.fixed_length``).
    """
    model = model or spec(settings)
    family = model.family
    window = family.window(model.hparams)
    arrays = build_arrays(data.frame, data.columns, window, train_mask, val_mask)
    fitted = family.fit(arrays, model.hparams, fit_config(settings), LoopSession())
    return trained_model(model, fitted, arrays.scaler, data, settings.train.seed)


def trained_model(
    model: ModelSpec, fitted: FitResult, scaler: StandardScaler, data: TrainingData, seed: int
) -> TrainedModel:
    return TrainedModel(
        kind=model.kind,
        hparams=model.hparams,
        columns=data.columns,
        scaler=scaler,
        weights=fitted.weights,
        best_epoch=fitted.best_epoch,
        feature_version=data.manifest.version,
        data_version=data.manifest.data_version,
        seed=seed,
    )


def use_gpu(settings: Settings) -> bool:
    import ray

    cfg = settings.train
    return cfg.use_gpu if cfg.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0


def results_path(settings: Settings) -> str:
    """Where Ray Train and Tune keep run state: under the data root (a URI on clusters)."""
    if "://" in settings.data_root:
        return settings.data_root.rstrip("/") + "/ray_results"
    return str(Path(settings.data_root).expanduser().resolve() / "ray_results")


@dataclass
class TrainOutcome:
    """A finished training run: the model and the per-epoch history."""

    model: TrainedModel
    history: pd.DataFrame
    data: TrainingData


def run_training(
    settings: Settings,
    data: TrainingData,
    model: ModelSpec | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainOutcome:
    """Train on the tune fold with Ray Train (early stopping on its test window), through
    the family's loop in ``ray_app.training.families``."""
    from ray_app.training.families import ray_loop

    model = model or spec(settings)
    fold = data.tune_fold
    window = model.family.window(model.hparams)
    arrays = build_arrays(data.frame, data.columns, window, fold.train_mask, fold.test_mask)
    name = f"train-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    fitted = ray_loop(model).fit(settings, model, arrays, data.columns, name)
    if on_epoch is not None:
        for row in fitted.history:  # every step, also those before a resume
            on_epoch(row)
    trained = trained_model(model, fitted, arrays.scaler, data, settings.train.seed)
    return TrainOutcome(trained, pd.DataFrame(fitted.history), data)
