"""Inputs and baselines shared by every model family: the scaler, the windows, and the zero,
persistence and ridge baselines; no torch, no Ray.

Inputs are standardised with a scaler fitted on the training window only; a model sees, per
ticker, the last ``window`` feature rows up to and including the row it predicts for, never
a later one. Models and baselines fit the ``label`` column: the label the feature set chose
(``features.label``), so none of them depends on which. The families themselves live in
``ray_app.models.families``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from ray_app.data.features import LABEL


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
    """Windowed inputs: for each row, its ticker's last ``window`` rows ending at that row.

    Returns ``X`` (n, window, features) as float32, ``y`` (the rows' labels, NaN where the
    frame has none) and the positions in ``frame`` of the rows kept, ascending. Rows with
    fewer than ``window - 1`` earlier rows of their ticker are dropped. Window the whole
    frame, then select rows with a split's mask: a test row's window may then reach back
    into earlier (training or embargo) days, which were known on the day it predicts from.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    values = frame[columns].to_numpy(dtype=np.float64)
    values = (scaler.transform(values) if scaler is not None else values).astype(np.float32)
    label = frame[LABEL] if LABEL in frame else pd.Series(np.nan, index=frame.index)
    label_values = label.to_numpy(dtype=np.float32)
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
    return np.concatenate(blocks)[order], label_values[index[order]], index[order]


class Predictor(Protocol):
    """The interface every baseline shares: fit on a training frame, predict per row."""

    def fit(self, frame: pd.DataFrame) -> Predictor: ...

    def predict(self, frame: pd.DataFrame) -> np.ndarray: ...


class ZeroBaseline:
    """Predicts zero: no return (or no excess return, or the day's median rank, under the
    other labels), the random-walk forecast any model must beat."""

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
        y = frame[LABEL].to_numpy(dtype=np.float64)
        # Scaled columns have mean 0, so the unpenalised intercept is the mean label; ridge is
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


@dataclass
class ModelInputs:
    """What a model consumes for some rows of a frame: inputs, labels, row positions."""

    x: np.ndarray
    y: np.ndarray
    rows: np.ndarray


def model_inputs(
    frame: pd.DataFrame, columns: list[str], window: int, scaler: StandardScaler
) -> ModelInputs:
    """Scaled windows (rows, window, features) for every row the model can predict: all rows
    for a window of 1, else rows with ``window - 1`` earlier rows of their ticker."""
    if window > 1:
        x, y, rows = make_windows(frame, columns, window, scaler)
        return ModelInputs(x, y, rows)
    x = scaler.transform(frame[columns]).astype(np.float32)[:, None, :]
    label = frame[LABEL] if LABEL in frame else pd.Series(np.nan, index=frame.index)
    return ModelInputs(x, label.to_numpy(dtype=np.float32), np.arange(len(frame)))
