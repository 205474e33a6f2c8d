"""Out-of-sample metrics for next-day return predictions: errors, rank skill and a backtest.

Predictions arrive as a frame with columns ``date``, ``ticker``, ``pred`` and ``target_ret``
(the realised next-day log return); ``summary`` also needs ``label``, what the model was
trained to predict (``target_ret`` itself under the default label; an excess return or a
cross-sectional rank under the others). Point errors alone say little for daily returns (the
zero forecast is hard to beat on RMSE), so the information coefficients (rank and Pearson,
with their ICIR and t-statistic) and cost-aware long-short backtests (a quantile book and a
top-k / bottom-k book) measure what a model is for: ranking tickers on each day.

Point errors compare ``pred`` with ``label``, the scale the model predicts on; the ICs and the
backtests use ``target_ret`` whatever the label, since money is made on realised returns (and
an excess return or a rank orders a day's tickers as their returns do).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ray_app.data.features import LABEL

PRED_COLUMNS = ("date", "ticker", "pred", "target_ret")
TRADING_DAYS = 252
LEAK_DIRECTIONAL_ACCURACY = 0.6
LEAK_IC = 0.1
# Metric names earlier releases recorded (MLflow metrics, version tags) -> today's: the rank IC
# was ``ic_mean``, which did not say which IC it was.
FORMER_NAMES = {"ic_mean": "rank_ic", "ic_t_stat": "rank_ic_t", "ic_days": "rank_ic_days"}


def check_predictions(preds: pd.DataFrame, columns: tuple[str, ...] = PRED_COLUMNS) -> None:
    """Refuse a frame the metrics would misread: missing columns, no rows, NaNs, duplicates."""
    missing = [c for c in columns if c not in preds]
    if missing:
        raise ValueError(f"predictions lack column(s) {', '.join(missing)}; need {columns}")
    if preds.empty:
        raise ValueError("predictions frame is empty")
    values = [c for c in columns if c not in ("date", "ticker")]
    bad = int(preds[values].isna().any(axis=1).sum())
    if bad:
        raise ValueError(f"{bad} prediction row(s) have a NaN {' or '.join(values)}")
    dupes = int(preds.duplicated(["date", "ticker"]).sum())
    if dupes:
        raise ValueError(f"{dupes} prediction row(s) repeat a (date, ticker) pair")


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(y_true) - np.asarray(y_pred)) ** 2)))


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y_true) - np.asarray(y_pred))))


def directional_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of rows where the predicted and realised moves are both up (> 0) or both not,
    matching the ``target_dir`` label."""
    return float(np.mean((np.asarray(y_true) > 0) == (np.asarray(y_pred) > 0)))


@dataclass(frozen=True, eq=False)
class ICResult:
    """A daily cross-sectional correlation of pred and target: its mean, std, information
    ratio and the t-statistic of the mean, over the days that have one."""

    mean: float
    std: float
    t_stat: float
    n_days: int
    daily: pd.Series

    @property
    def ir(self) -> float:
        """Mean over std of the daily IC (ICIR, per day, not annualised): how steady the skill
        is. ``t_stat`` is ``ir * sqrt(n_days)``. NaN with under two days or a constant IC."""
        return self.mean / self.std if self.std > 0 else float("nan")


def _daily_ic(preds: pd.DataFrame, pred: pd.Series, target: pd.Series) -> ICResult:
    """Pearson correlation of ``pred`` and ``target`` across the tickers of each day.

    Days with fewer than two tickers, or a constant pred or target, have no correlation and
    are left out. ``t_stat`` is mean / (std / sqrt(n_days)), NaN with under two days.
    """
    frame = pd.DataFrame({"p": pred, "t": target, "date": preds["date"]})
    centred = frame[["p", "t"]] - frame.groupby("date")[["p", "t"]].transform("mean")
    sums = (
        pd.DataFrame(
            {
                "pt": centred["p"] * centred["t"],
                "pp": centred["p"] ** 2,
                "tt": centred["t"] ** 2,
                "date": preds["date"],
            }
        )
        .groupby("date")
        .sum()
    )
    denom = np.sqrt(sums["pp"] * sums["tt"])
    daily: pd.Series = (sums["pt"] / denom)[denom > 0].rename("ic")
    n = len(daily)
    mean = float(daily.mean()) if n else float("nan")
    std = float(daily.std(ddof=1)) if n > 1 else float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        t_stat = float(np.float64(mean) / (np.float64(std) / np.sqrt(n))) if n > 1 else float("nan")
    return ICResult(mean, std, t_stat, n, daily)


