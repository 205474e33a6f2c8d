"""What crosses the one network hop of a prediction, and the batched forward pass.

The ingress sends a variant a ``Job``: the feature rows of a request's tickers as one array,
with the column names. The variant answers a ``Result`` carrying the model version that made
it, so the ingress caches and labels predictions by what actually produced them, even in the
second a rollout swaps models. Nothing here imports torch or Ray: the ingress imports this
module without paying for either.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class ServingModel(Protocol):
    """A loaded model as serving sees it: raw feature windows in, predicted log returns out."""

    name: str
    version: int

    @property
    def kind(self) -> str: ...

    @property
    def columns(self) -> list[str]: ...

    @property
    def window(self) -> int: ...

    @property
    def feature_version(self) -> str: ...

    @property
    def digest(self) -> str:
        """A hash of the model's content: its persisted predictions are read back only by a
        model with the same one."""
        ...

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, window, len(columns)) unscaled feature rows, oldest first -> (n,) predictions."""
        ...


ModelLoader = Callable[[str], ServingModel]
"""Loads the model an alias or version number names; called in a variant replica."""


@dataclass(frozen=True)
class Job:
    """One request's rows for a variant: (tickers, rows, columns) in ``columns`` order."""

    columns: tuple[str, ...]
    rows: np.ndarray


@dataclass(frozen=True)
class Result:
    """The predictions of one job and the model that made them. ``needs_rows`` is set instead
    when the job carried fewer rows per ticker than the (newly loaded) model's window."""

    model: str
    version: int
    preds: np.ndarray | None = None
    needs_rows: int | None = None


@dataclass(frozen=True)
class VariantInfo:
    """What a variant replica serves now; ``model`` is None while it has nothing loaded."""

    name: str
    ref: str | None
    model: str | None = None
    version: int | None = None
    kind: str | None = None
    window: int = 1
    columns: tuple[str, ...] = ()
    feature_version: str | None = None
    loaded_at: dt.datetime | None = None
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.model is not None and self.version is not None


def describe(
    name: str,
    ref: str | None,
    model: ServingModel | None,
    loaded_at: dt.datetime | None,
    error: str | None,
) -> VariantInfo:
    """The ``VariantInfo`` of a replica holding ``model`` (or none, for the reason ``error``)."""
    if model is None:
        return VariantInfo(name=name, ref=ref, error=error)
    return VariantInfo(
        name=name,
        ref=ref,
        model=model.name,
        version=model.version,
        kind=model.kind,
        window=model.window,
        columns=tuple(model.columns),
        feature_version=model.feature_version,
        loaded_at=loaded_at,
        error=error,
    )


class ColumnSelector:
    """Positions of the model's columns among a job's columns, remembered per column list:
    the ingress sends the same list on every request."""

    def __init__(self, model_columns: list[str]) -> None:
        self._wanted = model_columns
        self._known: dict[tuple[str, ...], np.ndarray] = {}

    def __call__(self, columns: tuple[str, ...]) -> np.ndarray:
        if columns not in self._known:
            missing = [c for c in self._wanted if c not in columns]
            if missing:
                raise ValueError(f"the feature rows lack the model's column(s) {missing}")
            self._known[columns] = np.array([columns.index(c) for c in self._wanted])
        return self._known[columns]


def predict_jobs(model: ServingModel, select: ColumnSelector, jobs: list[Job]) -> list[Result]:
    """Every job's predictions from one forward pass over all their rows."""
    ready = [j for j in jobs if j.rows.shape[1] >= model.window]
    parts = [j.rows[:, -model.window :, select(j.columns)] for j in ready]
    preds = model.predict(np.concatenate(parts)) if parts else np.empty(0)
    bounds = np.cumsum([0, *(len(p) for p in parts)])
    by_job = {id(j): preds[a:b] for j, a, b in zip(ready, bounds[:-1], bounds[1:], strict=True)}
    return [
        Result(model.name, model.version, preds=by_job[id(j)])
        if id(j) in by_job
        else Result(model.name, model.version, needs_rows=model.window)
        for j in jobs
    ]


@dataclass(frozen=True)
class Scores:
    """A model's predictions for every row of some tickers of a feature set, aligned with the
    ticker's rows (NaN where a row has less history than the model's window)."""

    model: str
    version: int
    feature_version: str
    preds: dict[str, np.ndarray]

    def serves(self, model: str | None, version: int | None, feature_version: str) -> bool:
        return (self.model, self.version, self.feature_version) == (
            model,
            version,
            feature_version,
        )


Frame = tuple[np.ndarray, np.ndarray]
"""A ticker's feature rows: dates (``datetime64[D]``) and values (rows, columns)."""


@dataclass(frozen=True)
class Scored:
    """A ticker's rows and the predictions made for them (aligned)."""

    dates: np.ndarray
    values: np.ndarray
    preds: np.ndarray


def identical_prefix(old: Frame, new: Frame) -> int:
    """How many leading rows of ``new`` are bit for bit those of ``old`` (dates, and values
    compared as bits: NaN equals the same NaN, 0.0 differs from -0.0)."""
    (old_dates, old_values), (new_dates, new_values) = old, new
    if old_values.shape[1:] != new_values.shape[1:]:
        return 0
    n = min(len(old_dates), len(new_dates))
    bits_old = np.ascontiguousarray(old_values[:n]).view(np.uint64)
    bits_new = np.ascontiguousarray(new_values[:n]).view(np.uint64)
    same = (old_dates[:n] == new_dates[:n]) & (bits_old == bits_new).all(axis=1)
    return n if same.all() else int(np.argmin(same))


def score_frames(
    model: ServingModel,
    select: ColumnSelector,
    columns: tuple[str, ...],
    frames: dict[str, Frame],
    previous: dict[str, Scored] | None = None,
) -> dict[str, np.ndarray]:
    """Per ticker, the prediction for the window ending at each row: what ``predict_jobs``
    answers for that row, computed for all of them at once. With ``previous`` (the same
    model's predictions over an earlier feature set, with the same columns), a ticker's
    leading rows that are bit for bit the rows those were made from keep their predictions
    (a window of identical rows gives the same answer), and only the rows after them are
    predicted: a new day's feature set costs its new rows, not every row again."""
    cols, window = select(columns), model.window
    out = {}
    for ticker, (dates, values) in frames.items():
        preds = np.full(len(values), np.nan)
        start = 0
        known = (previous or {}).get(ticker)
        if known is not None:
            start = identical_prefix((known.dates, known.values), (dates, values))
            preds[:start] = known.preds[:start]
        first = max(start, window - 1)
        if len(values) > first:
            rows = values[first - window + 1 :, cols]
            windows = np.lib.stride_tricks.sliding_window_view(rows, window, axis=0)
            preds[first:] = model.predict(windows.transpose(0, 2, 1))
        out[ticker] = preds
    return out
