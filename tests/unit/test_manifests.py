"""Typed manifests and their schema version: what readers refuse and what migrate upgrades.

The old format is written here as the code before schema versions wrote it, field for field:
data roots in users' hands look like this.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ray_app.core.settings import FeatureSettings, Settings
from ray_app.core.storage import DataRoot
from ray_app.data.catalog import data_status
from ray_app.data.feature_store import feature_manifest, plan_build, record_feature_set
from ray_app.data.ingest import latest_manifest, record_manifest
from ray_app.data.manifests import SCHEMA_VERSION, ManifestFormatError
from ray_app.data.migrate import migrate
from ray_app.data.sources import SampleSource
from tests.conftest import ray_app_command
from tests.unit.test_ingest import summary_row

RAW_FILE = ("raw", "_manifests", "0123456789abcdef.json")
FEATURE_FILE = ("features", "fedcba9876543210", "_manifest.json")


def old_raw_manifest(root: Path) -> dict[str, Any]:
    """A raw manifest as the unversioned writer left it."""
    entry = {
        "rows": 3,
        "first_date": "2024-01-02",
        "last_date": "2024-01-04",
        "hash": "h" * 64,
        "source": "sample",
        "path": str(root / "raw" / "ticker=AAPL" / "bars.parquet"),
    }
    return {
        "version": "0123456789abcdef",
        "content_hash": "0123456789abcdef" * 4,
        "parent": None,
        "source": "sample",
        "created_at": "2026-11-01T09:30:00+00:00",
        "tickers": {"AAPL": entry},
        "rows": 3,
        "first_date": "2024-01-02",
        "last_date": "2024-01-04",
    }


def old_feature_manifest(root: Path) -> dict[str, Any]:
    """A feature manifest as the unversioned writer left it."""
    return {
        "version": "fedcba9876543210",
        "data_version": "0123456789abcdef",
        "spec_hash": "s" * 64,
        "spec": FeatureSettings().model_dump(mode="json"),
        "index_ticker": None,
        "columns": ["ret_1d", "vol_5d"],
        "target": "target_ret",
        "target_direction": "target_dir",
        "path": str(root / "features" / "fedcba9876543210"),
        "created_at": "2026-11-01T09:31:00+00:00",
        "tickers": {
            "AAPL": {
                "rows": 3,
                "training_rows": 2,
                "first_date": "2024-01-02",
                "last_date": "2024-01-04",
            }
        },
        "failed": {"IBM": "IBM: too little history for the feature windows"},
        "rows": 3,
        "first_date": "2024-01-02",
        "last_date": "2024-01-04",
    }


def write_old_root(path: Path) -> DataRoot:
    """A data root with one raw data version and one feature set, in the old format."""
    root = DataRoot(str(path))
    root.write_json(old_raw_manifest(path), *RAW_FILE)
    root.write_json({"version": "0123456789abcdef"}, "raw", "_manifests", "LATEST.json")
    root.write_json(old_feature_manifest(path), *FEATURE_FILE)
    root.write_json({"version": "fedcba9876543210"}, "features", "_latest.json")
    return root


def snapshot(path: Path) -> dict[str, str]:
    """Every manifest file's text, by path: what a migration may change."""
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*.json"))}


def test_readers_refuse_the_old_format_and_name_migrate(data_root: Path) -> None:
    root = write_old_root(data_root)
    with pytest.raises(ManifestFormatError, match=r"no schema version .* run `ray-app migrate"):
        latest_manifest(root)
    with pytest.raises(ManifestFormatError, match=r"_manifest.json has no schema version"):
        feature_manifest(root)


def test_a_newer_format_asks_for_a_newer_ray_app(data_root: Path) -> None:
    root = write_old_root(data_root)
    migrate(str(data_root))
    newer = {**(root.read_json(*RAW_FILE) or {}), "schema_version": SCHEMA_VERSION + 1}
    root.write_json(newer, *RAW_FILE)
    with pytest.raises(ManifestFormatError, match=r"newer than this ray-app reads .*upgrade"):
        latest_manifest(root)
    before = snapshot(data_root)
    with pytest.raises(ManifestFormatError, match="upgrade ray-app instead"):
        migrate(str(data_root))
    assert snapshot(data_root) == before


