"""A/B evidence: is a challenger better than the champion on realised returns, and how sure?

The label of a daily return prediction arrives one trading day later, so every prediction can
be scored exactly. Two comparisons are made:

- ``precomputed``: every variant's prediction for every ticker on each day it served, paired
  on the same ticker-days (the variants precompute them all; far more power than the split);
- ``served``: the ticker-days each variant actually answered (served or shadow), from the
  prediction log, paired where two variants answered the same ticker-day.

Per variant: daily directional accuracy, IC, rank IC and MAE, each a mean over days with a HAC
interval. Per challenger against the baseline variant: the Diebold-Mariano test of the daily
mean loss differential and a stationary-bootstrap interval of the daily rank-IC difference
(``stats``). The verdict is ``better`` when both favour the challenger at the level, ``worse``
when either goes against it, else ``not yet significant`` with the days still needed at the
effect observed.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from ray_app.monitoring import stats

BETTER, WORSE, PENDING = "better", "worse", "not yet significant"
MIN_DAYS = 3  # a t statistic with T - 1 degrees of freedom and a lag needs a few days
Loss = Literal["squared", "absolute"]
FRAME_COLUMNS = ["variant", "model_version", "ticker", "feature_date", "predicted_return"]


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class VariantLive:
    """One variant's live quality: daily metrics averaged over days, with intervals."""

    variant: str
    model_versions: list[str]
    days: int
    ticker_days: int
    directional_accuracy: Interval
    ic: Interval
    rank_ic: Interval
    mae: Interval


@dataclass(frozen=True)
class Comparison:
    """A challenger against the baseline on the ticker-days both predicted."""

    challenger: str
    baseline: str
    days: int
    ticker_days: int
    loss: str
    loss_diff: float  # mean daily loss of challenger minus baseline (negative: better)
    dm_statistic: float
    dm_p_value: float
    rank_ic_diff: Interval  # challenger minus baseline, stationary bootstrap
    verdict: str
    days_needed: float | None  # more days for a verdict at this effect; None: has one
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Evidence:
    """All variants and comparisons of one source over one period."""

    source: str
    start: dt.date | None
    end: dt.date | None
    level: float
    loss: str
    variants: list[VariantLive]
    comparisons: list[Comparison]


@dataclass(frozen=True)
class Panel:
    """Predictions and outcomes as (day, ticker) arrays, NaN where absent."""

    days: list[dt.date]
    tickers: list[str]
    realised: np.ndarray
    preds: dict[str, np.ndarray]
    versions: dict[str, list[str]]


def build_panel(predictions: pd.DataFrame, realised: pd.DataFrame) -> Panel:
    """``predictions`` (``FRAME_COLUMNS``; repeated ticker-days are averaged) against
    ``realised`` (ticker, feature_date, realised_return): only days with outcomes count."""
    known = realised.dropna(subset=["realised_return"])
    days = sorted(set(predictions["feature_date"]) & set(known["feature_date"]))
    tickers = sorted(set(predictions["ticker"]))
    grid = pd.MultiIndex.from_product([days, tickers], names=["feature_date", "ticker"])

    def square(frame: pd.DataFrame, column: str) -> np.ndarray:
        series = frame.groupby(["feature_date", "ticker"])[column].mean().reindex(grid)
        return series.to_numpy(dtype=float).reshape(len(days), len(tickers))

    preds, versions = {}, {}
    for variant, rows in predictions.groupby("variant", sort=True):
        preds[str(variant)] = square(rows, "predicted_return")
        versions[str(variant)] = sorted(set(rows["model_version"].astype(str)), key=_version_key)
    return Panel(days, tickers, square(known, "realised_return"), preds, versions)


def _version_key(version: str) -> tuple[bool, int, str]:
    """Numbers in numeric order (v9 before v10), anything else after them."""
    return (not version.isdigit(), int(version) if version.isdigit() else 0, version)


def daily_metrics(pred: np.ndarray, realised: np.ndarray) -> dict[str, np.ndarray]:
    """Per day (leading axes kept, tickers reduced): directional accuracy, IC, rank IC and
    MAE over the tickers where both are finite."""
    both = np.isfinite(pred) & np.isfinite(realised)
    p, r = np.where(both, pred, np.nan), np.where(both, realised, np.nan)
    with np.errstate(invalid="ignore"):
        hit = np.where(both, (np.sign(p) == np.sign(r)).astype(float), np.nan)
        return {
            "directional_accuracy": np.nanmean(hit, axis=-1),
            "ic": stats.row_correlation(p, r),
            "rank_ic": stats.row_correlation(stats.rank_rows(p), stats.rank_rows(r)),
            "mae": np.nanmean(np.abs(p - r), axis=-1),
        }


def _interval(series: np.ndarray, level: float) -> Interval:
    kept = series[np.isfinite(series)]
    if kept.size == 0:
        return Interval(math.nan, math.nan, math.nan)
    mean, low, high = stats.mean_interval(kept, level)
    return Interval(float(mean), float(low), float(high))


def variant_live(panel: Panel, variant: str, level: float) -> VariantLive:
    pred = panel.preds[variant]
    both = np.isfinite(pred) & np.isfinite(panel.realised)
    daily = daily_metrics(pred, panel.realised)
    return VariantLive(
        variant=variant,
        model_versions=panel.versions[variant],
        days=int(both.any(axis=1).sum()),
        ticker_days=int(both.sum()),
        **{name: _interval(series, level) for name, series in daily.items()},
    )


