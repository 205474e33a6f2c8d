"""Training: one epoch loop shared by Ray Train workers, Ray Tune trials and evaluation refits.

``make_trainer`` is the trainer factory: it turns settings + hyperparameters into a
``TorchTrainer`` over the shared ``train_loop``. Tune (``ray_app.training.tune``) runs the same loop
in its trials and evaluation (``ray_app.training.evaluate``) calls ``fit_in_process`` for its
walk-forward refits, so the set-up is written once.

The scaler is fitted on the training window only; inputs are built once on the driver and
shipped to workers through the object store.
"""

from __future__ import annotations

import copy
import datetime as dt
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ray_app.core.errors import RayAppError
from ray_app.core.settings import FeatureSettings, HParams, ModelKind, Settings
from ray_app.core.storage import DataRoot
from ray_app.data.feature_store import load_feature_set
from ray_app.models.networks import (
    StandardScaler,
    TrainedModel,
    build_model,
    evaluate_loss,
    fit_epoch,
    make_loader,
    make_optimizer,
    model_inputs,
)
from ray_app.training.splits import WalkForward, min_embargo, walk_forward


class TrainingDataError(RayAppError):
    """The feature set is too short for the configured walk-forward split."""


@dataclass
class TrainingData:
    """A feature set's training rows, its manifest and the walk-forward split over it."""

    frame: pd.DataFrame
    columns: list[str]
    manifest: dict[str, Any]
    split: WalkForward

    @property
    def tune_fold(self) -> Any:
        """The fold searched on and early-stopped against: the latest walk-forward fold."""
        return self.split.folds[-1]


def load_training_data(settings: Settings, feature_version: str | None = None) -> TrainingData:
    """Rows with a known target, split walk-forward with the embargo the spec needs."""
    frame, manifest = load_feature_set(DataRoot(settings.data_root), feature_version)
    spec = FeatureSettings(**manifest["spec"])
    cfg = settings.split
    window = settings.train.hparams.window if settings.train.model == "gru" else 1
    embargo = cfg.embargo_days or min_embargo(spec, horizon=1, sequence_window=window)
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
            f"feature set {manifest['version']} cannot be split as configured: {exc} "
            "(lower split.n_folds, split.test_days, split.train_days or split.holdout_months)"
        ) from None
    return TrainingData(frame, list(manifest["columns"]), manifest, split)


@dataclass
class Arrays:
    """Model inputs for one training run: train and validation, already scaled."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    scaler: StandardScaler


def build_arrays(
    frame: pd.DataFrame,
    columns: list[str],
    kind: ModelKind,
    window: int,
    train_mask: np.ndarray,
    val_mask: np.ndarray | None,
) -> Arrays:
    """Scale with statistics of the training rows only, then build inputs for both sets."""
    scaler = StandardScaler.fit(frame.loc[train_mask, columns])
    inputs = model_inputs(frame, columns, kind, window, scaler)
    take_train = train_mask[inputs.rows]
    take_val = val_mask[inputs.rows] if val_mask is not None else np.zeros_like(take_train)
    return Arrays(
        inputs.x[take_train],
        inputs.y[take_train],
        inputs.x[take_val],
        inputs.y[take_val],
        scaler,
    )


class LoopSession:
    """How the loop reports: to Ray Train, to Ray Tune, or to nobody (in-process refits)."""

    rank, world = 0, 1

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        """Record one epoch; ``state`` is checkpointed when given."""

    def restore(self) -> dict[str, Any] | None:
        """The last checkpointed state, when resuming."""
        return None

    def prepare(self, model: nn.Module) -> nn.Module:
        return model


def load_state(folder: Path) -> dict[str, Any]:
    """A training checkpoint's state: tensors, numbers, lists and dicts only, loaded with
    ``weights_only=True`` so that a checkpoint can never run code when it is read."""
    state: dict[str, Any] = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    return state


class RaySession(LoopSession):
    """Reports through ``ray.train`` or ``ray.tune`` (their APIs are the same shape), with a
    checkpoint every ``checkpoint_every`` epochs (0: none)."""

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
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / "state.pt")
            self.api.report(metrics, checkpoint=self.api.Checkpoint.from_directory(folder))

    def restore(self) -> dict[str, Any] | None:
        checkpoint = self.api.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return load_state(Path(folder))

    def prepare(self, model: nn.Module) -> nn.Module:
        if not self.distributed or self.world == 1:
            return model
        from ray.train.torch import prepare_model

        prepared: nn.Module = prepare_model(model)
        return prepared


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel wrapper (or the model itself)."""
    inner = getattr(model, "module", model)
    return inner if isinstance(inner, nn.Module) else model


