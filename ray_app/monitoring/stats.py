"""The statistics of A/B evidence on daily series, vectorised over leading axes.

Every function takes arrays whose last axis is the trading day (and, for the per-day
statistics, a ticker axis before it), so a calibration test runs hundreds of seeds in one
call. Numpy and scipy only: statsmodels' HAC covariance and arch's bootstraps install beside
our pins, but both work on one series at a time (a regression result, a Python loop over
replications), and the four formulas below are short enough to state and test exactly.

- Long-run variance: Newey and West (1987), Bartlett weights ``1 - k / (L + 1)``, with the
  lag rule of Newey and West (1994), ``L = floor(4 (T / 100) ** (2 / 9))``.
- Diebold and Mariano (1995) on the daily mean loss differential, with the small-sample
  correction of Harvey, Leybourne and Newbold (1997) and Student's t with T - 1 degrees of
  freedom: for one-step forecasts the statistic is scaled by ``sqrt((T - 1) / T)``.
- Stationary bootstrap (Politis and Romano, 1994) of a daily mean: blocks of geometric length
  with mean ``ceil(T ** (1 / 3))`` days, the order of the optimal block length for variances
  and distributions (Hall, Horowitz and Jing, 1995); percentile intervals.
- Days needed: the normal-approximation sample size of a two-sided test at level alpha and
  power 0.8 for the observed mean and long-run variance (the effect taken as true).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

POWER = 0.8


def newey_west_lags(days: int) -> int:
    """The bandwidth rule of thumb of Newey and West (1994) for ``days`` observations."""
    return math.floor(4 * (days / 100) ** (2 / 9)) if days > 1 else 0


def long_run_variance(x: np.ndarray, lags: int | None = None) -> np.ndarray:
    """HAC (Newey-West, Bartlett kernel) variance of the series along the last axis:
    ``gamma_0 + 2 sum_k (1 - k / (L + 1)) gamma_k``; never negative (the Bartlett kernel
    keeps it so)."""
    days = x.shape[-1]
    lags = newey_west_lags(days) if lags is None else lags
    centred = x - x.mean(axis=-1, keepdims=True)
    total = (centred * centred).sum(axis=-1) / days
    for k in range(1, min(lags, days - 1) + 1):
        gamma = (centred[..., k:] * centred[..., :-k]).sum(axis=-1) / days
        total = total + 2 * (1 - k / (lags + 1)) * gamma
    return np.maximum(total, 0.0)


def mean_interval(x: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) of the daily series along the last axis: a t interval with the HAC
    standard error, since daily metrics are autocorrelated."""
    days = x.shape[-1]
    mean = x.mean(axis=-1)
    if days < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan
    half = stats.t.ppf(1 - level / 2, days - 1) * np.sqrt(long_run_variance(x) / days)
    return mean, mean - half, mean + half


def diebold_mariano(diff: np.ndarray, lags: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(statistic, two-sided p-value) of H0: E[diff] = 0 for the daily loss differential
    ``diff`` (last axis: days). A differential that is exactly zero every day (both sides
    predicted the same) has statistic 0 and p-value 1."""
    days = diff.shape[-1]
    variance = long_run_variance(diff, lags) / days
    mean = diff.mean(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = np.where(variance > 0, mean / np.sqrt(variance), 0.0)
    statistic = raw * math.sqrt((days - 1) / days)
    return statistic, 2 * stats.t.sf(np.abs(statistic), days - 1)


def stationary_counts(days: int, reps: int, rng: np.random.Generator) -> np.ndarray:
    """(reps, days) counts: how often each day appears in each stationary-bootstrap
    resample. Means of any series over the same resamples are then one matrix product."""
    block = math.ceil(days ** (1 / 3))
    index = np.empty((reps, days), dtype=np.int64)
    index[:, 0] = rng.integers(0, days, reps)
    restart = rng.random((reps, days)) < 1 / block
    fresh = rng.integers(0, days, (reps, days))
    for t in range(1, days):
        index[:, t] = np.where(restart[:, t], fresh[:, t], (index[:, t - 1] + 1) % days)
    counts = np.zeros((reps, days))
    np.add.at(counts, (np.arange(reps)[:, None], index), 1.0)
    return counts


def bootstrap_interval(
    x: np.ndarray, level: float, reps: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(low, high): the stationary bootstrap's percentile interval of the mean of ``x``
    along the last axis."""
    days = x.shape[-1]
    counts = stationary_counts(days, reps, np.random.default_rng(seed))
    means = x @ counts.T / days
    low, high = np.quantile(means, [level / 2, 1 - level / 2], axis=-1)
    return low, high


def days_needed(mean: float, variance: float, level: float) -> float:
    """Days for a two-sided test at ``level`` to reach power 0.8 if the daily mean
    differential is ``mean`` with long-run variance ``variance``; inf for no effect."""
    if mean == 0 or not math.isfinite(mean):
        return math.inf
    z = stats.norm.ppf(1 - level / 2) + stats.norm.ppf(POWER)
    return float(math.ceil(z * z * variance / (mean * mean)))


def rank_rows(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis, NaN kept as NaN (ties share a rank)."""
    return stats.rankdata(x, axis=-1, nan_policy="omit")


def row_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis over the positions where both are finite;
    NaN where fewer than three are or either side is constant."""
    both = np.isfinite(a) & np.isfinite(b)
    count = both.sum(axis=-1)
    a0, b0 = np.where(both, a, 0.0), np.where(both, b, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ma = a0.sum(axis=-1, keepdims=True) / count[..., None]
        mb = b0.sum(axis=-1, keepdims=True) / count[..., None]
        da, db = np.where(both, a0 - ma, 0.0), np.where(both, b0 - mb, 0.0)
        cov = (da * db).sum(axis=-1)
        corr = cov / np.sqrt((da * da).sum(axis=-1) * (db * db).sum(axis=-1))
    return np.where(count >= 3, corr, np.nan)
