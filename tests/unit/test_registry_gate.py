"""The quality gate: a challenger's rank IC must be significant, and it must beat every
baseline and the champion on rank IC, Sharpe and RMSE (factors, which only rank: rank IC and
Sharpe), by the configured margins, with undefined values counting as zero."""

from __future__ import annotations

import json
import math

import pytest

from ray_app.core.settings import GateSettings
from ray_app.models.factors import FACTOR_NAMES
from ray_app.registry.versions import holdout_metrics, metric_tags
from ray_app.training.evaluate import BASELINES
from ray_app.training.gate import quality_gate

ZERO = {"rank_ic": None, "rank_ic_t": None, "sharpe": math.nan, "rmse": 0.020}
RIDGE = {"rank_ic": 0.010, "rank_ic_t": 0.8, "sharpe": 0.40, "rmse": 0.0199}
PERSISTENCE = {"rank_ic": -0.005, "rank_ic_t": -0.4, "sharpe": -0.20, "rmse": 0.028}
REVERSAL = {"rank_ic": 0.020, "rank_ic_t": 1.5, "sharpe": 0.90, "rmse": None}  # ranks only
GOOD = {"rank_ic": 0.030, "rank_ic_t": 2.4, "sharpe": 1.10, "rmse": 0.0195}


def baselines() -> dict[str, dict[str, float | None]]:
    return {"zero": ZERO, "persistence": PERSISTENCE, "ridge": RIDGE, "reversal_1d": REVERSAL}


def test_a_challenger_that_beats_everyone_passes() -> None:
    decision = quality_gate(GOOD, {**baselines(), "champion": RIDGE}, GateSettings())
    assert decision.passed, decision.reasons
    assert set(decision.comparisons) == {"zero", "persistence", "ridge", "reversal_1d", "champion"}
    assert all(c["passed"] for by in decision.comparisons.values() for c in by.values())
    assert decision.significance["rank_ic_t"] == {
        "challenger": 2.4,
        "threshold": 2.0,
        "passed": True,
    }
    json.dumps(decision.comparisons, allow_nan=False)  # recordable as it is
    json.dumps(decision.significance, allow_nan=False)


def test_the_gate_knows_every_factor_baseline() -> None:
    """Evaluation's baselines include the factors, which the gate compares on ranking only."""
    assert set(FACTOR_NAMES) == {"reversal_1d", "reversal_5d", "momentum_21d"}
    assert set(FACTOR_NAMES) < set(BASELINES)
    others = {name: REVERSAL for name in FACTOR_NAMES}
    decision = quality_gate(GOOD, others, GateSettings())
    assert decision.passed
    assert all(set(checks) == {"rank_ic", "sharpe"} for checks in decision.comparisons.values())


def test_losing_to_a_factor_fails_naming_it() -> None:
    """A model that cannot beat a one-line factor is not worth serving."""
    challenger = {**GOOD, "sharpe": 0.85}  # beats ridge (0.40), not the reversal (0.90)
    decision = quality_gate(challenger, baselines(), GateSettings())
    assert not decision.passed
    assert decision.reasons == [
        "Sharpe 0.8500 does not beat reversal_1d's 0.9000 + margin 0 (needs > 0.9000)"
    ]


def test_enough_rank_ic_with_too_low_a_t_is_refused_naming_t() -> None:
    """Beating every baseline on rank IC is not enough when the holdout cannot tell that
    rank IC from 0."""
    lucky = {**GOOD, "rank_ic_t": 1.7}
    decision = quality_gate(lucky, baselines(), GateSettings(min_rank_ic_t=2.0))
    assert not decision.passed
    assert all(c["passed"] for by in decision.comparisons.values() for c in by.values())
    assert len(decision.reasons) == 1
    assert "t-statistic 1.70" in decision.reasons[0] and "minimum t 2" in decision.reasons[0]
    assert decision.significance["rank_ic_t"]["passed"] is False
    assert quality_gate(lucky, baselines(), GateSettings(min_rank_ic_t=1.5)).passed


