"""The daily pipeline as one Ray job: ingest, features, search, release, (opt-in) promote on
live evidence, deploy, smoke test, and the monitor that scores yesterday's served predictions
against today's bars.

Every step records a fingerprint of its inputs (data, feature and code versions, the
configuration it depends on) under the data root; a step whose fingerprint is unchanged
since its last success is skipped, so running the pipeline twice does the work once.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray_app.core.errors import RayAppError
from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.pipeline_runs import record_run
from ray_app.registry.tracking import code_version

STATE = ("pipeline", "state.json")
LOCK = "pipeline"
OK, SKIPPED, FAILED = "ok", "skipped", "failed"


@dataclass
class StepResult:
    name: str
    status: str
    seconds: float
    detail: str = ""
    versions: dict[str, str] = field(default_factory=dict)


@dataclass
class PipelineRun:
    """What the pipeline did, step by step, and the versions it produced."""

    steps: list[StepResult] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(step.status == FAILED for step in self.steps)


def fingerprint(*parts: Any) -> str:
    payload = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


Step = Callable[[Settings, dict[str, Any]], tuple[str, dict[str, str]]]
"""A step reads and extends the run context and returns (detail, versions)."""


def _ingest(settings: Settings, ctx: dict[str, Any]) -> tuple[str, dict[str, str]]:
    from ray_app.data.ingest import run_ingest

    result = run_ingest(settings)
    if result.failed and not settings.ingest.allow_partial:
        raise RayAppError(f"ingest failed for {', '.join(result.failed)}")
    ctx["data_version"] = result.version
    return f"{len(result.rows)} ticker(s), {'new' if result.changed else 'unchanged'}", {
        "data": str(result.version)
    }


def _features(settings: Settings, ctx: dict[str, Any]) -> tuple[str, dict[str, str]]:
    from ray_app.data.feature_store import build_features

    build = build_features(settings, data_version=ctx["data_version"])
    ctx["feature_version"] = build.version
    return ("reused" if build.reused else f"{build.manifest['rows']} rows"), {
        "features": build.version
    }


def _search(settings: Settings, ctx: dict[str, Any]) -> tuple[str, dict[str, str]]:
    from ray_app.training.train import load_training_data
    from ray_app.training.tune import run_search

    outcome = run_search(settings, load_training_data(settings, ctx["feature_version"]))
    ctx["model"] = outcome.best.kind
    ctx["hparams"] = outcome.best.hparams.model_dump()
    ctx["search"] = outcome.name
    return f"{len(outcome.trials)} trial(s), {outcome.failed} failed", {"search": outcome.name}


def _release(settings: Settings, ctx: dict[str, Any]) -> tuple[str, dict[str, str]]:
    from ray_app.models.families import spec
    from ray_app.training.release import train_and_release

    tuned = spec(settings, ctx.get("model"), ctx["hparams"]) if ctx.get("hparams") else None
    tags = {"search": ctx["search"]} if ctx.get("search") else None
    release = train_and_release(
        settings,
        feature_version=ctx["feature_version"],
        model=tuned,
        origin="pipeline",
        extra_tags=tags,
    )
    ctx["model_version"] = release.version
    verdict = "promoted to champion" if release.promoted else "kept the champion"
    reasons = "" if release.promoted else f" ({'; '.join(release.decision.reasons[:2])})"
    return f"v{release.version} {verdict}{reasons}", {"model": str(release.version)}


def _promote_live(settings: Settings, ctx: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """Opt-in (``monitoring.auto_promote``): the challenger becomes the champion when its live
    evidence is significant at ``monitoring.significance`` (``ray_app.monitoring.promotion``)."""
    from ray_app.monitoring.promotion import promote_on_evidence

    decision = promote_on_evidence(settings)
    return decision.detail, {"champion": str(decision.challenger)} if decision.promoted else {}


def _dashboard(settings: Settings) -> str:
    return f"http://{settings.cluster.dashboard_host}:{settings.cluster.dashboard_port}"


def _deploy(settings: Settings, ctx: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """``serve deploy`` with the variants pinned to the versions their aliases name now, so
    every replica, restarted or not, loads the same model; the feature set is left to follow
    the newest.

    Before any model has passed the gate there is no champion: the champion variant then
    serves the newest challenger's version (a reference that resolves), and the step says so
    (the registry is not changed).
    """
    from ray_app.registry.versions import champion_version, resolve_version
    from ray_app.serving.rollout import CHALLENGER, Change, rollout

    challenger = resolve_version(settings, CHALLENGER)
    champion, note = champion_version(settings), ""
    if champion is None:
        champion = challenger
        note = f" (no champion yet: serving challenger v{challenger}, not past the gate)"
    pins = {"champion": str(champion), CHALLENGER: str(challenger)}
    result = rollout(
        settings,
        settings.pipeline.serve_config,
        Change(pins=pins),
        actor="pipeline",
        reason="daily pipeline",
        address=_dashboard(settings),
    )
    served = {name: cfg.ref for name, cfg in result.state.variants.items()}
    ctx["serving"] = served
    return "serve deploy " + ", ".join(f"{k}={v}" for k, v in served.items()) + note, served


def _smoke(settings: Settings, ctx: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """One prediction through the public HTTP API, retried while replicas start."""
    import urllib.error
    import urllib.request

    from ray_app.data.feature_store import feature_manifest

    ticker = sorted(
        feature_manifest(DataRoot(settings.data_root), ctx["feature_version"])["tickers"]
    )[0]
    body = json.dumps({"tickers": [ticker]}).encode()
    url = settings.pipeline.serve_url.rstrip("/") + "/v1/predict"
    deadline, last = time.monotonic() + settings.pipeline.smoke_timeout_s, ""
    while time.monotonic() < deadline:
        request = urllib.request.Request(url, body, {"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                reply = json.loads(answer.read())
            first = reply["predictions"][0]
            served = f"{reply['variant']} v{reply['model_version']}"
            return f"{ticker}: {first['predicted_return']:+.5f} from {served}", {}
        except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            last = str(exc)
            time.sleep(2)
    raise RayAppError(
        f"no prediction from {url} within {settings.pipeline.smoke_timeout_s:.0f} s: {last}"
    )


def _monitor(settings: Settings, ctx: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """Score the served predictions whose outcome the bars ingested today reveal."""
    from ray_app.monitoring.outcomes import run_monitor

    result = run_monitor(settings)
    return (
        f"{result.scored_days} day(s) scored, {result.pending_days} pending, "
        f"{result.mlflow_points} MLflow point(s)",
        {},
    )


def _signals(settings: Settings, ctx: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The day's signal file (every ticker's prediction from each served variant, as of the
    newest feature date), once every variant has precomputed the new feature set; waits up
    to ``pipeline.smoke_timeout_s`` for them."""
    from ray_app.data.signals import daily_signals, read_scores, served_tables, write_daily

    root, wanted = DataRoot(settings.data_root), ctx["feature_version"]
    variants = sorted(ctx.get("serving") or [t.variant for t in served_tables(root)])
    deadline = time.monotonic() + settings.pipeline.smoke_timeout_s

    def ready() -> list[Any]:
        tables = [t for t in served_tables(root) if t.variant in variants]
        done = {t.variant for t in tables if t.feature_version == wanted}
        return tables if variants and done == set(variants) else []

    while not (tables := ready()):
        if time.monotonic() > deadline:
            raise RayAppError(
                f"variant(s) {', '.join(variants) or '(none served)'} have not precomputed "
                f"feature set {wanted} within {settings.pipeline.smoke_timeout_s:.0f} s: no "
                "signal file (`ray-app signals --date D` writes it once they have)"
            )
        time.sleep(2)
    day = max(
        read_scores(root, t.model_name, t.model_version, wanted)["feature_date"].max()
        for t in tables
    )
    frame = daily_signals(root, day, variants)
    return f"{len(frame)} signal(s) as of {day} in {write_daily(root, day, frame)}", {}


