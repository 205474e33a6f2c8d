"""What a model family provides, and the fitted model every layer passes around; no Ray.

A family is one module in this package that subclasses ``Family`` and registers an instance
(``register``). Everything else (settings, the command line, training, Tune, evaluation, the
registry and serving) reads the family table instead of naming families, so adding one is one
file (plus its Ray loop in ``ray_app.training.families`` when none of the existing ones fits).

Every family consumes the same inputs: windows of standardised feature rows, shaped
(rows, window, features), oldest row first, the last one the row predicted for. Its window
is a property of its hyperparameters (``Family.window``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ValidationError

from ray_app.core.settings import SearchDimension, SettingsError
from ray_app.models import FAMILIES_PACKAGE, family_names
from ray_app.models.networks import StandardScaler, model_inputs

MODEL_FILE = "model.json"
Predict = Callable[[np.ndarray], np.ndarray]
"""Scaled windows (rows, window, features) -> predicted log returns (rows,), as float64."""


@dataclass
class Arrays:
    """One fit's inputs, already scaled with statistics of the training rows only:
    windows (rows, window, features) and targets, for training and validation."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    scaler: StandardScaler


class LoopSession:
    """How a fit reports: to Ray Train, to Ray Tune, or to nobody (in-process refits).

    A family's fit calls ``report`` once per step (an epoch, a block of boosting rounds) with
    the metrics every family shares (``train_loss``, ``val_loss``, ``best_val_loss``,
    ``best_epoch``), so Tune compares trials of different families on one scale.
    """

    rank, world = 0, 1

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        """Record one step; ``state`` is checkpointed when given."""

    def restore(self) -> dict[str, Any] | None:
        """The last checkpointed state, when resuming."""
        return None

    def prepare(self, model: Any) -> Any:
        """The model wrapped for data-parallel training (torch's DDP), or as it is."""
        return model


@dataclass
class FitResult:
    """What a fit found: the weights of its best step, that step, and each step's metrics."""

    weights: Any
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)


class Family(ABC):
    """One kind of model: its hyperparameters, input window, fit, predict and files.

    ``weights`` are whatever the family keeps (a torch state dict, LightGBM's model text);
    they are written as data (tensors, text), never pickled, next to ``model.json``.
    """

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    ray_loop: ClassVar[str]
    """The module of ``ray_app.training.families`` that runs this family on Ray Train."""
    requirements: ClassVar[tuple[str, ...]]
    """Packages its predict needs (pinned in the logged MLflow model)."""
    default_space: ClassVar[dict[str, SearchDimension]]
    """The Tune search space when ``tune.search_space`` names none for this family."""

    def params(self, values: Mapping[str, Any] | None = None) -> BaseModel:
        """Validated hyperparameters; SettingsError names the bad key."""
        try:
            return self.Params(**dict(values or {}))
        except ValidationError as exc:
            reasons = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: "
                + ("unknown hyperparameter" if e["type"] == "extra_forbidden" else e["msg"])
                for e in exc.errors()
            )
            known = ", ".join(self.Params.model_fields)
            raise SettingsError(
                f"invalid {self.name} hyperparameters: {reasons} (known: {known})"
            ) from None

    @abstractmethod
    def window(self, params: Any) -> int:
        """Feature rows per ticker in one input (1: the current row only)."""

    @abstractmethod
    def fit(
        self, arrays: Arrays, params: Any, config: FitConfig, session: LoopSession
    ) -> FitResult:
        """Fit on ``arrays``; early-stop on the validation rows when there are any, else run
        the full length (``fixed_length`` sets it for refits)."""

    @abstractmethod
    def predictor(self, model: TrainedModel) -> Predict:
        """A predict function over scaled windows, built once (serving keeps it)."""

    @abstractmethod
    def save_weights(self, weights: Any, folder: Path) -> None:
        """Write ``weights`` into ``folder`` as data, beside ``model.json``."""

    @abstractmethod
    def load_weights(self, folder: Path) -> Any:
        """Read what ``save_weights`` wrote, without unpickling anything."""

    @abstractmethod
    def fixed_length(self, params: Any, best_epoch: int) -> Any:
        """``params`` for a refit without validation rows: the length early stopping chose."""

    @abstractmethod
    def max_steps(self, params: Any) -> int:
        """How many times a fit reports at most (ASHA's ``max_t``)."""


