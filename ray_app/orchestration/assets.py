"""The daily pipeline's software-defined assets, their code versions and asset checks.

    bar_source -> raw_bars -> feature_set -> search -> model_release -> deployment -> signals
                  raw_bars -> live_metrics -> ab_evidence
                              live_metrics (-> live_promotion -> deployment, when opted in)
                  feature_set, model_release -> drift

``bar_source`` is observed, not built: its data version is what the configured source offers
now (``ray_app.data.arrivals.source_state``). Every other asset reports the version of what it
made as its Dagster data version: the raw manifest's hash, the feature version, a digest of
the best hyperparameters, the registered model version, the served pins. Its code version
is a revision (bumped by hand when the asset's code changes what it makes) joined with a
digest of the settings it reads, so a changed setting makes exactly that asset stale and,
through its new data version, the assets below it. Dagster compares these against what each
materialisation recorded; that is the whole of the pipeline's "is it up to date".

The heavy work stays where it was: each body connects to Ray (``ops.runtime.connect``) and
calls ``run_ingest``, ``build_features``, ``run_search``, ``train_and_release`` or the
deploy step, which run as Ray tasks, Ray Train and Ray Tune on the cluster.
"""

import hashlib
import json
from pathlib import Path
from typing import Any

import dagster as dg
from dagster import AssetCheckExecutionContext, AssetExecutionContext
from pydantic import BaseModel

from ray_app.core.errors import RayAppError
from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot

GROUP = "daily_pipeline"
SOURCE = dg.AssetKey("bar_source")
RAW = dg.AssetKey("raw_bars")
FEATURES = dg.AssetKey("feature_set")
SEARCH = dg.AssetKey("search")
RELEASE = dg.AssetKey("model_release")
DEPLOYMENT = dg.AssetKey("deployment")
SIGNALS = dg.AssetKey("signals")
MONITOR = dg.AssetKey("live_metrics")
AB = dg.AssetKey("ab_evidence")
PROMOTION = dg.AssetKey("live_promotion")
DRIFT = dg.AssetKey("drift")

SUMMARY = "summary"  # the metadata key of each materialisation's one-line account


def digest(*parts: Any) -> str:
    """A short hash of ``parts`` (settings sections as their JSON values)."""
    plain = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    payload = json.dumps(plain, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def source_digest(*subpackages: str) -> str:
    """A hash of the Python source of ``ray_app.<subpackage>`` for each one: the same code
    gives the same digest on any node, with or without a git checkout."""
    package = Path(__file__).resolve().parent.parent
    sha = hashlib.sha256()
    for name in subpackages:
        for path in sorted((package / name).rglob("*.py")):
            sha.update(path.relative_to(package).as_posix().encode())
            sha.update(path.read_bytes())
    return sha.hexdigest()[:12]


def code_versions(settings: Settings) -> dict[dg.AssetKey, str]:
    """Each asset's code version: ``<revision>-<digest of the settings it reads>``.

    Search and release also cover the source of the training and model code, as a change
    there changes what they make (an edit elsewhere, the CLI say, does not retrain).
    """
    training = source_digest("training", "models")
    monitoring = source_digest("monitoring")
    serve_config = settings.pipeline.serve_config
    serve_text = serve_config.read_text() if serve_config.is_file() else str(serve_config)
    s = settings
    return {
        RAW: "1-" + digest(s.ingest),
        FEATURES: "1-" + digest(s.features),
        SEARCH: "1-" + digest(training, s.tune, s.train, s.split),
        RELEASE: "1-" + digest(training, s.train, s.split, s.gate, s.evaluate, s.mlflow),
        DEPLOYMENT: "1-" + digest(serve_text, s.pipeline.serve_url, s.cluster.dashboard_port),
        SIGNALS: "1-" + digest(s.pipeline.smoke_timeout_s),
        MONITOR: "1-" + digest(monitoring, s.evaluate.quantile),
        AB: "1-" + digest(monitoring, s.monitoring),
        PROMOTION: "1-" + digest(monitoring, s.monitoring),
        DRIFT: "1-" + digest(monitoring, s.drift),
    }


def latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, Any]:
    """The metadata of ``key``'s latest materialisation, as plain values."""
    event = instance.get_latest_materialization_event(key)
    materialization = event.asset_materialization if event else None
    if materialization is None:
        raise RayAppError(f"asset {key.to_user_string()} has never been materialised")
    return {name: entry.value for name, entry in materialization.metadata.items()}