def train_loop(config: dict[str, Any], arrays: Arrays, session: LoopSession) -> dict[str, Any]:
    """Epochs with early stopping on validation loss; returns the best state seen.

    Each data-parallel worker trains on its own shard of the training rows; validation is
    measured on all of them. Every epoch is reported with its state (weights of the best
    epoch so far included); the session checkpoints it (Ray Train every epoch, so an
    interrupted run resumes where it stopped; Tune trials every ``tune.checkpoint_every``).
    """
    hparams, kind = HParams(**config["hparams"]), config["kind"]
    torch.set_num_threads(config.get("torch_threads", 1))
    torch.manual_seed(config["seed"] + session.rank)
    shard = slice(session.rank, None, session.world)
    model = session.prepare(
        build_model(kind, arrays.x_train.shape[-1], hparams, seed=config["seed"])
    )
    optimizer, loss_fn = make_optimizer(model, hparams), nn.MSELoss()
    val_loader = make_loader(arrays.x_val, arrays.y_val, 8192, shuffle=False)
    state = session.restore() or {
        "epoch": 0,
        "best_loss": float("inf"),
        "best_epoch": 0,
        "bad": 0,
        "history": [],
    }
    if "model" in state:
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    while state["epoch"] < hparams.epochs and state["bad"] < config["patience"]:
        loader = make_loader(
            arrays.x_train[shard],
            arrays.y_train[shard],
            hparams.batch_size,
            shuffle=True,
            seed=config["seed"] + state["epoch"],
        )
        train_loss = fit_epoch(model, loader, optimizer, loss_fn)
        val_loss = evaluate_loss(model, val_loader, loss_fn) if len(arrays.y_val) else train_loss
        state["epoch"] += 1
        if val_loss < state["best_loss"]:
            best = copy.deepcopy(_unwrap(model).state_dict())
            state.update(best_loss=val_loss, best_epoch=state["epoch"], bad=0, best_state=best)
        else:
            state["bad"] += 1
        state.update(model=_unwrap(model).state_dict(), optimizer=optimizer.state_dict())
        metrics = {
            "epoch": state["epoch"],
            "train_loss": train_loss,
            "val_loss": val_loss,
            "best_val_loss": state["best_loss"],
            "best_epoch": state["best_epoch"],
        }
        state["history"].append(metrics)
        session.report(metrics, state)
    return state


def loop_config(settings: Settings, hparams: HParams | None = None) -> dict[str, Any]:
    """The loop's configuration from settings (Tune overrides ``hparams``)."""
    cfg = settings.train
    return {
        "kind": cfg.model,
        "hparams": (hparams or cfg.hparams).model_dump(),
        "seed": cfg.seed,
        "patience": cfg.patience,
        "torch_threads": cfg.torch_threads,
    }


def fit_in_process(
    data: TrainingData,
    settings: Settings,
    train_mask: np.ndarray,
    val_mask: np.ndarray | None,
    hparams: HParams | None = None,
) -> TrainedModel:
    """Train without Ray (used inside Ray tasks by evaluation): same loop, same set-up.

    Without ``val_mask`` the model trains for exactly ``hparams.epochs`` epochs.
    """
    config = loop_config(settings, hparams)
    arrays = build_arrays(
        data.frame, data.columns, config["kind"], config["hparams"]["window"], train_mask, val_mask
    )
    state = train_loop(config, arrays, LoopSession())
    return to_trained_model(config, state, arrays.scaler, data)


def to_trained_model(
    config: dict[str, Any], state: dict[str, Any], scaler: StandardScaler, data: TrainingData
) -> TrainedModel:
    return TrainedModel(
        kind=config["kind"],
        hparams=HParams(**config["hparams"]),
        columns=data.columns,
        scaler=scaler,
        state_dict=state.get("best_state", state.get("model", {})),
        best_epoch=state["best_epoch"],
        feature_version=data.manifest["version"],
        data_version=data.manifest["data_version"],
        seed=config["seed"],
    )


def ray_train_loop(config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker."""
    import ray
    import ray.train

    train_loop(config, ray.get(config["arrays_ref"]), RaySession(ray.train, distributed=True))


def make_trainer(
    settings: Settings, arrays_ref: Any, name: str, hparams: HParams | None = None
) -> Any:
    """The trainer factory: a TorchTrainer running ``train_loop`` on the configured workers."""
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = settings.train
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0
    return TorchTrainer(
        ray_train_loop,
        train_loop_config={**loop_config(settings, hparams), "arrays_ref": arrays_ref},
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=results_path(settings),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )


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
    hparams: HParams | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainOutcome:
    """Train on the tune fold with Ray Train (early stopping on its test window)."""
    import ray

    fold = data.tune_fold
    config = loop_config(settings, hparams)
    arrays = build_arrays(
        data.frame,
        data.columns,
        config["kind"],
        config["hparams"]["window"],
        fold.train_mask,
        fold.test_mask,
    )
    name = f"train-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    result = make_trainer(settings, ray.put(arrays), name, hparams).fit()
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as folder:
        state = load_state(Path(folder))
    history = pd.DataFrame(state["history"])  # every epoch, also those before a resume
    if on_epoch is not None:
        for row in state["history"]:
            on_epoch(row)
    return TrainOutcome(to_trained_model(config, state, arrays.scaler, data), history, data)
