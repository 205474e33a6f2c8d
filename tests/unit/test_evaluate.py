"""Evaluation's predictors on one fold, without Ray: the factors are ranked on exactly the rows
the model predicts, from a past that reaches back before the test window, and scored on their
ranking alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ray_app.core.settings import EvaluateSettings
from ray_app.data.features import LABEL, TARGET
from ray_app.models.factors import FACTOR_NAMES, daily_rank
from ray_app.training.evaluate import BASELINES, PREDICTORS, fold_predictions, score_predictors
from ray_app.training.splits import DateRange, Fold
from ray_app.training.train import TrainingData

DAYS = pd.bdate_range("2024-01-01", periods=60)
TICKERS = ["A", "B", "C", "D", "E", "F"]


def feature_rows(seed: int = 0) -> pd.DataFrame:
    """Rows with ``ret_1d``, the target (the next row's ``ret_1d``) and the label (the target
    itself under the default label), as a loaded feature set has."""
    rng = np.random.default_rng(seed)
    frames = []
    for ticker in TICKERS:
        ret = rng.normal(0, 0.02, len(DAYS) + 1)
        frames.append(
            pd.DataFrame(
                {
                    "ticker": ticker,
                    "date": DAYS,
                    "ret_1d": ret[:-1],
                    TARGET: ret[1:],
                    LABEL: ret[1:],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


class OneTickerShort:
    """A model that predicts every row but those of ticker F (as a GRU leaves out rows without
    a full window): the factors must be judged on the same rows."""

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        rows = frame[frame["ticker"] != "F"]
        return rows[["date", "ticker"]].assign(pred=rows["ret_1d"].to_numpy())


def a_fold(frame: pd.DataFrame) -> Fold:
    train, test = frame["date"] < DAYS[30], frame["date"] >= DAYS[40]
    return Fold(
        "fold_0",
        DateRange(DAYS[0], DAYS[29], 30),
        DateRange(DAYS[40], DAYS[-1], 20),
        train.to_numpy(),
        test.to_numpy(),
    )


def test_factors_are_ranked_on_the_models_rows_and_scored_as_rankings() -> None:
    frame = feature_rows()
    fold = a_fold(frame)
    # fold_predictions reads the frame, the columns and the fold's masks, no manifest or split
    none: Any = None
    model: Any = OneTickerShort()
    wide = fold_predictions(TrainingData(frame, ["ret_1d"], none, none), fold, model)

    assert list(wide.columns[-len(FACTOR_NAMES) :]) == list(FACTOR_NAMES)
    assert set(wide["ticker"]) == set(TICKERS) - {"F"} and wide["date"].min() == DAYS[40]
    # The one-day reversal is the rank of -ret_1d among the five tickers the model predicts.
    rows = wide[["date", "ticker"]].merge(frame, on=["date", "ticker"])
    expected = daily_rank(rows["date"], -rows["ret_1d"])
    np.testing.assert_allclose(wide["reversal_1d"], expected)
    assert sorted(wide.loc[wide["date"] == DAYS[40], "reversal_1d"]) == [-0.5, -0.25, 0, 0.25, 0.5]
    # On the first test day momentum reaches 21 days back, before the test window.
    assert (wide.loc[wide["date"] == DAYS[40], "momentum_21d"] != 0).any()

    scores = score_predictors(wide, EvaluateSettings(top_k=1))
    assert set(scores) == set(PREDICTORS) and set(FACTOR_NAMES) < set(BASELINES)
    for name in FACTOR_NAMES:
        assert scores[name]["rmse"] is None and scores[name]["directional_accuracy"] is None
        assert scores[name]["rank_ic"] is not None and scores[name]["sharpe"] is not None
    assert scores["persistence"]["rmse"] is not None
    # The model predicts ret_1d, the reversal ranks -ret_1d: mirror images on rank IC.
    assert scores["reversal_1d"]["rank_ic"] == -scores["model"]["rank_ic"]
