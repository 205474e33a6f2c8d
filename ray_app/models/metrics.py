"""Out-of-sample metrics for next-day return predictions: errors, rank skill and a backtest.

Predictions arrive as a frame with columns ``date``, ``ticker``, ``pred`` and ``target_ret``
(the realised next-day log return); ``summary`` also needs ``label``, what the model was
trained to predict (``target_ret`` itself under the default label; an excess return or a
cross-sectional rank under the others). Point errors alone say little for daily returns (the
zero forecast is hard to beat on RMSE), so the information coefficient and a cost-aware
long-short backtest measure what a model is for: ranking tickers on each day.

Point errors compare ``pred`` with ``label``, the scale the model predicts on; the IC and the
backtest use ``target_ret`` whatever the label, since money is made on realised returns (and
an excess return or a rank orders a day's tickers as their returns do).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ray_app.data.features import LABEL

PRED_COLUMNS = ("date", "ticker", "pred", "target_ret")
TRADING_DAYS = 252
LEAK_DIRECTIONAL_ACCURACY = 0.6
LEAK_IC = 0.1


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
    """Daily cross-sectional rank correlation, its mean and the t-statistic of the mean."""

    mean: float
    std: float
    t_stat: float
    n_days: int
    daily: pd.Series


def information_coefficient(preds: pd.DataFrame) -> ICResult:
    """Spearman correlation of ``pred`` and ``target_ret`` across tickers, per day, averaged.

    Days with fewer than two tickers, or a constant pred or target, have no rank correlation
    and are left out. ``t_stat`` is mean / (std / sqrt(n_days)), NaN with under two days.
    """
    check_predictions(preds)
    by_day = preds.groupby("date")
    ranks = pd.DataFrame(
        {"p": by_day["pred"].rank(), "t": by_day["target_ret"].rank(), "date": preds["date"]}
    )
    centred = ranks[["p", "t"]] - ranks.groupby("date")[["p", "t"]].transform("mean")
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


def long_short_weights(preds: pd.DataFrame, quantile: float) -> pd.DataFrame:
    """Portfolio weights (dates x tickers): +1/k on each of the k highest preds of a day and
    -1/k on the k lowest, k = max(1, floor(quantile * tickers that day)).

    Ties are broken by ticker order; a day whose preds are all equal, or with one ticker,
    holds nothing (there is no ranking to trade on).
    """
    if not 0 < quantile <= 0.5:
        raise ValueError(f"quantile must be in (0, 0.5], got {quantile}")
    frame = preds.sort_values(["date", "ticker"], kind="stable")
    by_day = frame.groupby("date")["pred"]
    n = by_day.transform("size").to_numpy()
    k = np.minimum(np.maximum(1, np.floor(quantile * n)), n // 2)
    rank = by_day.rank(method="first").to_numpy()
    spread = (by_day.transform("max") > by_day.transform("min")).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(rank > n - k, 1 / k, 0.0) - np.where(rank <= k, 1 / k, 0.0)
    weight = np.where(spread & (k > 0), weight, 0.0)
    wide = frame.assign(weight=weight).pivot(index="date", columns="ticker", values="weight")
    return wide.fillna(0.0)


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


def long_short_backtest(
    preds: pd.DataFrame, *, quantile: float = 0.2, cost_bps: float = 5.0
) -> Backtest:
    """Long the top ``quantile`` of tickers by pred each day, short the bottom, equal weight.

    A day's gross return is the weighted sum of the tickers' simple next-day returns
    (exp(target_ret) - 1). Turnover is sum |w_t - w_(t-1)| (2.0 to open the first book) and
    costs ``cost_bps`` basis points per unit of it; weights are rebalanced to equal at every
    close, ignoring their drift within the day.
    """
    check_predictions(preds)
    if cost_bps < 0:
        raise ValueError(f"cost_bps must be >= 0, got {cost_bps}")
    weights = long_short_weights(preds, quantile)
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


def leak_warning(directional_accuracy: float, ic: float) -> str | None:
    """A warning when out-of-sample skill is too good to be true for daily returns, else None.

    Next-day returns are close to unpredictable: a directional accuracy above 0.6 or an IC
    beyond +-0.1 almost always means future information reached the features or the split.
    A strongly negative IC is flagged as well, since a leak with a sign error looks like that.
    """
    reasons = []
    if directional_accuracy > LEAK_DIRECTIONAL_ACCURACY:
        reasons.append(
            f"directional accuracy {directional_accuracy:.3f} > {LEAK_DIRECTIONAL_ACCURACY}"
        )
    if abs(ic) > LEAK_IC:
        reasons.append(f"|IC| {abs(ic):.3f} > {LEAK_IC}")
    if not reasons:
        return None
    return (
        f"suspiciously good out-of-sample results ({'; '.join(reasons)}): daily returns are "
        "near-unpredictable, so check for a leak (future data in features, shuffled or "
        "unembargoed splits, a scaler fitted on test rows)"
    )


def summary(
    preds: pd.DataFrame, *, quantile: float = 0.2, cost_bps: float = 5.0
) -> dict[str, float]:
    """Every scalar metric of ``preds`` in one flat dict (ready for ``mlflow.log_metrics``):
    point errors against ``label``, rank skill and the backtest against ``target_ret``."""
    check_predictions(preds, (*PRED_COLUMNS, LABEL))
    y, p = preds[LABEL].to_numpy(), preds["pred"].to_numpy()
    ic = information_coefficient(preds)
    book = long_short_backtest(preds, quantile=quantile, cost_bps=cost_bps)
    return {
        "rmse": rmse(y, p),
        "mae": mae(y, p),
        "directional_accuracy": directional_accuracy(y, p),
        "ic_mean": ic.mean,
        "ic_t_stat": ic.t_stat,
        "ic_days": float(ic.n_days),
        "annual_return": book.annual_return,
        "sharpe": book.sharpe,
        "max_drawdown": book.max_drawdown,
        "avg_turnover": book.avg_turnover,
    }
