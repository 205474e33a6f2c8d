"""The A/B statistics on synthetic predictions: a known effect is found, no effect is found at
about the test's level, and the figures match their formulas. Seeds run as one array."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from ray_app.monitoring import ab, stats

LEVEL = 0.05
SEEDS = 200


def synthetic(
    seeds: int, days: int, tickers: int, challenger_noise: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(champion, challenger, realised), each (seeds, days, tickers).

    Returns are a predictable part, a market move shared by the day's tickers and noise,
    with a volatility that clusters over days (so the daily series are autocorrelated in
    scale, as real ones are). The champion sees the predictable part through noise of scale
    1; the challenger through ``challenger_noise`` (1: no effect; below 1: better).
    """
    rng = np.random.default_rng(seed)
    shape = (seeds, days, tickers)
    log_vol = np.zeros((seeds, days, 1))
    for t in range(1, days):
        log_vol[:, t] = 0.9 * log_vol[:, t - 1] + 0.3 * rng.normal(size=(seeds, 1))
    scale = 0.01 * np.exp(log_vol)
    signal = rng.normal(size=shape)
    realised = scale * (signal + 0.5 * rng.normal(size=(seeds, days, 1)) + rng.normal(size=shape))
    champion = scale * 0.5 * (signal + rng.normal(size=shape))
    challenger = scale * 0.5 * (signal + challenger_noise * rng.normal(size=shape))
    return champion, challenger, realised


def run(champion: np.ndarray, challenger: np.ndarray, realised: np.ndarray) -> ab.Tests:
    loss_diff, ic_diff = ab.paired_series(challenger, champion, realised, "squared")
    return ab.run_tests(loss_diff, ic_diff, LEVEL, reps=1000, seed=1)


def test_no_effect_is_found_at_about_the_level() -> None:
    """Exchangeable champion and challenger: each test rejects in about 5% of 200 seeds
    (binomial sd 1.5%), and a ``better`` verdict (both tests) is rarer still."""
    tests = run(*synthetic(SEEDS, 120, 30, challenger_noise=1.0))
    loss_sig, ic_sig = tests.significant(LEVEL)
    assert 0.015 <= loss_sig.mean() <= 0.09
    assert 0.015 <= ic_sig.mean() <= 0.10
    better = loss_sig & tests.loss_favours & (tests.ic_low > 0)
    assert better.mean() <= LEVEL


def test_a_known_effect_is_found() -> None:
    """A challenger with half the champion's noise is called better in nearly every seed,
    and never worse."""
    tests = run(*synthetic(SEEDS, 120, 30, challenger_noise=0.4))
    loss_sig, ic_sig = tests.significant(LEVEL)
    better = loss_sig & tests.loss_favours & ic_sig & (tests.ic_low > 0)
    assert better.mean() >= 0.95
    against = (loss_sig & ~tests.loss_favours) | (tests.ic_high < 0)
    assert not against.any()


def test_days_needed_gives_about_the_power_it_promises() -> None:
    """At a small effect, the days the verdict asks for (the larger of the two tests', from
    the effect and variance of a long sample) give a ``better`` verdict in about 80% of
    seeds (a little more: the loss test alone has 80%) when that many days are run."""
    champion, challenger, realised = synthetic(1, 3000, 30, challenger_noise=0.7, seed=8)
    d, g = ab.paired_series(challenger, champion, realised, "squared")
    needed = max(
        stats.days_needed(d.mean(), float(stats.long_run_variance(d[0])), LEVEL),
        stats.days_needed(g.mean(), float(stats.long_run_variance(g[0])), LEVEL),
    )
    assert 30 < needed < 600
    tests = run(*synthetic(SEEDS, int(needed), 30, challenger_noise=0.7, seed=9))
    loss_sig, ic_sig = tests.significant(LEVEL)
    better = loss_sig & tests.loss_favours & ic_sig & (tests.ic_low > 0)
    assert 0.7 <= better.mean() < 0.99  # about the power asked for, not far beyond it


def test_long_run_variance_matches_the_newey_west_formula() -> None:
    """[1, -1, 1, -1] with one lag: gamma0 = 1, gamma1 = -3/4, weight 1/2: 1 - 3/4."""
    x = np.array([1.0, -1.0, 1.0, -1.0])
    assert stats.long_run_variance(x, lags=1) == pytest.approx(0.25)
    assert stats.long_run_variance(x, lags=0) == pytest.approx(1.0)
    assert stats.newey_west_lags(100) == 4
    assert stats.newey_west_lags(250) == 4
    assert stats.newey_west_lags(1000) == 6


def test_identical_predictions_are_never_significant() -> None:
    champion, _, realised = synthetic(1, 30, 10, 1.0)
    tests = run(champion, champion.copy(), realised)
    assert tests.dm_statistic[0] == 0 and tests.dm_p_value[0] == 1
    assert tests.ic_low[0] == tests.ic_high[0] == 0


def frame(days: int, tickers: int, noise: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One seed as the prediction log and the outcomes present it."""
    champion, challenger, realised = synthetic(1, days, tickers, noise, seed=3)
    dates = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(days)]
    names = [f"T{i:02d}" for i in range(tickers)]
    index = pd.MultiIndex.from_product([dates, names], names=["feature_date", "ticker"])
    rows = []
    for variant, version, preds in (("champion", "3", champion), ("challenger", "4", challenger)):
        part = index.to_frame(index=False)
        part["variant"], part["model_version"] = variant, version
        part["predicted_return"] = preds[0].ravel()
        rows.append(part)
    outcomes = index.to_frame(index=False)
    outcomes["realised_return"] = realised[0].ravel()
    return pd.concat(rows, ignore_index=True), outcomes


def test_evidence_from_frames_calls_a_better_challenger_better() -> None:
    predictions, outcomes = frame(60, 30, noise=0.4)
    outcomes.loc[outcomes["feature_date"] == outcomes["feature_date"].max(), "realised_return"] = (
        np.nan
    )  # the newest day is pending: left out, never scored as zero
    panel = ab.build_panel(predictions, outcomes)
    assert len(panel.days) == 59
    result = ab.evidence(panel, "precomputed", "champion", level=LEVEL, loss="squared")
    (comparison,) = result.comparisons
    assert comparison.verdict == ab.BETTER, comparison.reasons
    assert comparison.days == 59 and comparison.ticker_days == 59 * 30
    assert comparison.days_needed is None
    live = {v.variant: v for v in result.variants}
    assert live["challenger"].rank_ic.estimate > live["champion"].rank_ic.estimate
    assert live["challenger"].model_versions == ["4"]
    ci = live["champion"].rank_ic
    assert ci.low < ci.estimate < ci.high


def test_evidence_with_no_effect_says_how_many_days_it_needs() -> None:
    predictions, outcomes = frame(30, 30, noise=0.97)
    panel = ab.build_panel(predictions, outcomes)
    (comparison,) = ab.evidence(
        panel, "served", "champion", level=LEVEL, loss="absolute"
    ).comparisons
    assert comparison.verdict == ab.PENDING
    assert comparison.days_needed is not None and comparison.days_needed >= 1


def test_too_few_days_is_pending_with_a_reason() -> None:
    predictions, outcomes = frame(2, 10, noise=0.5)
    panel = ab.build_panel(predictions, outcomes)
    (comparison,) = ab.evidence(
        panel, "served", "champion", level=LEVEL, loss="squared"
    ).comparisons
    assert comparison.verdict == ab.PENDING
    assert "need 3" in comparison.reasons[0]
    assert comparison.days_needed == 1  # at least one more day before any test