def test_migrated_manifests_parse_into_the_typed_models(data_root: Path) -> None:
    root = write_old_root(data_root)
    done = migrate(str(data_root))
    assert sorted(c.parts for c in done.upgraded) == sorted([RAW_FILE, FEATURE_FILE])
    raw = latest_manifest(root)
    assert raw is not None and raw.schema_version == SCHEMA_VERSION
    assert raw.tickers["AAPL"].last_date.isoformat() == "2024-01-04" and raw.parent is None
    features = feature_manifest(root)
    assert features.spec == FeatureSettings() and features.tickers["AAPL"].training_rows == 2
    for parts, old in [(RAW_FILE, old_raw_manifest), (FEATURE_FILE, old_feature_manifest)]:
        assert root.read_json(*parts) == {**old(data_root), "schema_version": SCHEMA_VERSION}


def test_a_second_migration_and_a_dry_run_change_nothing(data_root: Path) -> None:
    write_old_root(data_root)
    before = snapshot(data_root)
    dry = migrate(str(data_root), dry_run=True)
    assert len(dry.upgraded) == 2 and snapshot(data_root) == before
    migrate(str(data_root))
    after = snapshot(data_root)
    again = migrate(str(data_root))
    assert (again.upgraded, again.current) == ([], 2) and snapshot(data_root) == after


def test_a_damaged_manifest_stops_the_migration_before_any_write(data_root: Path) -> None:
    root = write_old_root(data_root)
    broken = old_feature_manifest(data_root)
    del broken["columns"]
    root.write_json(broken, *FEATURE_FILE)
    before = snapshot(data_root)
    with pytest.raises(ManifestFormatError, match=r"_manifest.json is not a valid manifest: col"):
        migrate(str(data_root))
    assert snapshot(data_root) == before


def test_writers_keep_the_old_fields_and_add_the_schema_version(data_root: Path) -> None:
    """Today's writers differ from the old format only by ``schema_version``."""
    root = DataRoot(str(data_root))
    raw, _ = record_manifest(root, SampleSource(), [summary_row("AAPL")])
    assert raw is not None
    written = root.read_json("raw", "_manifests", f"{raw.version}.json") or {}
    assert set(written) == {*old_raw_manifest(data_root), "schema_version"}
    assert written["schema_version"] == SCHEMA_VERSION and written["last_date"] == "2024-01-04"
    assert set(written["tickers"]["AAPL"]) == set(old_raw_manifest(data_root)["tickers"]["AAPL"])

    plan = plan_build(Settings(data_root=str(data_root)), None)
    row = {"ticker": "AAPL", "status": "ok", "rows": 3, "training_rows": 2}
    built = record_feature_set(
        plan, [{**row, "first_date": "2024-01-02", "last_date": "2024-01-04"}]
    )
    written = root.read_json("features", built.version, "_manifest.json") or {}
    assert set(written) == {*old_feature_manifest(data_root), "schema_version"}
    assert feature_manifest(root) == built and latest_manifest(root) == raw


def test_a_migrated_root_reads_as_before(data_root: Path) -> None:
    write_old_root(data_root)
    migrate(str(data_root))
    status = data_status(Settings(data_root=str(data_root)))
    assert status["raw"]["last_date"] == "2024-01-04"
    assert status["raw"]["created_at"] == "2026-11-01T09:30:00+00:00"
    assert status["features"][0]["columns"] == 2 and status["features"][0]["current"]


def test_migrate_through_the_command_line(data_root: Path, tmp_path: Path) -> None:
    write_old_root(data_root)
    refused = ray_app_command(["data", "status", "--data-root", str(data_root)], {})
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"run `ray-app migrate --data-root {data_root}`" in refused.stderr

    dry = ray_app_command(["migrate", "--data-root", str(data_root), "--dry-run"], {})
    assert dry.returncode == 0, dry.stderr
    assert "would upgrade" in dry.stdout and "2 manifest(s) would upgrade" in dry.stdout
    first = ray_app_command(["migrate", "--data-root", str(data_root)], {})
    assert first.returncode == 0, first.stderr
    assert f"upgraded {data_root}/raw/_manifests/0123456789abcdef.json: unversioned -> v1" in (
        first.stdout
    )
    second = ray_app_command(["migrate", "--data-root", str(data_root)], {})
    assert second.returncode == 0, second.stderr
    assert "is up to date: 2 manifest(s) at schema version 1, nothing changed" in second.stdout

    status = ray_app_command(["data", "status", "--json", "--data-root", str(data_root)], {})
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["raw"]["version"] == "0123456789abcdef"

    missing = ray_app_command(["migrate", "--data-root", str(tmp_path / "nowhere")], {})
    assert missing.returncode == 2 and "nowhere does not exist" in missing.stderr
