"""Typed manifests and their schema version: what readers refuse and what migrate upgrades.

The old formats are written here as the code before schema versions, and then schema version
1, wrote them, field for field and file for file (each ticker's bars overwritten in place at
``raw/ticker=<T>/bars.parquet``): data roots in users' hands look like this.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ray_app.core.settings import FeatureSettings, Settings
from ray_app.core.storage import DataRoot, frame_hash
from ray_app.data.catalog import data_status
from ray_app.data.feature_store import (
    FeatureSetError,
    feature_manifest,
    plan_build,
    record_feature_set,
)
from ray_app.data.ingest import (
    UnrecoverableBarsError,
    latest_manifest,
    read_bars,
    read_manifest,
    record_manifest,
)
from ray_app.data.manifests import SCHEMA_VERSION, ManifestFormatError
from ray_app.data.migrate import migrate
from ray_app.data.sources import SampleSource
from tests.conftest import ray_app_command
from tests.unit.test_ingest import history, summary_row

LATEST_VERSION, OLDER_VERSION = "0123456789abcdef", "00000000000000aa"
RAW_FILE = ("raw", "_manifests", f"{LATEST_VERSION}.json")
OLDER_FILE = ("raw", "_manifests", f"{OLDER_VERSION}.json")
FEATURE_FILE = ("features", "fedcba9876543210", "_manifest.json")
LEGACY_BARS = ("raw", "ticker=AAPL", "bars.parquet")
BARS = history(3)  # the bars of the latest version; the older one had the first two
BARS_HASH, OLDER_HASH = frame_hash(BARS), frame_hash(BARS.head(2))


def old_raw_manifest(root: Path, version: str = LATEST_VERSION) -> dict[str, Any]:
    """A raw manifest as the unversioned writer left it: the latest (three bars of AAPL, the
    ones in bars.parquet), or the older one, whose two bars the latest ingest overwrote."""
    older = version == OLDER_VERSION
    entry = {
        "rows": 2 if older else 3,
        "first_date": "2024-01-02",
        "last_date": "2024-01-03" if older else "2024-01-04",
        "hash": OLDER_HASH if older else BARS_HASH,
        "source": "sample",
        "path": str(root / "raw" / "ticker=AAPL" / "bars.parquet"),
    }
    return {
        "version": version,
        "content_hash": version * 4,
        "parent": None if older else OLDER_VERSION,
        "source": "sample",
        "created_at": "2026-10-31T09:30:00+00:00" if older else "2026-11-01T09:30:00+00:00",
        "tickers": {"AAPL": entry},
        "rows": entry["rows"],
        "first_date": entry["first_date"],
        "last_date": entry["last_date"],
    }


def old_feature_manifest(root: Path) -> dict[str, Any]:
    """A feature manifest as the unversioned writer left it."""
    return {
        "version": "fedcba9876543210",
        "data_version": LATEST_VERSION,
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


def write_old_root(path: Path, schema_version: int | None = None) -> DataRoot:
    """A data root with two raw data versions (the bars of the older one overwritten in place
    by the latest ingest) and one feature set, in the unversioned format or ``schema_version``."""
    root = DataRoot(str(path))
    stamp = {} if schema_version is None else {"schema_version": schema_version}
    metadata = {"ray_app.hash": BARS_HASH, "ray_app.source": "sample"}
    root.write_parquet(BARS, *LEGACY_BARS, metadata=metadata)
    root.write_json({**old_raw_manifest(path, OLDER_VERSION), **stamp}, *OLDER_FILE)
    root.write_json({**old_raw_manifest(path), **stamp}, *RAW_FILE)
    root.write_json({"version": LATEST_VERSION}, "raw", "_manifests", "LATEST.json")
    root.write_json({**old_feature_manifest(path), **stamp}, *FEATURE_FILE)
    root.write_json({"version": "fedcba9876543210"}, "features", "_latest.json")
    return root


def content_path(digest: str) -> str:
    return f"raw/ticker=AAPL/{digest[:16]}.parquet"


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file's bytes, by path (the locks aside): what a migration may change."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and "_locks" not in p.parts
    }


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


@pytest.mark.parametrize("schema_version", [None, 1], ids=["unversioned", "v1"])
def test_migrated_manifests_parse_into_the_typed_models(
    data_root: Path, schema_version: int | None
) -> None:
    root = write_old_root(data_root, schema_version)
    done = migrate(str(data_root))
    assert sorted(c.parts for c in done.upgraded) == sorted([OLDER_FILE, RAW_FILE, FEATURE_FILE])
    raw = latest_manifest(root)
    assert raw is not None and raw.schema_version == SCHEMA_VERSION
    assert raw.tickers["AAPL"].last_date.isoformat() == "2024-01-04"
    assert raw.parent == OLDER_VERSION
    features = feature_manifest(root)
    assert features.spec == FeatureSettings() and features.tickers["AAPL"].training_rows == 2
    assert root.read_json(*FEATURE_FILE) == {
        **old_feature_manifest(data_root),
        "schema_version": SCHEMA_VERSION,
    }
    for parts, version, path in [
        (RAW_FILE, LATEST_VERSION, content_path(BARS_HASH)),
        (OLDER_FILE, OLDER_VERSION, None),  # its bars were overwritten: listed, not readable
    ]:
        old = old_raw_manifest(data_root, version)
        entry = {**old["tickers"]["AAPL"], "path": path}
        assert root.read_json(*parts) == {
            **old,
            "tickers": {"AAPL": entry},
            "schema_version": SCHEMA_VERSION,
        }


def test_the_in_place_bars_become_the_latest_versions_content_addressed_file(
    data_root: Path,
) -> None:
    root = write_old_root(data_root, 1)
    done = migrate(str(data_root))
    assert done.moved == [str(data_root / "raw" / "ticker=AAPL" / "bars.parquet")]
    assert done.unreadable == {OLDER_VERSION: ["AAPL"]}
    assert not root.exists(*LEGACY_BARS)
    assert sorted(p.name for p in (data_root / "raw" / "ticker=AAPL").iterdir()) == [
        f"{BARS_HASH[:16]}.parquet"
    ]
    pd.testing.assert_frame_equal(read_bars(root, "AAPL"), BARS)
    older = read_manifest(root, OLDER_VERSION)
    with pytest.raises(UnrecoverableBarsError, match=f"data version {OLDER_VERSION} cannot be"):
        read_bars(root, "AAPL", older)
    settings = Settings(data_root=str(data_root))
    with pytest.raises(FeatureSetError, match=rf"{OLDER_VERSION} cannot be rebuilt: .* AAPL"):
        plan_build(settings, OLDER_VERSION)
    assert plan_build(settings, LATEST_VERSION).raw == latest_manifest(root)


def test_a_crash_before_the_old_files_went_is_finished_by_the_next_run(
    data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration copies, then rewrites the manifests, then deletes: a crash in the last step
    leaves the root readable, and the next run removes what is left."""
    root = write_old_root(data_root, 1)

    def crash(*parts: str) -> None:
        raise OSError("killed")

    monkeypatch.setattr(DataRoot, "delete", crash)
    with pytest.raises(OSError):
        migrate(str(data_root))
    monkeypatch.undo()
    pd.testing.assert_frame_equal(read_bars(root, "AAPL"), BARS)
    again = migrate(str(data_root))
    assert (again.upgraded, again.moved) == ([], [str(data_root.joinpath(*LEGACY_BARS))])
    assert not root.exists(*LEGACY_BARS) and migrate(str(data_root)).changed is False


