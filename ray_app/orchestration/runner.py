"""One daily run in this process: `ray-app pipeline`, jobs/pipeline.py (`make run`) and the
RayCronJob on a cluster.

The run plans with the same function as the schedule and the sensor of `dagster dev`
(``definitions.plan_run``), executes the Dagster job in-process on the selected assets
against the persistent instance, and reports each asset: materialised (its data version and
summary), up to date, failed, or not run because an asset above it failed. Every Ray call
inside goes to the cluster the process is connected to.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.pipeline_runs import record_run
from ray_app.orchestration.assets import SUMMARY
from ray_app.orchestration.definitions import JOB, build_definitions, plan_run
from ray_app.orchestration.instance import open_instance

LOCK = "pipeline"
MATERIALIZED, UP_TO_DATE, FAILED, NOT_RUN = "materialized", "up to date", "failed", "not run"
HELD = "held back"  # stale, but the caller held it back (a replay's day without retraining)
# The run's own console logger stays quiet: the outcome table says what happened.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass
class AssetOutcome:
    name: str
    status: str
    seconds: float = 0.0
    version: str = ""
    detail: str = ""
    reason: str = ""  # why the planner selected it


@dataclass
class CheckOutcome:
    asset: str
    name: str
    passed: bool
    severity: str


@dataclass
class DailyRun:
    """What one run did: each asset in order, each asset check, and the Dagster run id."""

    assets: list[AssetOutcome] = field(default_factory=list)
    checks: list[CheckOutcome] = field(default_factory=list)
    run_id: str | None = None

    @property
    def failed(self) -> bool:
        errors = any(c.severity == "ERROR" and not c.passed for c in self.checks)
        return errors or any(a.status in (FAILED, NOT_RUN) for a in self.assets)

    def materialized(self) -> list[str]:
        return [a.name for a in self.assets if a.status == MATERIALIZED]


def today(settings: Settings) -> dt.date:
    return dt.datetime.now(ZoneInfo(settings.pipeline.timezone)).date()


def run_daily(
    settings: Settings,
    *,
    force: bool = False,
    on_wait: Callable[[str], None] | None = None,
    hold: Collection[str] = (),
) -> DailyRun:
    """Plan and run the stale assets (every asset with ``force``), except those named in
    ``hold``, which are reported as held back (their last materialisation stays current).

    One run at a time per data root: the run holds the root's pipeline lock from planning to
    its last event. A second run calls ``on_wait`` with the holder, waits up to
    ``pipeline.lock_timeout_s``, then fails naming the root and the holder. Every run's end
    is recorded (``ray_app.data.pipeline_runs``): the prediction API exports it for the
    failed- and missing-run alerts.
    """
    root = DataRoot(settings.data_root)
    with root.lock(LOCK, settings.pipeline.lock_timeout_s, on_wait):
        try:
            run = _run(settings, force, hold)
        except Exception:
            record_run(root, ok=False, failed_step="plan")
            raise
        failed = next((a.name for a in run.assets if a.status in (FAILED, NOT_RUN)), None)
        record_run(root, ok=not run.failed, failed_step=failed)
        return run


def _run(settings: Settings, force: bool, hold: Collection[str]) -> DailyRun:
    """Plan against the persistent instance and execute the selected assets."""
    with open_instance(settings) as instance:
        defs = build_definitions(settings)
        plan = plan_run(settings, defs, instance, force, hold)
        fresh = [
            AssetOutcome(name, UP_TO_DATE, version=plan.versions[name])
            for name in (k.to_user_string() for k in plan.fresh)
        ]
        fresh += [AssetOutcome(k.to_user_string(), HELD) for k in plan.held]
        if not plan.selected:
            return DailyRun(assets=fresh)
        result = defs.resolve_job_def(JOB).execute_in_process(
            instance=instance,
            asset_selection=plan.selected,
            raise_on_error=False,
            run_config=QUIET,
            tags={"ray_app/trigger": "ray-app pipeline"},
        )
        ran = _outcomes(instance, result.run_id, [k.to_user_string() for k in plan.selected])
        for outcome in ran:
            outcome.reason = plan.reasons[outcome.name]
        checks = [
            CheckOutcome(e.asset_key.to_user_string(), e.check_name, e.passed, e.severity.value)
            for e in result.get_asset_check_evaluations()
        ]
        order = {k.to_user_string(): i for i, k in enumerate(plan.order)}
        assets = sorted(ran + fresh, key=lambda a: order[a.name])
        return DailyRun(assets=assets, checks=checks, run_id=result.run_id)


def _outcomes(instance: Any, run_id: str, selected: list[str]) -> list[AssetOutcome]:
    """Each selected asset's outcome, from the run's event log (timestamps give seconds)."""
    started: dict[str, float] = {}
    outcomes = {name: AssetOutcome(name, NOT_RUN) for name in selected}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key not in outcomes:
            continue
        outcome = outcomes[event.step_key]
        if event.event_type_value == "STEP_START":
            started[event.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            outcome.seconds = entry.timestamp - started.get(event.step_key, entry.timestamp)
        if event.event_type_value == "STEP_FAILURE":
            error = event.step_failure_data.error
            outcome.status, outcome.detail = FAILED, _reason(error)
        elif event.event_type_value == "ASSET_MATERIALIZATION":
            materialization = event.step_materialization_data.materialization
            metadata = materialization.metadata
            outcome.status = MATERIALIZED
            outcome.version = materialization.tags.get("dagster/data_version", "")
            outcome.detail = str(metadata[SUMMARY].value) if SUMMARY in metadata else ""
    return list(outcomes.values())


def _reason(error: Any) -> str:
    """The asset body's own exception ("Class: message"), out of Dagster's wrapper."""
    while error.cause is not None and error.cls_name == "DagsterExecutionStepExecutionError":
        error = error.cause
    lines = error.message.strip().splitlines()
    return lines[0] if lines else error.cls_name