def _connect(settings: Settings) -> None:
    from ray_app.ops.runtime import connect

    connect(settings)


def build_assets(settings: Settings) -> list[Any]:
    """The assets and asset checks of ``settings`` (search and deployment when enabled)."""
    versions = code_versions(settings)
    root = DataRoot(settings.data_root)

    @dg.observable_source_asset(
        key=SOURCE,
        group_name=GROUP,
        description="What the configured bar source offers now (sample, CSV folder, Yahoo's "
        "newest closed session); a new data version means new raw data landed",
    )
    def bar_source() -> dg.DataVersion:
        from ray_app.data.arrivals import source_state

        return dg.DataVersion(source_state(settings.ingest))

    @dg.asset(
        key=RAW,
        deps=[SOURCE],
        code_version=versions[RAW],
        group_name=GROUP,
        description="Validated daily bars, one Parquet partition per ticker (run_ingest on "
        "Ray); data version: the raw manifest's hash",
    )
    def raw_bars() -> dg.MaterializeResult:
        from ray_app.data.ingest import run_ingest

        _connect(settings)
        result = run_ingest(settings)
        if result.failed and not settings.ingest.allow_partial:
            raise RayAppError(f"ingest failed for {', '.join(result.failed)}")
        if result.manifest is None:
            raise RayAppError("ingest stored no ticker")
        manifest = result.manifest
        summary = f"{len(result.rows)} ticker(s), {'new' if result.changed else 'unchanged'}"
        return dg.MaterializeResult(
            data_version=dg.DataVersion(manifest.version),
            metadata={
                "data_version": manifest.version,
                "tickers": len(manifest.tickers),
                "rows": manifest.rows,
                "last_date": manifest.last_date.isoformat(),
                "failed": ", ".join(result.failed),
                SUMMARY: summary,
            },
        )

    @dg.asset_check(
        asset=RAW,
        name="bars_valid",
        description="Every stored bar passes validation again (no invalid row kept); "
        "exchange sessions missing between a ticker's first and last bar are reported",
    )
    def bars_valid() -> dg.AssetCheckResult:
        from ray_app.data.ingest import audit_stored_bars

        audits = audit_stored_bars(root, settings.ingest)
        invalid = {a.ticker: a.invalid_rows for a in audits if a.invalid_rows}
        gaps = {a.ticker: a.missing_sessions for a in audits if a.missing_sessions}
        return dg.AssetCheckResult(
            passed=not invalid,
            metadata={
                "tickers": len(audits),
                "invalid_rows": dg.MetadataValue.json(invalid),
                "missing_sessions": dg.MetadataValue.json(gaps),
                "bars_on_holidays": sum(a.off_calendar for a in audits),
            },
        )

    @dg.asset(
        key=FEATURES,
        deps=[RAW],
        code_version=versions[FEATURES],
        group_name=GROUP,
        description="The point-in-time feature set of the raw data version (build_features on "
        "Ray); data version: the feature version",
    )
    def feature_set(context: AssetExecutionContext) -> dg.MaterializeResult:
        from ray_app.data.feature_store import build_features

        _connect(settings)
        data_version = latest_metadata(context.instance, RAW)["data_version"]
        build = build_features(settings, data_version=data_version)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(build.version),
            metadata={
                "feature_version": build.version,
                "data_version": build.data_version,
                "rows": build.manifest.rows,
                "tickers": len(build.manifest.tickers),
                SUMMARY: "reused" if build.reused else f"{build.manifest.rows} rows",
            },
        )

    @dg.asset_check(
        asset=FEATURES,
        name="point_in_time",
        description="A sample of tickers rebuilt from bars cut at a day t: every stored row up "
        "to t must be equal (no look-ahead)",
    )
    def point_in_time(context: AssetCheckExecutionContext) -> dg.AssetCheckResult:
        from ray_app.data.feature_store import check_point_in_time, feature_manifest, pit_sample

        version = latest_metadata(context.instance, FEATURES)["feature_version"]
        tickers = pit_sample(feature_manifest(root, version), settings.pipeline.pit_sample)
        checks = check_point_in_time(root, version, tickers)
        return dg.AssetCheckResult(
            passed=all(c.mismatched == 0 for c in checks),
            metadata={
                c.ticker: f"cut {c.cut}: {c.mismatched} of {c.rows} row(s) differ" for c in checks
            },
        )

    assets: list[Any] = [bar_source, raw_bars, bars_valid, feature_set, point_in_time]
    release_deps = [FEATURES]

    if settings.pipeline.search:

        @dg.asset(
            key=SEARCH,
            deps=[FEATURES],
            code_version=versions[SEARCH],
            group_name=GROUP,
            description="A Ray Tune search on the feature set; data version: a digest of the "
            "best hyperparameters",
        )
        def search(context: AssetExecutionContext) -> dg.MaterializeResult:
            from ray_app.training.train import load_training_data
            from ray_app.training.tune import run_search

            _connect(settings)
            feature_version = latest_metadata(context.instance, FEATURES)["feature_version"]
            outcome = run_search(settings, load_training_data(settings, feature_version))
            hparams = outcome.best.hparams.model_dump(mode="json")
            return dg.MaterializeResult(
                data_version=dg.DataVersion(digest(outcome.best.kind, hparams)),
                metadata={
                    "search": outcome.name,
                    "model": outcome.best.kind,
                    "hparams": dg.MetadataValue.json(hparams),
                    "trials": len(outcome.trials),
                    SUMMARY: f"{len(outcome.trials)} trial(s), {outcome.failed} failed",
                },
            )

        assets.append(search)
        release_deps.append(SEARCH)

    @dg.asset(
        key=RELEASE,
        deps=release_deps,
        code_version=versions[RELEASE],
        group_name=GROUP,
        check_specs=[
            dg.AssetCheckSpec(
                "quality_gate",
                asset=RELEASE,
                description="The quality gate's decision: the new version beat the baselines "
                "and the champion (a rejection warns; the champion stays)",
            )
        ],
        description="Train (Ray Train), evaluate, register and gate a model version; data "
        "version: the registered model version",
    )
    def model_release(context: AssetExecutionContext) -> dg.MaterializeResult:
        from ray_app.models.families import spec
        from ray_app.training.release import train_and_release

        _connect(settings)
        feature_version = latest_metadata(context.instance, FEATURES)["feature_version"]
        tuned, tags = None, None
        if settings.pipeline.search:
            found = latest_metadata(context.instance, SEARCH)
            tuned = spec(settings, str(found["model"]), found["hparams"])
            tags = {"search": str(found["search"])}
        release = train_and_release(
            settings,
            feature_version=feature_version,
            model=tuned,
            origin="pipeline",
            extra_tags=tags,
        )
        verdict = "promoted to champion" if release.promoted else "kept the champion"
        reasons = "" if release.promoted else f" ({'; '.join(release.decision.reasons[:2])})"
        return dg.MaterializeResult(
            data_version=dg.DataVersion(str(release.version)),
            metadata={
                "model_version": release.version,
                "feature_version": feature_version,
                "promoted": release.promoted,
                SUMMARY: f"v{release.version} {verdict}{reasons}",
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="quality_gate",
                    passed=release.promoted,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={"reasons": "; ".join(release.decision.reasons) or "passed"},
                )
            ],
        )

    assets.append(model_release)

    if settings.pipeline.deploy:

        @dg.asset(
            key=DEPLOYMENT,
            deps=[RELEASE, PROMOTION] if settings.monitoring.auto_promote else [RELEASE],
            code_version=versions[DEPLOYMENT],
            group_name=GROUP,
            description="`serve deploy` pinning the champion and challenger, then one "
            "prediction over HTTP; data version: the served pins",
        )
        def deployment(context: AssetExecutionContext) -> dg.MaterializeResult:
            from ray_app.data.feature_store import feature_manifest
            from ray_app.ops.deploy import deploy_serving, smoke_request

            _connect(settings)
            done = deploy_serving(settings)
            feature_version = latest_metadata(context.instance, FEATURES)["feature_version"]
            ticker = sorted(feature_manifest(root, feature_version).tickers)[0]
            answer = smoke_request(settings, ticker)
            return dg.MaterializeResult(
                data_version=dg.DataVersion(digest(done.served)),
                metadata={
                    "served": dg.MetadataValue.json(done.served),
                    "prediction": answer,
                    SUMMARY: f"{done.detail}; {answer}",
                },
            )

        assets.append(deployment)

    assets += _live_assets(settings, versions)
    return assets