def rank_ic(preds: pd.DataFrame) -> ICResult:
    """Spearman correlation of ``pred`` and ``target_ret`` across tickers, per day (ties get
    their average rank): the rank IC, which only asks whether a model orders the day's
    tickers well, so one outlier return cannot make or break a day."""
    check_predictions(preds)
    by_day = preds.groupby("date")
    return _daily_ic(preds, by_day["pred"].rank(), by_day["target_ret"].rank())


def pearson_ic(preds: pd.DataFrame) -> ICResult:
    """Pearson correlation of ``pred`` and ``target_ret`` across tickers, per day: the IC
    that also weighs how far apart the predictions are, as a book sized by them would."""
    check_predictions(preds)
    return _daily_ic(preds, preds["pred"], preds["target_ret"])


def _book_weights(
    preds: pd.DataFrame, per_side: Callable[[np.ndarray], np.ndarray]
) -> pd.DataFrame:
    """Portfolio weights (dates x tickers): +1/k on each of the k highest preds of a day and
    -1/k on the k lowest, k = ``per_side(tickers that day)``, at most half of them.

    Ties are broken by ticker order; a day whose preds are all equal, or with one ticker,
    holds nothing (there is no ranking to trade on).
    """
    frame = preds.sort_values(["date", "ticker"], kind="stable")
    by_day = frame.groupby("date")["pred"]
    n = by_day.transform("size").to_numpy()
    k = np.minimum(per_side(n), n // 2)
    rank = by_day.rank(method="first").to_numpy()
    spread = (by_day.transform("max") > by_day.transform("min")).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(rank > n - k, 1 / k, 0.0) - np.where(rank <= k, 1 / k, 0.0)
    weight = np.where(spread & (k > 0), weight, 0.0)
    wide = frame.assign(weight=weight).pivot(index="date", columns="ticker", values="weight")
    return wide.fillna(0.0)


def long_short_weights(preds: pd.DataFrame, quantile: float) -> pd.DataFrame:
    """The quantile book's weights (``_book_weights``): k = max(1, floor(quantile * tickers))
    a side, so the book grows with the universe."""
    if not 0 < quantile <= 0.5:
        raise ValueError(f"quantile must be in (0, 0.5], got {quantile}")
    return _book_weights(preds, lambda n: np.maximum(1, np.floor(quantile * n)))


def top_k_weights(preds: pd.DataFrame, k: int) -> pd.DataFrame:
    """The top-k / bottom-k book's weights (``_book_weights``): the same ``k`` names a side
    every day (fewer on a day with under 2k tickers), as a desk that holds a fixed number of
    positions trades it."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return _book_weights(preds, lambda n: np.full_like(n, k))


def max_drawdown(equity: np.ndarray | pd.Series) -> float:
    """Largest peak-to-trough fall of an equity curve, as a positive fraction of the peak."""
    values = np.asarray(equity, dtype=np.float64)
    if len(values) == 0:
        return 0.0
    peak = np.maximum.accumulate(values)
    return float(np.max(1 - values / peak))


def annualised_return(daily: pd.Series) -> float:
    """Compound annual growth over ``TRADING_DAYS`` days a year; -1 once the equity is gone."""
    growth = float(np.prod(1 + daily.to_numpy()))
    return growth ** (TRADING_DAYS / len(daily)) - 1 if growth > 0 else -1.0


def sharpe_ratio(daily: pd.Series) -> float:
    """Annualised mean over std of daily returns (no risk-free rate); NaN if flat or too short."""
    std = float(daily.std(ddof=1)) if len(daily) > 1 else 0.0
    return float(daily.mean() / std * np.sqrt(TRADING_DAYS)) if std > 0 else float("nan")


@dataclass(frozen=True, eq=False)
class Backtest:
    """A daily-rebalanced long-short book: per-day P&L (columns gross, turnover, cost, net)
    and its summary."""

    daily: pd.DataFrame
    annual_return: float
    sharpe: float
    max_drawdown: float
    avg_turnover: float


def backtest(preds: pd.DataFrame, weights: pd.DataFrame, cost_bps: float) -> Backtest:
    """The daily P&L of holding ``weights`` (dates x tickers, from ``preds``' predictions).

    A day's gross return is the weighted sum of the tickers' simple next-day returns
    (exp(target_ret) - 1). Turnover is sum |w_t - w_(t-1)| (2.0 to open the first book) and
    costs ``cost_bps`` basis points per unit of it; weights are rebalanced to equal at every
    close, ignoring their drift within the day.
    """
    if cost_bps < 0:
        raise ValueError(f"cost_bps must be >= 0, got {cost_bps}")
    simple = preds.assign(simple=np.expm1(preds["target_ret"].to_numpy()))
    simple = simple.pivot(index="date", columns="ticker", values="simple")
    gross = (weights * simple.reindex_like(weights).fillna(0.0)).sum(axis=1)
    turnover = (weights - weights.shift(1, fill_value=0.0)).abs().sum(axis=1)
    cost = turnover * cost_bps / 1e4
    daily = pd.DataFrame({"gross": gross, "turnover": turnover, "cost": cost, "net": gross - cost})
    equity = np.concatenate([[1.0], np.cumprod(1 + daily["net"].to_numpy())])
    return Backtest(
        daily,
        annualised_return(daily["net"]),
        sharpe_ratio(daily["net"]),
        max_drawdown(equity),
        float(turnover.mean()),
    )


def long_short_backtest(
    preds: pd.DataFrame, *, quantile: float = 0.2, cost_bps: float = 5.0
) -> Backtest:
    """Long the top ``quantile`` of tickers by pred each day, short the bottom, equal weight
    (``backtest`` of ``long_short_weights``)."""
    check_predictions(preds)
    return backtest(preds, long_short_weights(preds, quantile), cost_bps)


def top_k_backtest(preds: pd.DataFrame, *, k: int = 10, cost_bps: float = 5.0) -> Backtest:
    """Long the ``k`` highest preds each day, short the ``k`` lowest, equal weight
    (``backtest`` of ``top_k_weights``)."""
    check_predictions(preds)
    return backtest(preds, top_k_weights(preds, k), cost_bps)


def leak_warning(directional_accuracy: float, ic: float) -> str | None:
    """A warning when out-of-sample skill is too good to be true for daily returns, else None.

    Next-day returns are close to unpredictable: a directional accuracy above 0.6 or a rank IC
    (``ic``) beyond +-0.1 almost always means future information reached the features or the split.
    A strongly negative IC is flagged as well, since a leak with a sign error looks like that.
    """
    reasons = []
    if directional_accuracy > LEAK_DIRECTIONAL_ACCURACY:
        reasons.append(
            f"directional accuracy {directional_accuracy:.3f} > {LEAK_DIRECTIONAL_ACCURACY}"
        )
    if abs(ic) > LEAK_IC:
        reasons.append(f"|rank IC| {abs(ic):.3f} > {LEAK_IC}")
    if not reasons:
        return None
    return (
        f"suspiciously good out-of-sample results ({'; '.join(reasons)}): daily returns are "
        "near-unpredictable, so check for a leak (future data in features, shuffled or "
        "unembargoed splits, a scaler fitted on test rows)"
    )


def summary(
    preds: pd.DataFrame,
    *,
    quantile: float = 0.2,
    top_k: int = 10,
    cost_bps: float = 5.0,
    point_forecast: bool = True,
) -> dict[str, float]:
    """Every scalar metric of ``preds`` in one flat dict (ready for ``mlflow.log_metrics``):
    point errors against ``label``, rank skill and the backtests against ``target_ret``.

    ``point_forecast=False`` says ``pred`` only orders the tickers (a factor's rank), so the
    point errors and the directional accuracy, which read it as a return, are NaN.
    """
    check_predictions(preds, (*PRED_COLUMNS, LABEL))
    y, p = preds[LABEL].to_numpy(), preds["pred"].to_numpy()
    ranked, linear = rank_ic(preds), pearson_ic(preds)
    book = long_short_backtest(preds, quantile=quantile, cost_bps=cost_bps)
    top = top_k_backtest(preds, k=top_k, cost_bps=cost_bps)
    nan = float("nan")
    return {
        "rmse": rmse(y, p) if point_forecast else nan,
        "mae": mae(y, p) if point_forecast else nan,
        "directional_accuracy": directional_accuracy(y, p) if point_forecast else nan,
        "rank_ic": ranked.mean,
        "rank_icir": ranked.ir,
        "rank_ic_t": ranked.t_stat,
        "rank_ic_days": float(ranked.n_days),
        "pearson_ic": linear.mean,
        "pearson_icir": linear.ir,
        "annual_return": book.annual_return,
        "sharpe": book.sharpe,
        "max_drawdown": book.max_drawdown,
        "avg_turnover": book.avg_turnover,
        "top_k_annual_return": top.annual_return,
        "top_k_sharpe": top.sharpe,
        "top_k_turnover": top.avg_turnover,
    }
