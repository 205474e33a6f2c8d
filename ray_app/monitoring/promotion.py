"""Promotion on live evidence (opt-in: ``monitoring.auto_promote``).

The challenger version (the registry's ``challenger`` alias) becomes the champion when, on
the days it served, its precomputed predictions beat the champion variant's on the same
ticker-days at ``monitoring.significance``: the Diebold-Mariano test of the loss and the
bootstrap interval of the rank-IC difference both in its favour, neither against it. Only the
days that version served count: a version retrained today inherits no evidence from its
predecessors. The promotion goes through the registry's ``promote``, so the audit trail
records it with the figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.monitoring import ab, sources
from ray_app.monitoring.outcomes import realised_returns

ACTOR = "live-evidence"
CANDIDATE = "candidate"


@dataclass(frozen=True)
class LiveDecision:
    challenger: int | None
    champion: int | None
    comparison: ab.Comparison | None
    promoted: bool

    @property
    def detail(self) -> str:
        if self.comparison is None:
            return (
                f"no evidence to weigh (challenger v{self.challenger}, champion v{self.champion})"
            )
        c = self.comparison
        verdict = "promoted to champion" if self.promoted else "kept the champion"
        return (
            f"v{self.challenger} against v{self.champion}: {c.verdict} over {c.days} day(s), "
            f"{c.ticker_days} ticker-days; {verdict}"
        )


def candidate_log(log: pd.DataFrame, version: int, baseline: str) -> pd.DataFrame:
    """The rows of the days ``version`` answered in a variant other than ``baseline``: its
    own (as ``CANDIDATE``) and the baseline variant's."""
    is_version = (log["model_version"].astype(str) == str(version)) & (log["variant"] != baseline)
    days = set(log.loc[is_version, "feature_date"])
    kept = log[log["feature_date"].isin(days) & (is_version | (log["variant"] == baseline))]
    return kept.assign(variant=kept["variant"].where(kept["variant"] == baseline, CANDIDATE))


def weigh(
    settings: Settings, challenger: int, log: pd.DataFrame, realised: pd.DataFrame
) -> ab.Comparison | None:
    """The paired comparison of ``challenger``'s precomputed predictions with the baseline
    variant's on the days it served; None without rows of both."""
    cfg = settings.monitoring
    rows = candidate_log(log, challenger, cfg.baseline_variant)
    if rows.empty or rows["variant"].nunique() < 2:
        return None
    predictions = sources.precomputed_predictions(settings, rows)
    panel = ab.build_panel(predictions, realised)
    if {CANDIDATE, cfg.baseline_variant} - set(panel.preds):
        return None
    return ab.compare(
        panel,
        CANDIDATE,
        cfg.baseline_variant,
        level=cfg.significance,
        loss=cfg.loss,
        reps=cfg.bootstrap_reps,
    )


def promote_on_evidence(settings: Settings) -> LiveDecision:
    """Weigh the challenger alias's version and promote it when it is ``better``."""
    from ray_app.registry.versions import champion_version, promote, resolve_version

    challenger = resolve_version(settings, "challenger")
    champion = champion_version(settings)
    if champion is None or challenger == champion:
        return LiveDecision(challenger, champion, None, False)
    log = sources.read_log(DataRoot(settings.data_root), None, None)
    comparison = weigh(settings, challenger, log, realised_returns(settings))
    if comparison is None or comparison.verdict != ab.BETTER:
        return LiveDecision(challenger, champion, comparison, False)
    level = settings.monitoring.significance
    reason = (
        f"live evidence against v{champion} ({comparison.loss} loss, level {level}): "
        + "; ".join(comparison.reasons)
    )
    promote(settings, challenger, ACTOR, reason, audit_figures(comparison, level))
    return LiveDecision(challenger, champion, comparison, True)


def audit_figures(comparison: ab.Comparison, level: float) -> dict[str, float | None]:
    """What the audit trail records with a promotion on live evidence."""
    return {
        "days": comparison.days,
        "ticker_days": comparison.ticker_days,
        "significance": level,
        "loss_diff": comparison.loss_diff,
        "dm_statistic": comparison.dm_statistic,
        "dm_p_value": comparison.dm_p_value,
        "rank_ic_diff": comparison.rank_ic_diff.estimate,
        "rank_ic_diff_low": comparison.rank_ic_diff.low,
        "rank_ic_diff_high": comparison.rank_ic_diff.high,
    }