def _live_assets(settings: Settings, versions: dict[dg.AssetKey, str]) -> list[Any]:
    """The closed loop: served predictions scored once the bars that reveal their outcome
    are in, the opt-in promotion on that evidence (before the deployment, which then serves
    the new champion), the day's drift, and the signal file of what is served."""

    @dg.asset(
        key=MONITOR,
        deps=[RAW],
        code_version=versions[MONITOR],
        group_name=GROUP,
        description="Logged predictions joined with the realised next-day returns of the new "
        "bars: live accuracy, IC, rank IC, MAE, long-short per variant, version and day",
    )
    def live_metrics() -> dg.MaterializeResult:
        from ray_app.monitoring.outcomes import run_monitor

        result = run_monitor(settings)
        summary = (
            f"{result.scored_days} day(s) scored, {result.pending_days} pending, "
            f"{result.mlflow_points} MLflow point(s)"
        )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(digest(summary, result.predictions)),
            metadata={SUMMARY: summary},
        )

    @dg.asset(
        key=DRIFT,
        deps=[FEATURES, RELEASE],
        code_version=versions[DRIFT],
        group_name=GROUP,
        description="PSI and KS of the newest day's served feature rows and predictions "
        "against each serving model's training window",
    )
    def drift(context: AssetExecutionContext) -> dg.MaterializeResult:
        from ray_app.data.feature_store import feature_manifest
        from ray_app.monitoring.drift import run_drift

        feature_version = latest_metadata(context.instance, FEATURES)["feature_version"]
        last = feature_manifest(DataRoot(settings.data_root), feature_version).last_date
        result = run_drift(settings, last)
        summary = f"{len(result.drifted)} of {len(result.table)} over threshold on {result.day}"
        return dg.MaterializeResult(
            data_version=dg.DataVersion(digest(summary)), metadata={SUMMARY: summary}
        )

    @dg.asset(
        key=AB,
        deps=[MONITOR],
        code_version=versions[AB],
        group_name=GROUP,
        description="The A/B report over the last monitoring.ab_window_days: each challenger "
        "against the baseline, paired on every ticker-day and on served traffic; its table is "
        "what the ingress exports as ray_app_ab_* gauges",
    )
    def ab_evidence() -> dg.MaterializeResult:
        from ray_app.monitoring.report import record_daily_evidence

        summary = record_daily_evidence(settings)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(digest(summary)), metadata={SUMMARY: summary}
        )

    live: list[Any] = [live_metrics, ab_evidence, drift]
    if settings.monitoring.auto_promote:

        @dg.asset(
            key=PROMOTION,
            deps=[MONITOR, RELEASE],
            code_version=versions[PROMOTION],
            group_name=GROUP,
            description="Opt-in (monitoring.auto_promote): the challenger becomes champion "
            "when its paired live evidence is significant; data version: the champion",
        )
        def live_promotion() -> dg.MaterializeResult:
            from ray_app.monitoring.promotion import promote_on_evidence

            decision = promote_on_evidence(settings)
            champion = decision.challenger if decision.promoted else decision.champion
            return dg.MaterializeResult(
                data_version=dg.DataVersion(str(champion)), metadata={SUMMARY: decision.detail}
            )

        live.append(live_promotion)
    if settings.pipeline.deploy:

        @dg.asset(
            key=SIGNALS,
            deps=[DEPLOYMENT, FEATURES],
            code_version=versions[SIGNALS],
            group_name=GROUP,
            description="The day's signal file: every ticker's prediction from each served "
            "variant, from the tables the variants precomputed",
        )
        def signals(context: AssetExecutionContext) -> dg.MaterializeResult:
            from ray_app.ops.deploy import write_signals

            feature_version = latest_metadata(context.instance, FEATURES)["feature_version"]
            served = latest_metadata(context.instance, DEPLOYMENT)["served"]
            summary = write_signals(settings, feature_version, sorted(served))
            return dg.MaterializeResult(
                data_version=dg.DataVersion(digest(feature_version, summary)),
                metadata={SUMMARY: summary},
            )

        live.append(signals)
    return live