@dataclass(frozen=True)
class FitConfig:
    """Settings of a fit that are not hyperparameters."""

    seed: int = 0
    patience: int = 3
    threads: int = 1


@dataclass
class TrainedModel:
    """A fitted model with everything needed to use it: family, inputs, scaler, weights,
    lineage. ``save``/``load`` write a folder (``model.json`` + the family's weight files)
    that Ray Train checkpoints, MLflow artifacts and serving all share."""

    kind: str
    hparams: BaseModel
    columns: list[str]
    scaler: StandardScaler
    weights: Any
    best_epoch: int
    feature_version: str
    data_version: str
    seed: int = 0

    @property
    def family(self) -> Family:
        return get(self.kind)

    @property
    def window(self) -> int:
        return self.family.window(self.hparams)

    def predictor(self) -> Predict:
        return self.family.predictor(self)

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``date``, ``ticker``, ``pred`` for every row of ``frame`` the model can predict
        (rows with a full window of their ticker's rows)."""
        inputs = model_inputs(frame, self.columns, self.window, self.scaler)
        out = frame.iloc[inputs.rows][["date", "ticker"]].reset_index(drop=True)
        out["pred"] = self.predictor()(inputs.x) if len(inputs.rows) else np.empty(0)
        return out

    def meta(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "hparams": self.hparams.model_dump(),
            "columns": self.columns,
            "scaler": self.scaler.to_dict(),
            "best_epoch": self.best_epoch,
            "feature_version": self.feature_version,
            "data_version": self.data_version,
            "seed": self.seed,
        }

    def digest(self) -> str:
        """sha256 of the files ``save`` writes: what the model is, whatever version number
        a registry gave it (a registry that is reset numbers another model alike)."""
        digest = hashlib.sha256()
        with tempfile.TemporaryDirectory() as tmp:
            self.save(Path(tmp))
            for path in sorted(Path(tmp).iterdir()):
                digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
                digest.update(path.read_bytes())
        return digest.hexdigest()

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.family.save_weights(self.weights, folder)
        (folder / MODEL_FILE).write_text(json.dumps(self.meta(), indent=2))

    @classmethod
    def load(cls, folder: Path) -> TrainedModel:
        meta = json.loads((folder / MODEL_FILE).read_text())
        family = get(meta["kind"])
        return cls(
            kind=meta["kind"],
            hparams=family.params(meta["hparams"]),
            columns=meta["columns"],
            scaler=StandardScaler.from_dict(meta["scaler"]),
            weights=family.load_weights(folder),
            best_epoch=meta["best_epoch"],
            feature_version=meta["feature_version"],
            data_version=meta["data_version"],
            seed=meta["seed"],
        )


FAMILIES: dict[str, Family] = {}
names = family_names


def register(family: Family) -> Family:
    """Add ``family`` to the table; its module calls this when imported, and is named after
    it (``names`` lists the modules)."""
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} is registered twice")
    FAMILIES[family.name] = family
    return family


def get(name: str) -> Family:
    """The family called ``name``, its module imported on first use (serving an MLP never
    imports LightGBM); SettingsError naming the known ones otherwise."""
    if name not in FAMILIES:
        if name not in names():
            raise SettingsError(f"unknown model family {name!r} (known: {', '.join(names())})")
        importlib.import_module(f"{FAMILIES_PACKAGE}.{name}")
        if name not in FAMILIES:
            raise SettingsError(f"module {FAMILIES_PACKAGE}.{name} registers no family {name!r}")
    return FAMILIES[name]