@dataclass
class PlannedStep:
    name: str
    run: Step
    inputs: Callable[[Settings, dict[str, Any]], Any] | None  # None: always runs


def plan(settings: Settings) -> list[PlannedStep]:
    """The steps in order; ``inputs`` gives what a step's fingerprint covers."""
    code = code_version()
    steps = [
        PlannedStep("ingest", _ingest, None),
        PlannedStep("features", _features, None),
        PlannedStep(
            "search",
            _search,
            lambda s, c: (
                c["feature_version"],
                code,
                s.tune.model_dump(mode="json"),
                s.train.model_dump(mode="json"),
                s.split.model_dump(mode="json"),
            ),
        ),
        PlannedStep(
            "release",
            _release,
            lambda s, c: (
                c["feature_version"],
                code,
                c.get("model"),
                c.get("hparams"),
                s.train.model_dump(mode="json"),
                s.split.model_dump(mode="json"),
                s.gate.model_dump(),
                s.evaluate.model_dump(),
                s.mlflow.model_dump(),
            ),
        ),
    ]
    if settings.monitoring.auto_promote:
        steps.append(PlannedStep("promote", _promote_live, None))
    monitor = PlannedStep("monitor", _monitor, None)
    if not settings.pipeline.deploy:
        return [*steps, monitor]
    deploy = [PlannedStep("deploy", _deploy, None), PlannedStep("smoke", _smoke, None)]
    return [*steps, *deploy, monitor, PlannedStep("signals", _signals, None)]


