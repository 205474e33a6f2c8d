"""The Dagster definitions: the daily job, the after-close schedule, the new-data sensor, and
the planner all three runners share.

``plan_run`` records an observation of the bar source, asks Dagster which assets are stale
or missing (its data-version staleness: a new code version, or an upstream whose data
version moved since the asset was made) and selects those and everything below them, in
one run. Nothing stale: nothing runs. The schedule and the sensor (under `dagster dev`) and
``runner.run_daily`` (`ray-app pipeline`, jobs/pipeline.py, the RayCronJob) all call it, so
each runner materialises the same assets for the same state.
"""

import datetime as dt
import urllib.error
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import dagster as dg
from dagster import ScheduleEvaluationContext, SensorEvaluationContext

# Dagster's own staleness resolver, the one its UI and `stale_assets_only` run requests use;
# it is not exported at the top level.
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import (
    DATA_VERSION_TAG,
    CachingStaleStatusResolver,
    StaleStatus,
)

from ray_app.core.settings import Settings
from ray_app.orchestration.assets import DEPLOYMENT, SOURCE, build_assets

JOB = "daily_pipeline"
SCHEDULE = "daily_after_close"
SENSOR = "new_raw_data"


@dataclass
class Plan:
    """The assets one run materialises, in order, and why each one is in it."""

    selected: list[dg.AssetKey] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    fresh: list[dg.AssetKey] = field(default_factory=list)
    held: list[dg.AssetKey] = field(default_factory=list)  # stale, but the caller held them
    versions: dict[str, str] = field(default_factory=dict)  # data versions of the fresh ones
    order: list[dg.AssetKey] = field(default_factory=list)  # every asset of the job, in order


def observe_source(settings: Settings, instance: dg.DagsterInstance) -> str:
    """Record the bar source's current data version (only when it moved); the version."""
    from ray_app.data.arrivals import source_state

    version = source_state(settings.ingest)
    event = instance.get_latest_data_version_record(SOURCE, is_source=True)
    previous = (event.event_log_entry.tags or {}).get(DATA_VERSION_TAG) if event else None
    if previous != version:
        observation = dg.AssetObservation(asset_key=SOURCE, tags={DATA_VERSION_TAG: version})
        instance.report_runless_asset_event(observation)
    return version


def _serving_answers(settings: Settings) -> bool:
    """Whether the Serve app answers its liveness probe (a cluster restart loses it while
    Dagster still holds the deployment as made)."""
    url = settings.pipeline.serve_url.rstrip("/") + "/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def plan_run(
    settings: Settings,
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    force: bool = False,
    hold: Collection[str] = (),
) -> Plan:
    """Observe the source, then select every stale or missing asset of the job and all
    assets below those (they will see a new upstream version), in topological order.

    An asset named in ``hold`` is not selected however stale it is, and does not pull in
    what is below it: a held ``model_release`` must not rerun ``drift`` on every later run
    while it stays stale (a replay's or a daily run's days without retraining)."""
    observe_source(settings, instance)
    graph = defs.resolve_asset_graph()
    keys = graph.materializable_asset_keys  # the job's selection: every asset but the source
    order = [k for k in graph.toposorted_asset_keys if k in keys]
    view = AssetGraphView(
        temporal_context=TemporalContext(
            effective_dt=dt.datetime.now(dt.timezone.utc), last_event_id=None
        ),
        instance=instance,
        asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(instance, graph, view)
    plan = Plan(order=order)
    for key in order:
        name = key.to_user_string()
        status = resolver.get_status(key)
        parents = graph.get(key).parent_keys  # a set: name the first in run order
        upstream = [p for p in plan.selected if p in parents]
        if force:
            plan.reasons[name] = "forced"
        elif status == StaleStatus.MISSING:
            plan.reasons[name] = "never materialised"
        elif status == StaleStatus.STALE:
            causes = resolver.get_stale_causes(key)
            plan.reasons[name] = "; ".join(dict.fromkeys(c.reason for c in causes))
        elif upstream:
            plan.reasons[name] = f"below {upstream[0].to_user_string()}"
        elif key == DEPLOYMENT and not _serving_answers(settings):
            plan.reasons[name] = f"nothing answers at {settings.pipeline.serve_url}"
        else:
            plan.fresh.append(key)
            plan.versions[name] = resolver.get_current_data_version(key).value
            continue
        (plan.held if name in hold else plan.selected).append(key)
    return plan


def market_closed(settings: Settings, day: dt.date) -> str | None:
    """Why no run belongs on ``day`` (a weekend or an exchange holiday), or None."""
    from ray_app.data.arrivals import is_session

    exchange = settings.ingest.exchange
    if is_session(day, exchange):
        return None
    return f"market closed: {day.isoformat()} is not an {exchange} session"


def build_definitions(settings: Settings) -> dg.Definitions:
    """Assets, checks, the daily job, its schedule and its sensor for ``settings``."""
    assets = build_assets(settings)
    job = dg.define_asset_job(
        JOB,
        selection=dg.AssetSelection.all(),
        executor_def=dg.in_process_executor,  # one process, one Ray connection, in order
        description="The daily pipeline; its runners select only the stale assets",
    )
    holder: dict[str, dg.Definitions] = {}

    def request(instance: dg.DagsterInstance, trigger: str) -> dg.RunRequest | dg.SkipReason:
        plan = plan_run(settings, holder["defs"], instance)
        if not plan.selected:
            return dg.SkipReason("every asset is up to date")
        return dg.RunRequest(asset_selection=plan.selected, tags={"ray_app/trigger": trigger})

    @dg.schedule(
        name=SCHEDULE,
        job=job,
        cron_schedule=settings.pipeline.schedule,
        execution_timezone=settings.pipeline.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every weekday after the close; exchange holidays are skipped",
    )
    def daily_after_close(
        context: ScheduleEvaluationContext,
    ) -> dg.RunRequest | dg.SkipReason:
        when = context.scheduled_execution_time or dt.datetime.now(dt.timezone.utc)
        day = when.astimezone(ZoneInfo(settings.pipeline.timezone)).date()
        closed = market_closed(settings, day)
        return dg.SkipReason(closed) if closed else request(context.instance, SCHEDULE)

    @dg.sensor(
        name=SENSOR,
        job=job,
        minimum_interval_seconds=settings.pipeline.sensor_interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="A run when the bar source offers new data (a new file, a new session)",
    )
    def new_raw_data(context: SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        from ray_app.data.arrivals import source_state

        version = source_state(settings.ingest)
        if version == context.cursor:
            return dg.SkipReason("no new raw data")
        answer = request(context.instance, SENSOR)
        context.update_cursor(version)
        return answer

    holder["defs"] = dg.Definitions(
        assets=assets, jobs=[job], schedules=[daily_after_close], sensors=[new_raw_data]
    )
    return holder["defs"]