def test_an_undefined_t_is_not_significant() -> None:
    decision = quality_gate({**GOOD, "rank_ic_t": None}, baselines(), GateSettings())
    assert not decision.passed and "t-statistic 0.00" in decision.reasons[0]


def test_losing_to_one_baseline_on_rank_ic_fails_naming_it() -> None:
    challenger = {**GOOD, "rank_ic": 0.008}
    decision = quality_gate(challenger, {"zero": ZERO, "ridge": RIDGE}, GateSettings())
    assert not decision.passed
    assert len(decision.reasons) == 1
    reason = decision.reasons[0]
    assert "rank IC" in reason and "ridge" in reason and "0.0080" in reason and "0.0100" in reason
    assert not decision.comparisons["ridge"]["rank_ic"]["passed"]
    assert decision.comparisons["zero"]["rank_ic"]["passed"]


def test_undefined_rank_ic_and_sharpe_count_as_zero() -> None:
    flat = {"rank_ic": None, "rank_ic_t": None, "sharpe": math.nan, "rmse": 0.019}
    no_minimum = GateSettings(min_rank_ic_t=0)
    decision = quality_gate(flat, {"zero": ZERO}, no_minimum)
    assert not decision.passed  # 0 does not beat 0
    checks = decision.comparisons["zero"]
    assert checks["rank_ic"]["challenger"] == 0.0 and checks["rank_ic"]["other"] == 0.0
    assert checks["sharpe"]["other"] == 0.0 and checks["rmse"]["passed"]
    slightly_positive = {"rank_ic": 0.001, "rank_ic_t": 0.1, "sharpe": 0.01, "rmse": 0.019}
    assert quality_gate(slightly_positive, {"zero": ZERO}, no_minimum).passed


def test_an_undefined_rmse_fails() -> None:
    decision = quality_gate({**GOOD, "rmse": None}, {"zero": ZERO}, GateSettings())
    assert not decision.passed
    assert decision.comparisons["zero"]["rmse"]["challenger"] is None
    assert any(r.startswith("RMSE") for r in decision.reasons)


@pytest.mark.parametrize(
    ("gate", "failing"),
    [
        (GateSettings(ic_margin=0.025), "rank IC"),  # 0.030 vs 0.010 + 0.025
        (GateSettings(sharpe_margin=0.8), "Sharpe"),  # 1.10 vs 0.40 + 0.8
        (GateSettings(rmse_margin=0.05), "RMSE"),  # 0.0195 vs 0.0199 * 0.95
    ],
)
def test_margins_are_applied(gate: GateSettings, failing: str) -> None:
    assert quality_gate(GOOD, {"ridge": RIDGE}, GateSettings()).passed
    decision = quality_gate(GOOD, {"ridge": RIDGE}, gate)
    assert not decision.passed
    assert len(decision.reasons) == 1 and decision.reasons[0].startswith(failing)
    assert "margin" in decision.reasons[0] and "ridge" in decision.reasons[0]


def test_every_failed_check_gets_its_own_reason() -> None:
    bad = {"rank_ic": -0.02, "rank_ic_t": -1.0, "sharpe": -1.0, "rmse": 0.03}
    decision = quality_gate(bad, baselines(), GateSettings())
    # not significant; worse than each of the three return forecasts on each of the three
    # metrics, and than the factor on its two
    assert len(decision.reasons) == 1 + 3 * 3 + 2


def test_metric_tags_skip_undefined_metrics() -> None:
    tags = metric_tags({"rank_ic": 0.0123456789, "sharpe": None, "rmse": math.inf})
    assert tags == {"holdout.rank_ic": "0.0123457"}


def test_a_version_tagged_before_the_rename_reads_with_todays_names() -> None:
    old = {"holdout.ic_mean": "0.012", "holdout.ic_t_stat": "2.5", "holdout.sharpe": "0.9"}
    assert holdout_metrics({**old, "data_version": "abc"}) == {
        "rank_ic": 0.012,
        "rank_ic_t": 2.5,
        "sharpe": 0.9,
    }
    assert holdout_metrics(metric_tags({"rank_ic": 0.02})) == {"rank_ic": 0.02}
