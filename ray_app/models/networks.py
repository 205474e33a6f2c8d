"""PyTorch models, baselines and a plain training loop for next-day log returns; no Ray.

Everything here runs in a bare Python process so that Ray Train, Ray Tune and the
evaluation all build on the same pieces (and a test proves this module never imports Ray).
Inputs are standardised with a scaler fitted on the training window only; the sequence
model sees, per ticker, the last ``window`` feature rows up to and including the row it
predicts for, never a later one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ray_app.core.settings import HParams, ModelKind
from ray_app.data.features import TARGET

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _zero_start(layer: nn.Linear) -> nn.Linear:
    """Zero the output layer, so an untrained model predicts 0 (the random-walk forecast):
    daily log returns are ~0.01, and a default-initialised head starts ~10x off and spends
    its first epochs only shrinking its outputs."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class MLP(nn.Module):
    """Feed-forward net on one feature vector -> one predicted log return."""

    def __init__(self, n_features: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_size), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_size
        layers.append(_zero_start(nn.Linear(width, 1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class GRURegressor(nn.Module):
    """GRU over (batch, window, features); the last step's state predicts the log return."""

    def __init__(self, n_features: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        # torch applies GRU dropout between stacked layers only, and warns when there are none.
        between = dropout if num_layers > 1 else 0.0
        self.gru = nn.GRU(n_features, hidden_size, num_layers, batch_first=True, dropout=between)
        self.head = nn.Sequential(nn.Dropout(dropout), _zero_start(nn.Linear(hidden_size, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def build_model(kind: ModelKind, n_features: int, hparams: HParams, *, seed: int = 0) -> nn.Module:
    """A freshly initialised model; the same seed gives the same weights, leaving torch's
    global random state untouched."""
    if n_features < 1:
        raise ValueError(f"n_features must be at least 1, got {n_features}")
    classes: dict[str, type[MLP] | type[GRURegressor]] = {"mlp": MLP, "gru": GRURegressor}
    if kind not in classes:
        raise ValueError(f"unknown model kind {kind!r}: expected one of {sorted(classes)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return classes[kind](n_features, hparams.hidden_size, hparams.num_layers, hparams.dropout)


@dataclass(frozen=True)
class StandardScaler:
    """Per-feature mean and std of the training window; test rows never influence it."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray | pd.DataFrame) -> StandardScaler:
        """Statistics of ``x`` (rows x features); a constant feature gets std 1, not 0."""
        values = np.asarray(x, dtype=np.float64)
        if values.ndim != 2 or len(values) == 0:
            raise ValueError(f"fit needs a non-empty 2-D rows x features array, got {values.shape}")
        std = values.std(axis=0)
        return cls(values.mean(axis=0), np.where(np.isfinite(std) & (std > 0), std, 1.0))

    def transform(self, x: np.ndarray | pd.DataFrame) -> np.ndarray:
        """``x`` standardised along its last axis (rows, or windows of rows)."""
        values = np.asarray(x, dtype=np.float64)
        if values.shape[-1] != len(self.mean):
            raise ValueError(f"scaler fitted on {len(self.mean)} features, got {values.shape[-1]}")
        return (values - self.mean) / self.std

    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists, for JSON (MLflow artifacts, serving)."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> StandardScaler:
        return cls(np.asarray(data["mean"], dtype=np.float64), np.asarray(data["std"], np.float64))


def make_windows(
    frame: pd.DataFrame, columns: list[str], window: int, scaler: StandardScaler | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GRU inputs: for each row, its ticker's last ``window`` rows ending at that row.

    Returns ``X`` (n, window, features) as float32, ``y`` (the rows' targets, NaN where the
    frame has none) and the positions in ``frame`` of the rows kept, ascending. Rows with
    fewer than ``window - 1`` earlier rows of their ticker are dropped. Window the whole
    frame, then select rows with a split's mask: a test row's window may then reach back
    into earlier (training or embargo) days, which were known on the day it predicts from.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    values = frame[columns].to_numpy(dtype=np.float64)
    values = (scaler.transform(values) if scaler is not None else values).astype(np.float32)
    target = frame[TARGET] if TARGET in frame else pd.Series(np.nan, index=frame.index)
    target_values = target.to_numpy(dtype=np.float32)
    dates = frame["date"].to_numpy()
    blocks, kept = [], []
    for ticker, rows in frame.groupby("ticker", sort=True).indices.items():
        rows = np.asarray(rows)
        by_date = rows[np.argsort(dates[rows], kind="stable")]
        if (np.diff(dates[by_date]) <= np.timedelta64(0)).any():
            raise ValueError(f"ticker {ticker} has more than one row for a date")
        if len(by_date) < window:
            continue
        views = np.lib.stride_tricks.sliding_window_view(values[by_date], window, axis=0)
        blocks.append(views.transpose(0, 2, 1))
        kept.append(by_date[window - 1 :])
    if not kept:
        empty = np.empty((0, window, len(columns)), np.float32)
        return empty, np.empty(0, np.float32), np.empty(0, np.int64)
    index = np.concatenate(kept).astype(np.int64)
    order = np.argsort(index, kind="stable")
    return np.concatenate(blocks)[order], target_values[index[order]], index[order]


class Predictor(Protocol):
    """The interface every baseline shares: fit on a training frame, predict per row."""

    def fit(self, frame: pd.DataFrame) -> Predictor: ...

    def predict(self, frame: pd.DataFrame) -> np.ndarray: ...


class ZeroBaseline:
    """Predicts a zero log return: the random-walk forecast any model must beat."""

    def fit(self, frame: pd.DataFrame) -> ZeroBaseline:
        return self

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return np.zeros(len(frame))


@dataclass
class PersistenceBaseline:
    """Predicts today's return again tomorrow (short-term momentum, or its absence)."""

    column: str = "ret_1d"

    def fit(self, frame: pd.DataFrame) -> PersistenceBaseline:
        if self.column not in frame:
            raise ValueError(f"persistence baseline needs column {self.column!r}")
        return self

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return frame[self.column].to_numpy(dtype=np.float64)


@dataclass
class RidgeBaseline:
    """Linear regression with an L2 penalty on standardised features, solved in closed form.

    The intercept is not penalised. ``alpha=0`` is ordinary least squares.
    """

    columns: list[str]
    alpha: float = 1.0
    scaler: StandardScaler | None = field(default=None, init=False)
    coef: np.ndarray = field(default_factory=lambda: np.empty(0), init=False)
    intercept: float = field(default=0.0, init=False)

    def fit(self, frame: pd.DataFrame) -> RidgeBaseline:
        if self.alpha < 0:
            raise ValueError(f"ridge alpha must be >= 0, got {self.alpha}")
        self.scaler = StandardScaler.fit(frame[self.columns])
        x = self.scaler.transform(frame[self.columns])
        y = frame[TARGET].to_numpy(dtype=np.float64)
        # Scaled columns have mean 0, so the unpenalised intercept is the mean target; ridge is
        # least squares on x stacked over sqrt(alpha) * I (stable even when x'x is singular).
        self.intercept = float(y.mean())
        n = len(self.columns)
        a = np.vstack([x, np.sqrt(self.alpha) * np.eye(n)])
        b = np.concatenate([y - self.intercept, np.zeros(n)])
        self.coef = np.linalg.lstsq(a, b, rcond=None)[0]
        return self

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        if self.scaler is None:
            raise ValueError("RidgeBaseline.predict called before fit")
        return self.scaler.transform(frame[self.columns]) @ self.coef + self.intercept


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """A float32 tensor sharing ``a``'s memory when it can; copies read-only arrays (pandas
    hands those out under copy-on-write), which torch refuses to share."""
    return torch.from_numpy(np.require(a, dtype=np.float32, requirements=["W"]))


def make_loader(
    x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool, seed: int = 0
) -> DataLoader[Any]:
    """Batches of float32 tensors; shuffled (within the training window only) by its own
    seeded generator, so the order is the same on every run."""
    dataset = TensorDataset(as_tensor(x), as_tensor(y))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def make_optimizer(model: nn.Module, hparams: HParams) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=hparams.lr, weight_decay=hparams.weight_decay)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def fit_epoch(
    model: nn.Module, loader: DataLoader[Any], optimizer: torch.optim.Optimizer, loss_fn: LossFn
) -> float:
    """One pass over ``loader``; the mean training loss per sample."""
    model.train()
    device, total, count = _device(model), 0.0, 0
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(yb)
        count += len(yb)
    return total / max(count, 1)


@torch.no_grad()
def evaluate_loss(model: nn.Module, loader: DataLoader[Any], loss_fn: LossFn) -> float:
    """The mean loss per sample over ``loader``, dropout off and no gradients."""
    model.eval()
    device, total, count = _device(model), 0.0, 0
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        total += loss_fn(model(xb), yb).item() * len(yb)
        count += len(yb)
    return total / max(count, 1)


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Predicted log returns for the rows (or windows) in ``x``, as float64."""
    model.eval()
    device = _device(model)
    tensor = as_tensor(x)
    starts = range(0, len(tensor), batch_size)
    parts = [model(tensor[i : i + batch_size].to(device)).cpu() for i in starts]
    return torch.cat(parts).numpy().astype(np.float64) if parts else np.empty(0)


def train_model(
    model: nn.Module, x: np.ndarray, y: np.ndarray, hparams: HParams, *, seed: int = 0
) -> list[float]:
    """Train ``model`` for ``hparams.epochs`` on (x, y) with MSE; the loss of each epoch.

    Seeds torch's global generator (dropout) and the loader's, so a seed fixes the result.
    """
    torch.manual_seed(seed)
    loader = make_loader(x, y, hparams.batch_size, shuffle=True, seed=seed)
    optimizer, loss_fn = make_optimizer(model, hparams), nn.MSELoss()
    return [fit_epoch(model, loader, optimizer, loss_fn) for _ in range(hparams.epochs)]


@dataclass
class ModelInputs:
    """What a model consumes for some rows of a frame: inputs, targets, row positions."""

    x: np.ndarray
    y: np.ndarray
    rows: np.ndarray


def model_inputs(
    frame: pd.DataFrame, columns: list[str], kind: ModelKind, window: int, scaler: StandardScaler
) -> ModelInputs:
    """Scaled inputs for every row the model can predict (all rows for the MLP; rows with a
    full window of their ticker's history for the GRU)."""
    if kind == "gru":
        x, y, rows = make_windows(frame, columns, window, scaler)
        return ModelInputs(x, y, rows)
    x = scaler.transform(frame[columns]).astype(np.float32)
    target = frame[TARGET] if TARGET in frame else pd.Series(np.nan, index=frame.index)
    return ModelInputs(x, target.to_numpy(dtype=np.float32), np.arange(len(frame)))


@dataclass
class TrainedModel:
    """A fitted model with everything needed to use it: inputs, scaler, weights, lineage.

    ``save``/``load`` write a folder (``model.json`` + ``weights.pt``) that Ray Train
    checkpoints, MLflow artifacts and serving all share.
    """

    kind: ModelKind
    hparams: HParams
    columns: list[str]
    scaler: StandardScaler
    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    feature_version: str
    data_version: str
    seed: int = 0

    def module(self) -> nn.Module:
        model = build_model(self.kind, len(self.columns), self.hparams, seed=self.seed)
        model.load_state_dict(self.state_dict)
        model.eval()
        return model

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``date``, ``ticker``, ``pred`` for every row of ``frame`` the model can predict."""
        inputs = model_inputs(frame, self.columns, self.kind, self.hparams.window, self.scaler)
        preds = predict(self.module(), inputs.x)
        out = frame.iloc[inputs.rows][["date", "ticker"]].reset_index(drop=True)
        out["pred"] = preds
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

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict, folder / "weights.pt")
        (folder / "model.json").write_text(json.dumps(self.meta(), indent=2))

    @classmethod
    def load(cls, folder: Path) -> TrainedModel:
        meta = json.loads((folder / "model.json").read_text())
        state = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
        return cls(
            kind=meta["kind"],
            hparams=HParams(**meta["hparams"]),
            columns=meta["columns"],
            scaler=StandardScaler.from_dict(meta["scaler"]),
            state_dict=state,
            best_epoch=meta["best_epoch"],
            feature_version=meta["feature_version"],
            data_version=meta["data_version"],
            seed=meta["seed"],
        )
