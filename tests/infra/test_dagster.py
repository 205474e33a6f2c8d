"""The Dagster definitions load and validate as `dagster dev` and the RayCronJob load them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra.project import REPO

pytestmark = pytest.mark.infra


def test_dagster_definitions_validate(tmp_path: Path) -> None:
    dagster = Path(sys.executable).with_name("dagster")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "RAY_APP_CONFIG_FILE": str(REPO / "ray_app" / "configs" / "local.yaml"),
    }
    validated = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "ray_app.orchestration.location"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert validated.returncode == 0, validated.stdout[-3000:] + validated.stderr[-3000:]
    assert "All code locations passed validation" in validated.stderr + validated.stdout