def paired_series(
    challenger: np.ndarray, baseline: np.ndarray, realised: np.ndarray, loss: Loss
) -> tuple[np.ndarray, np.ndarray]:
    """Daily (loss differential, rank-IC difference), challenger minus baseline, on the
    ticker-days where both predicted and the outcome is known (leading axes kept)."""
    both = np.isfinite(challenger) & np.isfinite(baseline) & np.isfinite(realised)
    c = np.where(both, challenger, np.nan)
    b = np.where(both, baseline, np.nan)
    r = np.where(both, realised, np.nan)
    error = np.square if loss == "squared" else np.abs
    with np.errstate(invalid="ignore"):
        loss_diff = np.nanmean(error(c - r) - error(b - r), axis=-1)
    rank_r = stats.rank_rows(r)
    ic_diff = stats.row_correlation(stats.rank_rows(c), rank_r) - stats.row_correlation(
        stats.rank_rows(b), rank_r
    )
    return loss_diff, ic_diff


@dataclass(frozen=True)
class Tests:
    """The two tests' figures for one or many (leading axes) daily series."""

    loss_diff: np.ndarray
    dm_statistic: np.ndarray
    dm_p_value: np.ndarray
    ic_diff: np.ndarray
    ic_low: np.ndarray
    ic_high: np.ndarray

    @property
    def loss_favours(self) -> np.ndarray:
        return self.loss_diff < 0

    def significant(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """(loss test significant, rank-IC interval excludes zero)."""
        return self.dm_p_value < level, (self.ic_low > 0) | (self.ic_high < 0)


def run_tests(
    loss_diff: np.ndarray, ic_diff: np.ndarray, level: float, reps: int, seed: int
) -> Tests:
    """Diebold-Mariano on ``loss_diff`` and the bootstrap interval of ``ic_diff`` (both with
    days on the last axis, no NaN)."""
    statistic, p_value = stats.diebold_mariano(loss_diff)
    low, high = stats.bootstrap_interval(ic_diff, level, reps, seed)
    return Tests(loss_diff.mean(-1), statistic, p_value, ic_diff.mean(-1), low, high)


def compare(
    panel: Panel,
    challenger: str,
    baseline: str,
    *,
    level: float,
    loss: Loss,
    reps: int = 2000,
    seed: int = 0,
) -> Comparison:
    """The verdict on ``challenger`` against ``baseline`` (see the module docstring)."""
    c, b = panel.preds[challenger], panel.preds[baseline]
    loss_diff, ic_diff = paired_series(c, b, panel.realised, loss)
    keep = np.isfinite(loss_diff) & np.isfinite(ic_diff)
    paired = np.isfinite(c) & np.isfinite(b) & np.isfinite(panel.realised)
    days, ticker_days = int(keep.sum()), int(paired[keep].sum())
    base = {"challenger": challenger, "baseline": baseline, "loss": loss}
    if days < MIN_DAYS:
        nan = math.nan
        return Comparison(
            **base,
            days=days,
            ticker_days=ticker_days,
            loss_diff=nan,
            dm_statistic=nan,
            dm_p_value=nan,
            rank_ic_diff=Interval(nan, nan, nan),
            verdict=PENDING,
            days_needed=float(MIN_DAYS - days),  # at least: the effect is not known yet
            reasons=[f"{days} paired day(s) with outcomes; the tests need {MIN_DAYS}"],
        )
    d, g = loss_diff[keep], ic_diff[keep]
    tests = run_tests(d, g, level, reps, seed)
    verdict, reasons = _verdict(tests, level)
    needed = None
    if verdict == PENDING:
        needed = max(
            stats.days_needed(float(d.mean()), float(stats.long_run_variance(d)), level),
            stats.days_needed(float(g.mean()), float(stats.long_run_variance(g)), level),
        )
        needed = max(needed - days, 1.0)
    return Comparison(
        **base,
        days=days,
        ticker_days=ticker_days,
        loss_diff=float(tests.loss_diff),
        dm_statistic=float(tests.dm_statistic),
        dm_p_value=float(tests.dm_p_value),
        rank_ic_diff=Interval(float(tests.ic_diff), float(tests.ic_low), float(tests.ic_high)),
        verdict=verdict,
        days_needed=needed,
        reasons=reasons,
    )


def _verdict(tests: Tests, level: float) -> tuple[str, list[str]]:
    """``better`` when the loss test and the rank-IC interval both favour the challenger,
    ``worse`` when either is significant against it, else not yet significant."""
    loss_sig, ic_sig = (bool(x) for x in tests.significant(level))
    loss_for = loss_sig and bool(tests.loss_favours)
    ic_for = ic_sig and float(tests.ic_low) > 0
    reasons = []
    if loss_sig:
        side = "lower" if loss_for else "higher"
        reasons.append(f"loss {side} (Diebold-Mariano p={float(tests.dm_p_value):.3g})")
    if ic_sig:
        side = "higher" if ic_for else "lower"
        reasons.append(
            f"rank IC {side} (interval [{float(tests.ic_low):+.4f}, {float(tests.ic_high):+.4f}])"
        )
    if (loss_sig and not loss_for) or (ic_sig and not ic_for):
        return WORSE, reasons
    if loss_for and ic_for:
        return BETTER, reasons
    return PENDING, reasons or [f"neither test is significant at {level}"]


def evidence(
    panel: Panel,
    source: str,
    baseline: str,
    *,
    level: float,
    loss: Loss,
    reps: int = 2000,
    seed: int = 0,
) -> Evidence:
    """Every variant's live metrics, and every other variant against ``baseline``."""
    variants = [variant_live(panel, v, level) for v in sorted(panel.preds)]
    others = [v for v in sorted(panel.preds) if v != baseline] if baseline in panel.preds else []
    comparisons = [
        compare(panel, v, baseline, level=level, loss=loss, reps=reps, seed=seed) for v in others
    ]
    start = panel.days[0] if panel.days else None
    end = panel.days[-1] if panel.days else None
    return Evidence(source, start, end, level, loss, variants, comparisons)
