"""`ray-app backup` and `ray-app restore` on a small root with a real SQLite MLflow store:
a restore elsewhere reads the same runs and artifacts; a changed backup, a non-empty target
and a non-empty destination are refused with one line and nothing written."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.ops.backup import MANIFEST, ROOT, repoint_store, sha256_file
from ray_app.registry import audit
from ray_app.registry.tracking import connect_mlflow, tracking_uri
from tests.conftest import ray_app_command

ARTIFACT = "notes/model-card.txt"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root as the pipeline leaves it: raw partitions and their manifest, an MLflow
    run with an artifact, two audit entries, a lock file and an unfinished write."""
    root = tmp_path_factory.mktemp("template") / "data"
    settings = Settings(data_root=str(root))
    store = DataRoot(str(root))
    store.write_parquet(
        pd.DataFrame({"close": [1.0, 2.0]}), "raw", "ticker=AAPL", "a1.parquet", metadata={}
    )
    store.write_json({"version": "v1"}, "raw", "_manifests", "v1.json")
    with mlflow.start_run(experiment_id=connect_mlflow(settings)):
        mlflow.log_text("a champion", ARTIFACT)
    for event in ("promote", "rollback"):
        audit.append(settings, event, "tester", {"version": 1, "reason": "test"})
    (root / "raw" / ".a2.parquet.0123.tmp").write_bytes(b"half a file")
    return root


@pytest.fixture
def root(template: Path, tmp_path: Path) -> Path:
    """A copy of the template, its MLflow store pointed at the copy (as if built there)."""
    copy = tmp_path / "data"
    shutil.copytree(template, copy)
    repoint_store(copy / "mlflow.db", template, copy)
    return copy


def cli(*args: str | Path) -> tuple[int, str, str]:
    done = ray_app_command([str(a) for a in args], {})
    return done.returncode, done.stdout, done.stderr


def refused(code: int, stderr: str, *needles: str) -> None:
    """Exit 2 with one error line naming what was wrong, no traceback."""
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert all(n in stderr for n in needles), stderr


def backed_up(root: Path, dest: Path) -> Path:
    code, _, stderr = cli("backup", dest, "--data-root", root)
    assert code == 0, stderr
    return dest


def test_a_restore_elsewhere_reads_the_same_runs_artifacts_and_audit_trail(
    root: Path, tmp_path: Path
) -> None:
    dest = backed_up(root, tmp_path / "backup")
    manifest = json.loads((dest / MANIFEST).read_text())
    assert manifest["mlflow_store"] == "mlflow.db" and manifest["artifacts"] == "mlartifacts"
    assert manifest["audit_entries"] == 2 and manifest["not_included"] == []
    assert "_locks/audit.lock" not in manifest["files"]  # neither locks nor unfinished writes
    assert not any(name.endswith(".tmp") for name in manifest["files"])
    for name, entry in manifest["files"].items():
        assert sha256_file(dest / ROOT / name) == entry["sha256"]

    target = tmp_path / "elsewhere" / "data"
    shutil.rmtree(root)  # the restore must stand alone
    code, stdout, stderr = cli("restore", dest, "--data-root", target)
    assert code == 0, stderr
    assert "restored to" in stdout and str(target) in stdout
    assert [p.name for p in target.parent.iterdir()] == ["data"]  # no staging folder left
    verified = cli("audit", "verify", "--data-root", target)
    assert verified[0] == 0 and "intact: 2 entries" in verified[1], verified

    settings = Settings(data_root=str(target))
    experiment = mlflow.get_experiment(connect_mlflow(settings))
    assert experiment.artifact_location == (target / "mlartifacts").as_uri()
    (run,) = mlflow.search_runs([experiment.experiment_id], output_format="list")
    assert run.info.artifact_uri.startswith((target / "mlartifacts").as_uri())
    assert mlflow.artifacts.load_text(f"{run.info.artifact_uri}/{ARTIFACT}") == "a champion"
    assert tracking_uri(settings).endswith(f"{target}/mlflow.db")


@pytest.mark.parametrize(
    "tamper",
    ["edit", "add", "delete", "manifest"],
)
def test_a_changed_backup_is_refused_before_anything_is_written(
    root: Path, tmp_path: Path, tamper: str
) -> None:
    dest = backed_up(root, tmp_path / "backup")
    entry = next((dest / ROOT / "registry" / "audit").glob("2*.json"))
    name = entry.relative_to(dest / ROOT).as_posix()
    if tamper == "edit":
        entry.write_text(entry.read_text().replace("tester", "mallory"))
        expected = f"{name}: sha256 does not match"
    elif tamper == "add":
        (dest / ROOT / "raw" / "extra.parquet").write_bytes(b"x")
        expected = "raw/extra.parquet: not in backup.json"
    elif tamper == "delete":
        entry.unlink()
        expected = f"{name}: missing"
    else:
        (dest / MANIFEST).write_text("{}")
        expected = "backup.json is damaged"
    target = tmp_path / "restored"
    code, _, stderr = cli("restore", dest, "--data-root", target)
    refused(code, stderr, expected)
    assert not target.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "backup",
        "data",
    ]


