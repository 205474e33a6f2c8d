"""The Dagster definitions without Ray: the exchange calendar of the schedule, the new-data
sensor, the planner on a fresh instance, and the instance storage."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import yaml

from ray_app.core.settings import Settings, SettingsError
from ray_app.orchestration.definitions import (
    SCHEDULE,
    SENSOR,
    build_definitions,
    market_closed,
    plan_run,
)
from ray_app.orchestration.instance import POSTGRES_URL_ENV, ensure_home, open_instance

NEW_YORK = ZoneInfo("America/New_York")
ASSETS = [
    "raw_bars",
    "feature_set",
    "live_metrics",
    "ab_evidence",
    "search",
    "model_release",
    "deployment",
    "drift",
    "signals",
]


def csv_settings(tmp_path: Path) -> Settings:
    folder = tmp_path / "bars"
    folder.mkdir()
    (folder / "AAA.csv").write_text("date,open,high,low,close,volume\n2024-01-02,1,1,1,1,10\n")
    return Settings(
        data_root=str(tmp_path / "data"),
        ingest={"source": "csv", "path": folder},
        pipeline={"serve_url": "http://127.0.0.1:9"},  # nothing answers there
    )


@pytest.mark.parametrize(
    ("day", "closed"),
    [
        (dt.date(2026, 11, 25), False),  # a Wednesday
        (dt.date(2026, 11, 26), True),  # Thanksgiving
        (dt.date(2026, 12, 25), True),  # Christmas, a Friday
        (dt.date(2026, 11, 28), True),  # a Saturday
    ],
)
def test_the_market_is_closed_on_weekends_and_exchange_holidays(day: dt.date, closed: bool) -> None:
    reason = market_closed(Settings(), day)
    assert (reason is not None) == closed
    if closed:
        assert reason == f"market closed: {day.isoformat()} is not an XNYS session"


def test_the_schedule_skips_a_holiday_and_asks_for_the_stale_assets_on_a_session(
    tmp_path: Path,
) -> None:
    settings = csv_settings(tmp_path)
    defs = build_definitions(settings)
    schedule = defs.resolve_schedule_def(SCHEDULE)
    assert schedule.cron_schedule == "30 18 * * 1-5"
    assert schedule.execution_timezone == "America/New_York"
    with dg.instance_for_test() as instance:
        thanksgiving = dt.datetime(2026, 11, 26, 18, 30, tzinfo=NEW_YORK)
        context = dg.build_schedule_context(instance, scheduled_execution_time=thanksgiving)
        skipped = schedule.evaluate_tick(context)
        assert skipped.skip_message == "market closed: 2026-11-26 is not an XNYS session"
        wednesday = dt.datetime(2026, 11, 25, 18, 30, tzinfo=NEW_YORK)
        context = dg.build_schedule_context(instance, scheduled_execution_time=wednesday)
        (request,) = schedule.evaluate_tick(context).run_requests or []
        assert [k.to_user_string() for k in request.asset_selection or []] == ASSETS


def test_the_sensor_starts_a_run_when_a_new_file_lands(tmp_path: Path) -> None:
    settings = csv_settings(tmp_path)
    defs = build_definitions(settings)
    sensor = defs.resolve_sensor_def(SENSOR)
    with dg.instance_for_test() as instance:
        first = sensor.evaluate_tick(dg.build_sensor_context(instance))
        assert len(first.run_requests or []) == 1 and first.cursor
        again = sensor.evaluate_tick(dg.build_sensor_context(instance, cursor=first.cursor))
        assert again.skip_message == "no new raw data" and not again.run_requests
        (settings.ingest.path / "BBB.csv").write_text(  # type: ignore[operator]
            "date,open,high,low,close,volume\n2024-01-02,2,2,2,2,20\n"
        )
        landed = sensor.evaluate_tick(dg.build_sensor_context(instance, cursor=first.cursor))
        assert len(landed.run_requests or []) == 1 and landed.cursor != first.cursor


def test_the_plan_of_a_fresh_instance_is_every_asset_and_the_source_is_observed_once(
    tmp_path: Path,
) -> None:
    settings = csv_settings(tmp_path)
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        plan = plan_run(settings, defs, instance)
        assert [k.to_user_string() for k in plan.selected] == ASSETS
        assert set(plan.reasons.values()) == {"never materialised"}
        plan_run(settings, defs, instance)
        observed = instance.fetch_observations(dg.AssetKey("bar_source"), limit=10).records
        assert len(observed) == 1  # an unchanged source is not observed again


def test_settings_change_exactly_their_assets_code_versions(tmp_path: Path) -> None:
    from ray_app.orchestration.assets import code_versions

    before = code_versions(Settings())
    after = code_versions(Settings(features={"rsi_window": 10}))
    changed = sorted(k.to_user_string() for k in before if before[k] != after[k])
    assert changed == ["feature_set"]


def test_the_local_instance_is_sqlite_under_the_data_root(tmp_path: Path) -> None:
    settings = Settings(data_root=str(tmp_path / "data"))
    home = ensure_home(settings)
    assert home == (tmp_path / "data" / "dagster").resolve()
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    assert config["storage"] == {"sqlite": {"base_dir": str(home / "storage")}}
    with open_instance(settings) as instance:
        assert instance.is_persistent


def test_postgres_storage_reads_its_url_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_root="s3://bucket/lake", pipeline={"dagster_storage": "postgres"})
    monkeypatch.delenv(POSTGRES_URL_ENV, raising=False)
    with pytest.raises(SettingsError, match=f"{POSTGRES_URL_ENV} is not set"):
        ensure_home(settings)
    monkeypatch.setenv(POSTGRES_URL_ENV, "postgresql+psycopg2://dagster@127.0.0.1:5432/test")
    home = ensure_home(settings)
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    assert config["storage"] == {"postgres": {"postgres_url": {"env": POSTGRES_URL_ENV}}}
    assert os.environ[POSTGRES_URL_ENV]
    remote = Settings(data_root="s3://bucket/lake")
    with pytest.raises(SettingsError, match=r"pipeline\.dagster_storage: postgres"):
        ensure_home(remote)


def test_dagster_ui_runs_dagster_dev_on_the_pipelines_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray_app import cli

    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump({"data_root": str(tmp_path / "data")}))
    started: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: started.append((path, argv, env)))
    with pytest.raises(SystemExit) as ended:  # execve never returns; here it does
        cli.main(["dagster-ui", "--config", str(config), "--port", "3100"])
    assert ended.value.code == 0
    ((path, argv, env),) = started
    assert Path(path).name == "dagster" and Path(path).is_file()
    assert argv[1:] == [
        *("dev", "-m", "ray_app.orchestration.location"),
        *("--host", "127.0.0.1", "--port", "3100"),
    ]
    home = (tmp_path / "data" / "dagster").resolve()
    assert env["DAGSTER_HOME"] == str(home) and (home / "dagster.yaml").is_file()
    assert env["RAY_APP_CONFIG_FILE"] == str(config.resolve())


def _materialise(
    instance: dg.DagsterInstance, defs: dg.Definitions, key: str, version: str
) -> None:
    """Record ``key`` as made with ``version`` from its parents' current data versions, as a
    run records it (the tags Dagster's staleness reads), without running anything."""
    from dagster._core.definitions.data_version import (
        CODE_VERSION_TAG,
        DATA_VERSION_TAG,
        get_input_data_version_tag,
        get_input_event_pointer_tag,
    )

    graph = defs.resolve_asset_graph()
    asset = dg.AssetKey(key)
    tags = {DATA_VERSION_TAG: version, CODE_VERSION_TAG: graph.get(asset).code_version or ""}
    for parent in graph.get(asset).parent_keys:
        record = instance.get_latest_data_version_record(
            parent, is_source=parent.path == ["bar_source"]
        )
        assert record is not None
        tags[get_input_data_version_tag(parent)] = record.event_log_entry.tags[DATA_VERSION_TAG]
        tags[get_input_event_pointer_tag(parent)] = str(record.storage_id)
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset, tags=tags))


def test_a_held_asset_stays_stale_without_rerunning_what_is_below_it(tmp_path: Path) -> None:
    """A day without retraining holds model_release back; on the next run with nothing new,
    drift (below it, already run on the new features) must not run again because of it."""
    settings = csv_settings(tmp_path)
    settings.pipeline.deploy = False  # a deployment reruns while nothing answers
    defs = build_definitions(settings)
    held = {"search", "model_release"}
    with dg.instance_for_test() as instance:
        plan_run(settings, defs, instance)  # observes the source
        for key in [k for k in ASSETS if k not in ("deployment", "signals")]:
            _materialise(instance, defs, key, "1")
        assert plan_run(settings, defs, instance).selected == []
        for key in ("feature_set", "live_metrics", "ab_evidence", "drift"):  # a new day
            _materialise(instance, defs, key, "2")
        plan = plan_run(settings, defs, instance, hold=held)
        assert plan.selected == []
        assert [k.to_user_string() for k in plan.held] == ["search", "model_release"]
        unheld = plan_run(settings, defs, instance)
        assert [k.to_user_string() for k in unheld.selected] == ["search", "model_release", "drift"]
