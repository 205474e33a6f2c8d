"""A data root with a registered champion, backed up and restored into an empty root with the
`ray-app` command line, serves the same champion: the serving loader (which checks the model
files' hashes) loads it from the restored root alone and predicts the same, and the audit
trail verifies there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ray_app.core.settings import Settings
from ray_app.registry.tracking import tracking_uri
from ray_app.registry.versions import promote
from ray_app.serving.args import ServeArgs
from ray_app.serving.loader import RegistryLoader
from ray_app.training.train import TrainingData
from tests.integration.conftest import run_cli
from tests.integration.test_serve_registry import data, register, settings  # noqa: F401

pytestmark = pytest.mark.integration


def champion_predicts(root: Path, x: np.ndarray) -> tuple[int, np.ndarray]:
    """The champion's version and predictions as a variant replica loads it from ``root``."""
    store = Settings(data_root=str(root))
    loader = RegistryLoader(ServeArgs(data_root=str(root), mlflow_tracking_uri=tracking_uri(store)))
    served = loader("champion")
    return served.version, served.predict(x[:, -served.window :, :])


def test_a_restored_root_serves_the_same_champion(
    settings: Settings,  # noqa: F811
    data: TrainingData,  # noqa: F811
    tmp_path: Path,
) -> None:
    version = register(settings, data, seed=0)
    promote(settings, version, "tester", "the champion to back up")
    root = Path(settings.data_root)
    x = np.random.default_rng(0).normal(size=(16, 64, len(data.columns))).astype(np.float32)
    before = champion_predicts(root, x)

    backup = tmp_path / "backup"
    made = run_cli(["backup", str(backup), "--data-root", str(root)], "", tmp_path)
    assert made.returncode == 0, made.stderr
    assert "not included" not in made.stderr  # the embedded store: everything is in the root

    target = tmp_path / "restored" / "data"
    moved = root.rename(root.with_name("data-away"))  # the restored root must stand alone
    try:
        done = run_cli(["restore", str(backup), "--data-root", str(target)], "", tmp_path)
        assert done.returncode == 0, done.stderr
        verified = run_cli(["audit", "verify", "--data-root", str(target)], "", tmp_path)
        assert verified.returncode == 0 and "intact" in verified.stdout, verified.stderr
        listed = run_cli(["models", "--json", "--data-root", str(target)], "", tmp_path)
        rows = {r["version"]: r["aliases"] for r in json.loads(listed.stdout)}
        assert "champion" in rows[version], listed.stderr
        after = champion_predicts(target, x)
    finally:
        moved.rename(root)
    assert after[0] == before[0] == version
    np.testing.assert_array_equal(after[1], before[1])
