"""The daily pipeline's Dagster assets materialised in-process on the session's Ray head,
against the sample data and a persistent SQLite instance under the data root; then Dagster's
data-version staleness: a rerun with nothing new, and a changed feature setting. Last, the
asset graph in the Dagster UI, photographed with headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.feature_store import latest_feature_version
from ray_app.data.ingest import latest_manifest
from ray_app.data.pipeline_runs import read_run_record
from ray_app.orchestration.instance import open_instance
from ray_app.orchestration.runner import MATERIALIZED, UP_TO_DATE, DailyRun, run_daily
from tests.conftest import free_port

pytestmark = pytest.mark.integration

ASSETS = ["raw_bars", "feature_set", "live_metrics", "ab_evidence", "model_release", "drift"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "dagster-assets.png"


def tiny(root: Path) -> dict[str, object]:
    """A pipeline that trains in seconds: no search, no deployment (e2e covers those)."""
    return {
        "data_root": str(root),
        "ingest": {"source": "sample", "tickers": ["AAPL", "GOOG", "IBM", "MSFT"]},
        "split": {"n_folds": 2, "test_days": 60, "holdout_months": 3},
        "train": {"num_workers": 1, "hparams": {"hidden_size": 8, "epochs": 2, "batch_size": 512}},
        "pipeline": {"search": False, "deploy": False},
    }


@pytest.fixture(scope="module")
def first(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, DailyRun]:
    settings = Settings(**tiny(tmp_path_factory.mktemp("dagster") / "data"))  # type: ignore[arg-type]
    return settings, run_daily(settings)


def materialisations(settings: Settings) -> dict[str, int]:
    with open_instance(settings) as instance:
        return {
            name: len(instance.fetch_materializations(dg.AssetKey(name), limit=100).records)
            for name in ASSETS
        }


def test_the_first_run_materialises_every_asset_with_its_data_version(
    first: tuple[Settings, DailyRun],
) -> None:
    settings, run = first
    assert [(a.name, a.status) for a in run.assets] == [(n, MATERIALIZED) for n in ASSETS], run
    versions = {a.name: a.version for a in run.assets}
    root = DataRoot(settings.data_root)
    manifest = latest_manifest(root)
    assert manifest is not None and versions["raw_bars"] == manifest.version
    assert versions["feature_set"] == latest_feature_version(root)
    assert versions["model_release"] == "1"  # the registry's first version
    checks = {f"{c.asset}.{c.name}": c.passed for c in run.checks}
    assert checks["raw_bars.bars_valid"] and checks["feature_set.point_in_time"]
    assert "model_release.quality_gate" in checks  # the gate's verdict, either way
    assert (Path(settings.data_root) / "dagster" / "dagster.yaml").is_file()
    record = read_run_record(root)  # what the failed- and missing-run alerts read
    assert record is not None and record.last_run_ok and record.last_success_at is not None


def test_a_rerun_with_nothing_new_materialises_nothing(first: tuple[Settings, DailyRun]) -> None:
    settings, _ = first
    before = materialisations(settings)
    started = time.monotonic()
    rerun = run_daily(settings)
    seconds = time.monotonic() - started
    assert [(a.name, a.status) for a in rerun.assets] == [(n, UP_TO_DATE) for n in ASSETS], rerun
    assert rerun.run_id is None and not rerun.failed
    assert materialisations(settings) == before
    print(f"\nrerun with nothing new: {seconds:.1f} s, no Dagster run")
    assert seconds < 30


def test_a_changed_feature_setting_reruns_exactly_the_assets_below_it(
    first: tuple[Settings, DailyRun],
) -> None:
    settings, _ = first
    changed = settings.model_copy(deep=True)
    changed.features.rsi_window = 10
    run = run_daily(changed)
    assert [(a.name, a.status) for a in run.assets] == [
        ("raw_bars", UP_TO_DATE),
        ("feature_set", MATERIALIZED),
        ("live_metrics", UP_TO_DATE),
        ("ab_evidence", UP_TO_DATE),
        ("model_release", MATERIALIZED),
        ("drift", MATERIALIZED),
    ], run.assets
    reasons = {a.name: a.reason for a in run.assets}
    assert reasons["feature_set"] == "has a new code version"
    assert reasons["model_release"] == reasons["drift"] == "below feature_set"


def _serve_ui(settings: Settings, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    config = folder / "settings.yaml"
    config.write_text(yaml.safe_dump(tiny(Path(settings.data_root))))
    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(Path(settings.data_root) / "dagster"),
        "RAY_APP_CONFIG_FILE": str(config),
    }
    webserver = Path(sys.executable).with_name("dagster-webserver")
    command = [str(webserver), "-m", "ray_app.orchestration.location"]
    server = subprocess.Popen(
        [*command, "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return server, f"http://127.0.0.1:{port}"


def test_the_ui_shows_the_asset_graph(first: tuple[Settings, DailyRun], tmp_path: Path) -> None:
    """The documentation's screenshot (docs/img/dagster-assets.png), taken after a run."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed")
    settings, _ = first
    server, url = _serve_ui(settings, tmp_path)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "/server_info", timeout=5) as answer:
                    assert b"dagster_webserver_version" in answer.read()
                    break
            except OSError:
                assert time.monotonic() < deadline, "the Dagster UI did not start in 90 s"
                time.sleep(1)
        shot = tmp_path / "dagster-assets.png"
        taken = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--screenshot={shot}",
                "--window-size=1600,900",
                "--virtual-time-budget=15000",
                url + "/asset-groups",
            ],
            capture_output=True,
            timeout=120,
        )
        assert taken.returncode == 0, taken.stderr[-2000:]
    finally:
        server.terminate()  # it stops its code server first
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 30_000
    if os.environ.get("UPDATE_DOCS_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


def test_the_cluster_instance_keeps_data_versions_in_postgresql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The RayCronJob's storage: what one run records, the next (a new process, a new
    cluster, a new home) reads back from PostgreSQL."""
    import uuid

    import psycopg2

    name = f"dagster_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    try:
        monkeypatch.setenv(
            "DAGSTER_POSTGRES_URL", f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
        )
        cfg = {"data_root": "s3://bucket/lake", "pipeline": {"dagster_storage": "postgres"}}
        key = dg.AssetKey("bar_source")
        event = dg.AssetObservation(asset_key=key, tags={"dagster/data_version": "v1"})
        first = Settings(**{**cfg, "pipeline": {**cfg["pipeline"], "dagster_home": tmp_path / "a"}})
        with open_instance(first) as instance:
            instance.report_runless_asset_event(event)
        second = Settings(
            **{**cfg, "pipeline": {**cfg["pipeline"], "dagster_home": tmp_path / "b"}}
        )
        with open_instance(second) as instance:
            record = instance.get_latest_data_version_record(key, is_source=True)
            assert record is not None
            assert (record.event_log_entry.tags or {})["dagster/data_version"] == "v1"
    finally:
        admin.cursor().execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()
