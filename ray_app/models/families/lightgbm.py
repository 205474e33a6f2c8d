"""The LightGBM family: gradient-boosted trees on the current row's features; no Ray.

Input window: 1. A tree model takes each ticker-day's current feature row, as LightGBM does
in Qlib's Alpha158 benchmark. The features already carry the history a window would add (lags
of the return, returns and volatilities over several horizons, rolling indicators), so
flattening the last k rows would multiply the columns by k, mostly with copies of the same
information shifted by a day, and lengthen the embargo for nothing. A window of 1 also keeps
the serving pass one row per prediction.

Trees split on thresholds, so the training scaler (kept for every family) changes nothing
but the thresholds' numbers. The model is saved in LightGBM's own text format
(``model.txt``, ``Booster.model_to_string``) and loaded with ``lgb.Booster(model_str=...)``;
nothing is pickled.

The loss is squared error, like the torch families, so Tune compares every family on one
validation loss. Boosting stops ``early_stopping_rounds`` rounds after the validation loss
last improved, and the model keeps the trees up to the best round. ``boost`` is the loop the
in-process fit, Tune trials and the Ray Train workers (``ray_app.training.families.lightgbm``,
with ``get_network_params`` for data-parallel training) all run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightgbm as lgb
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ray_app.core.settings import SearchDimension
from ray_app.models.families._family import (
    Arrays,
    Family,
    FitConfig,
    FitResult,
    LoopSession,
    Predict,
    TrainedModel,
    register,
)

WEIGHTS_FILE = "model.txt"


class LightGBMParams(BaseModel):
    """Hyperparameters of the LightGBM family (LightGBM's own names)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    num_boost_round: int = Field(
        500, ge=1, description="Upper bound on boosting rounds; early stopping usually ends sooner"
    )
    learning_rate: float = Field(0.05, gt=0.0, description="Shrinkage of each tree")
    num_leaves: int = Field(31, ge=2, description="Leaves per tree")
    max_depth: int = Field(-1, description="Depth limit of a tree (-1: none)")
    min_data_in_leaf: int = Field(
        200, ge=1, description="Rows a leaf needs at least: daily returns are noisy"
    )
    feature_fraction: float = Field(
        0.8, gt=0.0, le=1.0, description="Share of the columns each tree sees"
    )
    bagging_fraction: float = Field(
        0.8, gt=0.0, le=1.0, description="Share of the rows each round sees"
    )
    lambda_l1: float = Field(0.0, ge=0.0, description="L1 penalty on leaf values")
    lambda_l2: float = Field(1.0, ge=0.0, description="L2 penalty on leaf values")
    early_stopping_rounds: int = Field(
        50, ge=1, description="Rounds without validation improvement before stopping"
    )
    report_every: int = Field(
        10, ge=1, description="Rounds between two reports (one Tune step, ASHA's time unit)"
    )


def lightgbm_space() -> dict[str, SearchDimension]:
    return {
        "learning_rate": SearchDimension(type="loguniform", low=0.01, high=0.2),
        "num_leaves": SearchDimension(type="choice", values=[7, 15, 31, 63]),
        "min_data_in_leaf": SearchDimension(type="choice", values=[50, 200, 1000]),
        "feature_fraction": SearchDimension(type="uniform", low=0.5, high=1.0),
        "lambda_l2": SearchDimension(type="loguniform", low=1e-3, high=100.0),
    }


def booster_params(params: LightGBMParams, config: FitConfig) -> dict[str, Any]:
    """LightGBM's parameter mapping for ``lgb.train``: squared error, seeded, quiet."""
    return {
        "objective": "regression",
        "metric": "l2",
        "learning_rate": params.learning_rate,
        "num_leaves": params.num_leaves,
        "max_depth": params.max_depth,
        "min_data_in_leaf": params.min_data_in_leaf,
        "feature_fraction": params.feature_fraction,
        "bagging_fraction": params.bagging_fraction,
        "bagging_freq": 1 if params.bagging_fraction < 1 else 0,
        "lambda_l1": params.lambda_l1,
        "lambda_l2": params.lambda_l2,
        "num_threads": config.threads,
        "seed": config.seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
    }


def rows(x: np.ndarray) -> np.ndarray:
    """The current row of each (rows, window, features) input: what the trees read."""
    return x[:, -1, :] if x.ndim == 3 else x


