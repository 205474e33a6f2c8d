"""The quality gate: whether a challenger beats every baseline and the champion on the holdout,
with skill that is significant.

It lives with training because it scores models (the champion is re-scored on the
challenger's holdout rows, so its figures always carry today's metric names, whatever a
version registered earlier was tagged with); the registry only records its verdict
(``GateDecision``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ray_app.core.settings import GateSettings, Settings
from ray_app.core.storage import DataRoot
from ray_app.data.feature_store import read_feature_manifest
from ray_app.models.factors import FACTOR_NAMES
from ray_app.models.families import TrainedModel
from ray_app.registry.versions import GateDecision, champion_version, load_version
from ray_app.training.evaluate import model_predictions, score
from ray_app.training.train import TrainingData

GATE_LABELS = {"rank_ic": "rank IC", "sharpe": "Sharpe"}


def incomparable(
    root: DataRoot, version: int, champion: TrainedModel, data: TrainingData
) -> str | None:
    """Why ``champion`` cannot be scored on ``data``'s rows, or None: other feature columns,
    or another label (its predictions are on another scale than the errors are measured on;
    a champion whose feature set is no longer on disk is taken to share the label)."""
    if champion.columns != data.columns:
        return (
            f"champion v{version} was trained on other feature columns than feature set "
            f"{data.manifest.version} holds ({len(champion.columns)} vs {len(data.columns)}):"
            " it cannot be scored on these rows"
        )
    trained_on = read_feature_manifest(root, champion.feature_version)
    if trained_on is not None and trained_on.target != data.manifest.target:
        return (
            f"champion v{version} was trained on label {trained_on.target} and feature set "
            f"{data.manifest.version} holds {data.manifest.target}: its errors cannot be "
            "compared with the challenger's"
        )
    return None


def champion_holdout_metrics(
    settings: Settings, data: TrainingData
) -> tuple[dict[str, float | None] | None, str | None]:
    """The current champion's metrics on ``data``'s holdout rows, or None and the reason it
    cannot be compared (no holdout, no champion, different feature columns or label)."""
    holdout = data.split.holdout
    if holdout is None:
        return None, "no holdout to compare on (split.holdout_months is 0)"
    version = champion_version(settings)
    if version is None:
        return None, f"registered model {settings.mlflow.model_name!r} has no champion yet"
    champion = load_version(settings, version)
    reason = incomparable(DataRoot(settings.data_root), version, champion, data)
    if reason is not None:
        return None, reason
    return score(model_predictions(data, holdout.test_mask, champion), settings.evaluate), None


def _number(metrics: Mapping[str, float | None], key: str, nan_as_zero: bool) -> float:
    """A metric for the gate: an undefined rank IC, t or Sharpe (a flat predictor's) counts
    as 0, which is what a flat book earns; an undefined RMSE stays NaN and fails."""
    value = metrics.get(key)
    value = math.nan if value is None else float(value)
    return 0.0 if nan_as_zero and math.isnan(value) else value


Check = tuple[dict[str, Any], str | None]


def _entry(
    mine: float, theirs: float, margin: float, threshold: float, passed: bool
) -> dict[str, Any]:
    def finite(x: float) -> float | None:
        return None if math.isnan(x) else x

    return {
        "challenger": finite(mine),
        "other": finite(theirs),
        "margin": margin,
        "threshold": finite(threshold),
        "passed": passed,
    }


def _beats(
    challenger: Mapping[str, float | None],
    name: str,
    other: Mapping[str, float | None],
    key: str,
    margin: float,
) -> Check:
    """Higher is better (rank IC, Sharpe): the challenger must exceed the other's value +
    margin."""
    mine, theirs = _number(challenger, key, True), _number(other, key, True)
    passed = mine > theirs + margin
    reason = (
        f"{GATE_LABELS[key]} {mine:.4f} does not beat {name}'s {theirs:.4f} + margin "
        f"{margin:g} (needs > {theirs + margin:.4f})"
    )
    return _entry(mine, theirs, margin, theirs + margin, passed), None if passed else reason


def _no_worse(
    challenger: Mapping[str, float | None],
    name: str,
    other: Mapping[str, float | None],
    margin: float,
) -> Check:
    """Lower is better (RMSE): the challenger must be within other * (1 - margin)."""
    mine, theirs = _number(challenger, "rmse", False), _number(other, "rmse", False)
    threshold = theirs * (1 - margin)
    passed = mine <= threshold
    reason = (
        f"RMSE {mine:.6f} is not <= {name}'s {theirs:.6f} x (1 - margin {margin:g}) "
        f"= {threshold:.6f}"
    )
    return _entry(mine, theirs, margin, threshold, passed), None if passed else reason


def _significant(challenger: Mapping[str, float | None], minimum: float) -> Check:
    """The challenger's rank-IC t-statistic must reach ``minimum``: a mean rank IC that beats
    every baseline by luck, on too few or too scattered days, is not skill."""
    mine = _number(challenger, "rank_ic_t", True)
    passed = mine >= minimum
    reason = (
        f"rank-IC t-statistic {mine:.2f} is below the minimum t {minimum:g} "
        "(gate.min_rank_ic_t): the holdout cannot tell its rank IC from 0"
    )
    entry = {"challenger": mine, "threshold": minimum, "passed": passed}
    return entry, None if passed else reason


def quality_gate(
    challenger: Mapping[str, float | None],
    others: Mapping[str, Mapping[str, float | None]],
    gate: GateSettings,
) -> GateDecision:
    """Whether ``challenger``'s holdout rank IC is significant (t-statistic at least
    ``gate.min_rank_ic_t``) and it beats every one of ``others`` (baselines, the champion)
    by the configured margins: higher rank IC, higher Sharpe, RMSE no worse.

    All must hold against each: a model that ranks well but whose point forecasts are worse
    than predicting zero, or that wins on rank IC but loses money after costs, is not
    promoted. A factor (``models.factors``) only ranks, so against it the RMSE does not
    apply.
    """
    t_entry, t_reason = _significant(challenger, gate.min_rank_ic_t)
    decision = GateDecision(passed=True, significance={"rank_ic_t": t_entry})
    decision.reasons += [t_reason] if t_reason else []
    for name, other in others.items():
        checks = {
            "rank_ic": _beats(challenger, name, other, "rank_ic", gate.ic_margin),
            "sharpe": _beats(challenger, name, other, "sharpe", gate.sharpe_margin),
        }
        if name not in FACTOR_NAMES:
            checks["rmse"] = _no_worse(challenger, name, other, gate.rmse_margin)
        decision.comparisons[name] = {key: entry for key, (entry, _) in checks.items()}
        decision.reasons += [reason for _, reason in checks.values() if reason]
    decision.passed = not decision.reasons
    if decision.passed:
        decision.reasons = [
            f"rank-IC t {t_entry['challenger']:.2f} >= {gate.min_rank_ic_t:g}; beats "
            f"{', '.join(others) or 'nothing'} on rank IC and Sharpe, and every return "
            "forecast among them on RMSE"
        ]
    return decision