def test_a_non_empty_root_is_refused_unless_forced_and_then_kept_aside(
    root: Path, tmp_path: Path
) -> None:
    dest = backed_up(root, tmp_path / "backup")
    audit.append(Settings(data_root=str(root)), "promote", "tester", {"version": 2})
    before = sorted(p.relative_to(root) for p in root.rglob("*"))

    code, _, stderr = cli("restore", dest, "--data-root", root)
    refused(code, stderr, f"data root {root} is not empty", "--force")
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before

    code, stdout, stderr = cli("restore", dest, "--data-root", root, "--force")
    assert code == 0, stderr
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith(".data.before-restore-")]
    moved = [line for line in stdout.splitlines() if "previous root moved to" in line]
    assert len(moved) == 1 and str(aside) in moved[0], stdout
    assert sorted(p.relative_to(aside) for p in aside.rglob("*")) == before
    assert len(audit.audit_log(Settings(data_root=str(root)))) == 2  # the backup's trail


def test_a_backup_goes_to_a_new_folder_and_names_what_lives_elsewhere(
    root: Path, tmp_path: Path
) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("someone's file")
    code, _, stderr = cli("backup", taken, "--data-root", root)
    refused(code, stderr, f"{taken} exists and is not empty")
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]

    env = {"RAY_APP_MLFLOW__TRACKING_URI": "postgresql://mlflow@db.internal/mlflow"}
    done = ray_app_command(["backup", str(tmp_path / "b"), "--data-root", str(root)], env)
    assert done.returncode == 0, done.stderr
    assert "pg_dump" in done.stderr and "db.internal/mlflow" in done.stderr
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    assert manifest["mlflow_store"] is None and manifest["artifacts"] == "mlartifacts"
    assert "mlflow.db" in manifest["files"]  # an old SQLite file under the root is data too


def test_a_sqlite_store_in_use_is_copied_as_of_its_last_commit(root: Path, tmp_path: Path) -> None:
    """A store in WAL mode keeps its newest commits in ``-wal`` until a checkpoint, and a
    writer may hold a transaction open: the backup has every commit and nothing uncommitted,
    where a copy of the database file alone would lack the commits."""
    path = root / "dagster" / "storage" / "runs.db"
    path.parent.mkdir(parents=True)
    writer, other = sqlite3.connect(path), sqlite3.connect(path)
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute("CREATE TABLE runs (id INTEGER)")
        writer.executemany("INSERT INTO runs VALUES (?)", [(i,) for i in range(100)])
        writer.commit()
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO runs VALUES (-1)")  # open while the backup runs
        assert (root / "dagster" / "storage" / "runs.db-wal").stat().st_size > 0
        dest = backed_up(root, tmp_path / "backup")
    finally:
        other.rollback()
        other.close()
        writer.close()
    manifest = json.loads((dest / MANIFEST).read_text())
    assert not any(name.endswith(("-wal", "-shm")) for name in manifest["files"])
    copy = sqlite3.connect(dest / ROOT / "dagster" / "storage" / "runs.db")
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert copy.execute("SELECT count(*), min(id) FROM runs").fetchone() == (100, 0)
    finally:
        copy.close()


def test_a_root_whose_path_needs_encoding_in_a_uri_keeps_its_artifacts(
    template: Path, tmp_path: Path
) -> None:
    """MLflow's artifact location is a percent-encoded ``file:`` URI: a space or a bracket in
    the root's path must not make the backup think the artifacts live elsewhere."""
    odd = tmp_path / "my data [1]"
    shutil.copytree(template, odd)
    repoint_store(odd / "mlflow.db", template, odd)
    dest = backed_up(odd, tmp_path / "backup")
    manifest = json.loads((dest / MANIFEST).read_text())
    assert manifest["artifacts"] == "mlartifacts" and manifest["not_included"] == []
    target = tmp_path / "restored [2]" / "data"
    code, _, stderr = cli("restore", dest, "--data-root", target)
    assert code == 0, stderr
    experiment = mlflow.get_experiment(connect_mlflow(Settings(data_root=str(target))))
    (run,) = mlflow.search_runs([experiment.experiment_id], output_format="list")
    assert mlflow.artifacts.load_text(f"{run.info.artifact_uri}/{ARTIFACT}") == "a champion"