class _Reporter:
    """A LightGBM callback reporting every ``every`` rounds (and the last) to a session, in
    the metrics every family shares; ``best_epoch`` is the best round so far."""

    order = 20  # before early stopping (30), which ends training on the round it stops at

    def __init__(self, session: LoopSession, every: int, has_val: bool) -> None:
        self.session, self.every, self.has_val = session, every, has_val
        self.best = (math.inf, 0)
        self.last = (0, math.nan, math.nan)
        self.history: list[dict[str, float]] = []

    def __call__(self, env: lgb.callback.CallbackEnv) -> None:
        losses = {name: value for name, _, value, *_ in env.evaluation_result_list or []}
        val = losses.get("val", losses["train"]) if self.has_val else losses["train"]
        if val < self.best[0]:
            self.best = (val, env.iteration + 1)
        done = env.iteration + 1
        self.last = (done, losses["train"], val)
        if done % self.every and done != env.end_iteration:
            return
        self.report(done, losses["train"], val)

    def finish(self) -> None:
        """Report the last round when boosting stopped between two reports."""
        if not self.history or self.history[-1]["epoch"] != self.last[0]:
            self.report(*self.last)

    def report(self, done: int, train: float, val: float) -> None:
        metrics = {
            "epoch": done,
            "train_loss": float(train),
            "val_loss": float(val),
            "best_val_loss": float(self.best[0]),
            "best_epoch": self.best[1],
        }
        self.history.append(metrics)
        self.session.report(metrics, None)


def boost(
    params: LightGBMParams,
    config: FitConfig,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None,
    session: LoopSession,
    extra: dict[str, Any] | None = None,
    columns: list[str] | None = None,
) -> tuple[lgb.Booster, list[dict[str, float]]]:
    """Boost on ``train`` (rows x features), early-stopping on ``val`` when given; the
    booster (``best_iteration`` set) and the reported history. ``extra`` adds parameters
    (Ray Train's network parameters)."""
    names: list[str] | Literal["auto"] = columns or "auto"
    train_set = lgb.Dataset(train[0], label=train[1], feature_name=names, free_raw_data=False)
    sets, set_names = [train_set], ["train"]
    has_val = val is not None and len(val[1]) > 0
    callbacks: list[Callable[[Any], None]] = []
    if has_val and val is not None:
        sets.append(lgb.Dataset(val[0], label=val[1], reference=train_set))
        set_names.append("val")
        callbacks.append(lgb.early_stopping(params.early_stopping_rounds, verbose=False))
    reporter = _Reporter(session, params.report_every, has_val)
    booster = lgb.train(
        {**booster_params(params, config), **(extra or {})},
        train_set,
        num_boost_round=params.num_boost_round,
        valid_sets=sets,
        valid_names=set_names,
        callbacks=[*callbacks, reporter],
    )
    reporter.finish()
    if not has_val:
        booster.best_iteration = booster.current_iteration()
    return booster, reporter.history


class LightGBMFamily(Family):
    name = "lightgbm"
    Params: ClassVar[type[BaseModel]] = LightGBMParams
    ray_loop: ClassVar[str] = "lightgbm"
    requirements: ClassVar[tuple[str, ...]] = ("lightgbm",)
    default_space: ClassVar[dict[str, SearchDimension]] = lightgbm_space()

    def window(self, params: LightGBMParams) -> int:
        return 1

    def fit(
        self, arrays: Arrays, params: LightGBMParams, config: FitConfig, session: LoopSession
    ) -> FitResult:
        train = (rows(arrays.x_train), arrays.y_train)
        val = (rows(arrays.x_val), arrays.y_val)
        booster, history = boost(params, config, train, val, session)
        return self.result(booster, history)

    @staticmethod
    def result(booster: lgb.Booster, history: list[dict[str, float]]) -> FitResult:
        """The fit: the model text up to the best round."""
        best = booster.best_iteration or booster.current_iteration()
        return FitResult(booster.model_to_string(num_iteration=best), best, history)

    def predictor(self, model: TrainedModel) -> Predict:
        booster = lgb.Booster(model_str=model.weights)

        def predict(x: np.ndarray) -> np.ndarray:
            if not len(x):
                return np.empty(0)
            out = booster.predict(rows(x), num_threads=1, validate_features=False)
            return np.asarray(out, dtype=np.float64)

        return predict

    def save_weights(self, weights: str, folder: Path) -> None:
        (folder / WEIGHTS_FILE).write_text(weights)

    def load_weights(self, folder: Path) -> str:
        return (folder / WEIGHTS_FILE).read_text()

    def fixed_length(self, params: LightGBMParams, best_epoch: int) -> LightGBMParams:
        return params.model_copy(update={"num_boost_round": max(1, best_epoch)})

    def max_steps(self, params: LightGBMParams) -> int:
        return math.ceil(params.num_boost_round / params.report_every)


FAMILY = register(LightGBMFamily())