def test_a_second_migration_and_a_dry_run_change_nothing(data_root: Path) -> None:
    write_old_root(data_root)
    before = snapshot(data_root)
    dry = migrate(str(data_root), dry_run=True)
    assert len(dry.upgraded) == 3 and len(dry.moved) == 1 and snapshot(data_root) == before
    migrate(str(data_root))
    after = snapshot(data_root)
    again = migrate(str(data_root))
    assert (again.upgraded, again.moved, again.current) == ([], [], 3)
    assert snapshot(data_root) == after


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
    raw, _ = record_manifest(root, SampleSource(), [summary_row(root, "AAPL")])
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
    assert latest_manifest(DataRoot(str(data_root))) == read_manifest(
        DataRoot(str(data_root)), LATEST_VERSION
    )


def test_migrate_through_the_command_line(data_root: Path, tmp_path: Path) -> None:
    write_old_root(data_root)
    refused = ray_app_command(["data", "status", "--data-root", str(data_root)], {})
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"run `ray-app migrate --data-root {data_root}`" in refused.stderr

    dry = ray_app_command(["migrate", "--data-root", str(data_root), "--dry-run"], {})
    assert dry.returncode == 0, dry.stderr
    assert "would upgrade" in dry.stdout and "3 manifest(s) would upgrade" in dry.stdout
    first = ray_app_command(["migrate", "--data-root", str(data_root)], {})
    assert first.returncode == 0, first.stderr
    assert f"upgraded {data_root}/raw/_manifests/{LATEST_VERSION}.json: unversioned -> v2" in (
        first.stdout
    )
    assert f"moved {data_root}/raw/ticker=AAPL/bars.parquet to its content-addressed" in (
        first.stdout
    )
    assert (
        f"data version {OLDER_VERSION}: the bars of AAPL were overwritten by a later ingest; "
        "it stays listed but cannot be read or rebuilt"
    ) in " ".join(first.stdout.split())
    second = ray_app_command(["migrate", "--data-root", str(data_root)], {})
    assert second.returncode == 0, second.stderr
    assert "is up to date: 3 manifest(s) at schema version 2, nothing changed" in second.stdout

    rebuild = ray_app_command(
        ["features", "--data-root", str(data_root), "--data-version", OLDER_VERSION], {}
    )
    assert rebuild.returncode == 2 and "Traceback" not in rebuild.stderr
    assert f"data version {OLDER_VERSION} cannot be rebuilt" in rebuild.stderr

    status = ray_app_command(["data", "status", "--json", "--data-root", str(data_root)], {})
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["raw"]["version"] == LATEST_VERSION

    missing = ray_app_command(["migrate", "--data-root", str(tmp_path / "nowhere")], {})
    assert missing.returncode == 2 and "nowhere does not exist" in missing.stderr
