"""A data root with a registered champion, backed up and restored into an empty root with the
`ray-app` command line, serves the same champion: the serving loader (which checks the model
files' hashes) loads it from the restored root alone and predicts the same, the audit trail
verifies there, and the shipped serve_config.yaml deployed on the restored root, with the
original root moved away, answers /v1/predict over HTTP as the champion did before the
backup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from ray_app.core.settings import Settings
from ray_app.registry.tracking import tracking_uri
from ray_app.registry.versions import promote
from ray_app.serving.args import ServeArgs
from ray_app.serving.loader import RegistryLoader
from ray_app.training.train import TrainingData
from tests.conftest import Head, local_auth
from tests.integration.conftest import run_cli
from tests.integration.test_serve_app import wait_until
from tests.integration.test_serve_registry import (  # noqa: F401
    QUESTION,
    answered,
    data,
    offline,
    register,
    serve_config_for,
    serving,
    settings,
)

pytestmark = pytest.mark.integration


def champion_predicts(root: Path, x: np.ndarray) -> tuple[int, np.ndarray]:
    """The champion's version and predictions as a variant replica loads it from ``root``."""
    store = Settings(data_root=str(root))
    loader = RegistryLoader(ServeArgs(data_root=str(root), mlflow_tracking_uri=tracking_uri(store)))
    served = loader("champion")
    return served.version, served.predict(x[:, -served.window :, :])


def restore(backup: Path, target: Path, cwd: Path) -> None:
    """`ray-app restore` into ``target``; the audit trail verifies there."""
    done = run_cli(["restore", str(backup), "--data-root", str(target)], "", cwd)
    assert done.returncode == 0, done.stderr
    verified = run_cli(["audit", "verify", "--data-root", str(target)], "", cwd)
    assert verified.returncode == 0 and "intact" in verified.stdout, verified.stderr


def aliases(root: Path, cwd: Path) -> dict[int, list[str]]:
    """Each registered version's aliases, as `ray-app models` lists them from ``root``."""
    listed = run_cli(["models", "--json", "--data-root", str(root)], "", cwd)
    assert listed.returncode == 0, listed.stderr
    return {row["version"]: row["aliases"] for row in json.loads(listed.stdout)}


def served_answer(root: Path, folder: Path, head: Head) -> dict[str, Any]:
    """/v1/predict's first 200 answer to QUESTION from serve_config.yaml deployed on ``root``,
    Serve shut down after. Waited for on /v1/predict itself, not /readyz: each of the two
    ingress replicas behind HAProxy finds the champion on its own, and an answer is the
    thing to prove."""
    config = serve_config_for(Settings(data_root=str(root)), folder)
    answers: list[dict[str, Any]] = []

    def ok(url: str) -> bool:
        answer = requests.post(f"{url}/v1/predict", json=QUESTION, headers=local_auth(), timeout=10)
        if answer.status_code == 200:
            answers.append(answer.json())
        return answer.status_code == 200

    with serving(config, head) as url:
        wait_until(lambda: ok(url), 180)
    return answers[0]


def test_a_restored_root_serves_the_same_champion(
    settings: Settings,  # noqa: F811
    data: TrainingData,  # noqa: F811
    ray_head: Head,
    tmp_path: Path,
) -> None:
    version = register(settings, data, seed=0)
    promote(settings, version, "tester", "the champion to back up")
    root = Path(settings.data_root)
    x = np.random.default_rng(0).normal(size=(16, 64, len(data.columns))).astype(np.float32)
    before, expected = champion_predicts(root, x), offline(settings, data, version)

    backup = tmp_path / "backup"
    made = run_cli(["backup", str(backup), "--data-root", str(root)], "", tmp_path)
    assert made.returncode == 0, made.stderr
    assert "not included" not in made.stderr  # the embedded store: everything is in the root

    target = tmp_path / "restored" / "data"
    moved = root.rename(root.with_name("data-away"))  # the restored root must stand alone
    try:
        restore(backup, target, tmp_path)
        assert "champion" in aliases(target, tmp_path)[version]
        after = champion_predicts(target, x)
        body = served_answer(target, tmp_path, ray_head)
    finally:
        moved.rename(root)
    assert after[0] == before[0] == version
    np.testing.assert_array_equal(after[1], before[1])
    assert answered(body) == ("champion", version, expected)
