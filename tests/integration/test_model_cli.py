"""Training, search and the registry through the `ray-app` command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from ray_app.core.settings import load_settings
from ray_app.data.feature_store import build_features
from ray_app.data.ingest import run_ingest
from ray_app.registry.tracking import connect_mlflow
from tests.integration.conftest import run_cli

pytestmark = pytest.mark.integration

SMALL = {
    "ingest": {"source": "sample", "tickers": ["AAPL", "GOOG", "IBM", "MSFT"]},
    "split": {"n_folds": 2, "test_days": 60, "holdout_months": 3},
    "train": {"hparams": {"hidden_size": 8, "epochs": 2, "batch_size": 512}},
    "tune": {
        "num_samples": 5,
        "max_concurrent": 2,
        "scheduler": "none",
        "search_space": {"mlp": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}},
    },
}


@pytest.fixture(scope="module")
def config(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    path = folder / "small.yaml"
    path.write_text(yaml.safe_dump({"data_root": str(folder / "data"), **SMALL}))
    settings = load_settings(path)
    run_ingest(settings)
    build_features(settings)
    return path


def versions(config: Path, address: str) -> list[dict[str, object]]:
    result = run_cli(["models", "--json", "--config", str(config)], address, config.parent)
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_train_registers_and_people_promote_and_roll_back(config: Path, ray_address: str) -> None:
    cwd = config.parent
    for _ in range(2):
        trained = run_cli(["train", "--config", str(config)], ray_address, cwd)
        assert trained.returncode == 0, trained.stderr
        assert "holdout: model v" in trained.stdout and "MLflow run" in trained.stdout
    rows = versions(config, ray_address)
    assert [r["version"] for r in rows] == [1, 2]
    assert "challenger" in rows[1]["aliases"]
    assert rows[0]["lineage"]["feature_version"] == rows[1]["lineage"]["feature_version"]

    missing = run_cli(
        ["promote", "--version", "99", "--reason", "x", "--config", str(config)], ray_address, cwd
    )
    assert missing.returncode == 2 and "99" in missing.stderr and "Traceback" not in missing.stderr
    assert versions(config, ray_address) == rows  # the registry is as it was

    champion = next((r["version"] for r in rows if "champion" in r["aliases"]), None)
    first, second = (1, 2) if champion != 1 else (2, 1)
    for version in (first, second):
        done = run_cli(
            ["promote", "--version", str(version), "--reason", "by hand", "--config", str(config)],
            ray_address,
            cwd,
        )
        assert done.returncode == 0, done.stderr
    back = run_cli(
        ["rollback", "--reason", "bad canary", "--config", str(config)], ray_address, cwd
    )
    assert back.returncode == 0, back.stderr
    aliases = {r["version"]: r["aliases"] for r in versions(config, ray_address)}
    assert "champion" in aliases[first]

    report_dir = cwd / "report"
    evaluated = run_cli(
        [
            "evaluate",
            "--version",
            "champion",
            "--report-dir",
            str(report_dir),
            "--config",
            str(config),
        ],
        ray_address,
        cwd,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert {"report.json", "report.md", "equity.png"} <= {p.name for p in report_dir.iterdir()}


def test_bad_training_input_is_one_line(config: Path, ray_address: str) -> None:
    cwd = config.parent
    absent = run_cli(
        ["train", "--feature-version", "0123456789abcdef", "--config", str(config)],
        ray_address,
        cwd,
    )
    assert absent.returncode == 2
    assert "feature set version 0123456789abcdef does not exist" in absent.stderr
    nope = run_cli(
        ["train", "--feature-version", "nope", "--config", str(config)], ray_address, cwd
    )
    assert nope.returncode == 2 and "feature version 'nope' is not a version" in nope.stderr
    bad = cwd / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                **yaml.safe_load(config.read_text()),
                "tune": {
                    "search_space": {"mlp": {"lrate": {"type": "uniform", "low": 0, "high": 1}}}
                },
            }
        )
    )
    typo = run_cli(["tune", "--config", str(bad)], ray_address, cwd)
    assert (
        typo.returncode == 2
        and "tune.search_space.mlp: unknown hyperparameter(s) lrate" in typo.stderr
    )
    offline = run_cli(
        ["train", "--config", str(config)],
        ray_address,
        cwd,
        env={"RAY_APP_MLFLOW__TRACKING_URI": "http://127.0.0.1:9"},
    )
    assert offline.returncode == 2 and "unreachable" in offline.stderr


def test_an_interrupted_search_resumes(config: Path, ray_address: str) -> None:
    cwd = config.parent
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    command = [sys.executable, "-m", "ray_app", "tune", "--no-release", "--config", str(config)]
    search = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert search.stderr is not None
    name = search.stderr.readline().split()[1].rstrip(":")
    trials = Path(yaml.safe_load(config.read_text())["data_root"]) / "ray_results" / name
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(trials.glob("*/result.json"))) < 2:
        time.sleep(1)
    os.killpg(search.pid, signal.SIGKILL)
    search.wait()
    finished = run_cli(
        ["tune", "--no-release", "--resume", name, "--config", str(config)], ray_address, cwd
    )
    assert finished.returncode == 0, finished.stderr
    settings = load_settings(config)
    connect_mlflow(settings)
    runs = mlflow.search_runs(
        experiment_names=[settings.mlflow.experiment], filter_string=f"tags.search = '{name}'"
    )
    parent_ids = set(runs["tags.mlflow.parentRunId"].dropna()) - {""}
    assert len(parent_ids) == 1  # one parent run, reopened by the resumed search
    children = runs[runs["tags.mlflow.parentRunId"] == parent_ids.pop()]
    finished = children[children["status"] == "FINISHED"]
    assert finished["tags.trial_name"].nunique() == 5  # every trial, some restarted
