"""`ray-app data export --dvc`: a data version out of the live root, through a real DVC
repository (git init, dvc init, a local folder as the remote), pushed, cloned and pulled
elsewhere, and read back by `ray-app` with the same data and feature versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from ray_app.core.storage import DataRoot
from ray_app.data.feature_store import load_feature_set
from tests.conftest import ray_app_command
from tests.unit.test_retention import build_versions

DVC = str(Path(sys.executable).with_name("dvc"))
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "DVC_NO_ANALYTICS": "1",
}


def run(cwd: Path, *command: str) -> str:
    done = subprocess.run(command, cwd=cwd, env=GIT_ENV, capture_output=True, text=True)
    assert done.returncode == 0, f"{command}: {done.stderr}"
    return done.stdout


def test_an_exported_version_travels_through_dvc_and_reads_back(
    data_root: Path, tmp_path: Path
) -> None:
    (old, old_features), _, _ = build_versions(data_root)
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    run(repo, "git", "init", "-q")
    run(repo, DVC, "init", "-q")
    run(repo, DVC, "remote", "add", "-d", "local", str(remote))

    export = ray_app_command(
        ["data", "export", old.version, "--dvc", str(repo / "data"), "--data-root", str(data_root)],
        {"DVC_NO_ANALYTICS": "1"},
    )
    assert export.returncode == 0, export.stderr
    said = " ".join(export.stdout.split())
    assert f"exported data version {old.version} (6 files" in said  # 2 bars + manifest, 2 + 1
    assert f"feature sets: {old_features}" in said and f"dvc add: {repo / 'data'}.dvc" in said
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "data version")
    run(repo, DVC, "push", "-q")

    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "data").exists()  # git holds only data.dvc
    run(clone, DVC, "pull", "-q")
    status = ray_app_command(["data", "status", "--json", "--data-root", str(clone / "data")], {})
    assert status.returncode == 0, status.stderr
    pulled = json.loads(status.stdout)
    assert pulled["raw"]["version"] == old.version
    assert [f["version"] for f in pulled["features"]] == [old_features]
    frame, manifest = load_feature_set(DataRoot(str(clone / "data")), training=False)
    original, _ = load_feature_set(DataRoot(str(data_root)), old_features, training=False)
    assert manifest.data_version == old.version
    pd.testing.assert_frame_equal(frame, original)


def test_dvc_never_owns_the_live_root(data_root: Path) -> None:
    (version, _), _, _ = build_versions(data_root)
    for dest, said in [
        (data_root / "exports", "overlaps the live data root"),
        (data_root.parent, "overlaps the live data root"),
    ]:
        refused = ray_app_command(
            ["data", "export", version.version, "--dvc", str(dest), "--data-root", str(data_root)],
            {},
        )
        assert refused.returncode == 2 and said in refused.stderr, refused.stderr
    unknown = ray_app_command(
        [
            "data",
            "export",
            "0123456789abcdef",
            "--dvc",
            str(data_root.parent / "x"),
            "--data-root",
            str(data_root),
        ],
        {},
    )
    assert unknown.returncode == 2 and "0123456789abcdef does not exist" in unknown.stderr
