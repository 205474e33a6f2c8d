"""One real local Ray cluster for the whole integration session.

The cluster is started in this process with ``ray.init`` (2 CPUs, like the dev machine);
command-line tests reach it through ``RAY_ADDRESS`` just as a user's shell would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    import ray

    from ray_app.runtime import connect
    from ray_app.settings import Settings

    os.environ.pop("RAY_ADDRESS", None)
    connect(Settings(ray={"num_cpus": 2}))
    address = ray.get_runtime_context().gcs_address
    yield address
    ray.shutdown()


def run_cli(
    args: list[str],
    address: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run ``ray-app`` as a user would, against the session's cluster."""
    full_env = {**os.environ, "RAY_ADDRESS": address, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ray_app", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