def run_pipeline(
    settings: Settings,
    steps: list[PlannedStep] | None = None,
    *,
    force: bool = False,
    on_step: Callable[[StepResult], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> PipelineRun:
    """Run ``steps`` (default: ``plan``) in order; a failed step stops the ones after it.

    One pipeline at a time per data root: the run holds the root's pipeline lock from reading
    the state file to its last write. A second run calls ``on_wait`` with the holder, waits
    up to ``pipeline.lock_timeout_s``, then fails naming the root and the holder.

    Each run's end is recorded (``ray_app.data.pipeline_runs``): the prediction API exports
    the last run and the last success, which the failed- and missing-run alerts read.
    """
    root = DataRoot(settings.data_root)
    with root.lock(LOCK, settings.pipeline.lock_timeout_s, on_wait):
        state: dict[str, Any] = root.read_json(*STATE) or {}
        run = PipelineRun()
        for step in steps or plan(settings):
            result = _run_step(settings, step, state, run.context, force)
            run.steps.append(result)
            if on_step:
                on_step(result)
            if result.status == FAILED:
                break
            root.write_json(state, *STATE)
        failed = next((step.name for step in run.steps if step.status == FAILED), None)
        record_run(root, ok=failed is None, failed_step=failed)
    return run


def _run_step(
    settings: Settings, step: PlannedStep, state: dict[str, Any], ctx: dict[str, Any], force: bool
) -> StepResult:
    started = time.monotonic()
    key = fingerprint(step.inputs(settings, ctx)) if step.inputs else None
    previous = state.get(step.name, {})
    if key is not None and previous.get("fingerprint") == key and not force:
        ctx.update(previous.get("context", {}))
        return StepResult(step.name, SKIPPED, 0.0, "inputs unchanged", previous.get("versions", {}))
    before = dict(ctx)
    try:
        detail, versions = step.run(settings, ctx)
    except Exception as exc:  # a step's failure is reported, and stops the pipeline
        reason = str(exc) if isinstance(exc, RayAppError) else f"{type(exc).__name__}: {exc}"
        return StepResult(step.name, FAILED, time.monotonic() - started, reason)
    added = {k: v for k, v in ctx.items() if before.get(k) != v}
    state[step.name] = {"fingerprint": key, "versions": versions, "context": added}
    return StepResult(step.name, OK, time.monotonic() - started, detail, versions)
