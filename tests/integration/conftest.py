"""Integration tests run against the session's Ray head (see tests/conftest.py);
command-line tests reach it through ``RAY_ADDRESS`` just as a user's shell would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.vault import Bao, bao_server


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


@pytest.fixture(scope="session")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    """One OpenBao dev server for the session; each test file uses its own secret path."""
    with bao_server(tmp_path_factory.mktemp("bao")) as server:
        yield server
