"""Shared fixtures: the real test data in ../shared, and one Ray head per test session."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ray_app.core.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "kaggle-us-stocks"
SHARED_SCHEMAS = REPO.parent / "shared" / "schemas"


@pytest.fixture(scope="session")
def kaggle_dir() -> Path:
    """The real Kaggle-layout bars in ../shared, read in place (never copied)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real test data not found at {SHARED_DATA} (only present in the dev workspace)"
        )
    return SHARED_DATA


def sample_feature_set(root: Path, **sections: Any) -> Settings:
    """Settings over the bundled sample bars (``sections`` override), with the raw data
    ingested and the feature set built: the starting point of every training test."""
    from ray_app.data.feature_store import build_features
    from ray_app.data.ingest import run_ingest

    settings = Settings(data_root=str(root), **{"ingest": {"source": "sample"}, **sections})
    run_ingest(settings)
    build_features(settings)
    return settings


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    return tmp_path / "data"


def pytest_configure(config: pytest.Config) -> None:
    """Token authentication for every Ray client in the session, as on users' clusters.

    Ray reads RAY_AUTH_MODE when it is first imported, so it is set before collection.
    """
    from ray_app.core.settings import ClusterSettings
    from ray_app.ops.cluster import ensure_token

    token = ensure_token(ClusterSettings())
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    os.environ.pop("RAY_ADDRESS", None)


def local_auth() -> dict[str, str]:
    """The ``Authorization`` header of the local admin key that `ray-app cluster up` made for
    the session's heads (what `make run` sends)."""
    from ray_app.core.api_keys import auth_header
    from ray_app.core.settings import ClusterSettings

    path = ClusterSettings().api_key_path.expanduser()
    return auth_header(path.read_text(encoding="utf-8").strip())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Head:
    """The session's Ray head and the environment that reaches it."""

    state: dict[str, str]
    env: dict[str, str]

    @property
    def address(self) -> str:
        return self.state["gcs_address"]

    @property
    def dashboard(self) -> str:
        return self.state["dashboard_url"]


# What a user's plain shell lacks and this session's process has (see pytest_configure).
SESSION_ONLY = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


def plain_shell(env: dict[str, str]) -> dict[str, str]:
    """This process's environment as a user's shell has it: no Ray token or address."""
    return {k: v for k, v in os.environ.items() if k not in SESSION_ONLY} | env


def ray_app_command(
    args: list[str],
    env: dict[str, str],
    cwd: Path | None = None,
    timeout: float = 300,
    *,
    plain: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``ray-app args`` with ``env`` on top of this process's environment, or of a plain
    shell's (``plain``)."""
    return subprocess.run(
        [sys.executable, "-m", "ray_app", *args],
        env=plain_shell(env) if plain else {**os.environ, **env},
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    """One Ray head for the whole session, started as users start it: `ray-app cluster up`.

    Its state file and ports are the session's own, so a user's cluster is left alone.
    """
    state_dir = tmp_path_factory.mktemp("cluster")
    env = {
        "RAY_APP_CLUSTER__STATE_DIR": str(state_dir),
        "RAY_APP_CLUSTER__DASHBOARD_PORT": str(free_port()),
        "RAY_APP_CLUSTER__METRICS_PORT": str(free_port()),
        "RAY_APP_CLUSTER__NUM_CPUS": "2",
        "RAY_APP_DATA_ROOT": str(state_dir / "data"),  # what jobs and Serve replicas share
    }
    started = ray_app_command(["cluster", "up"], env)
    assert started.returncode == 0, started.stderr + started.stdout
    state = json.loads((state_dir / "cluster.json").read_text())
    yield Head(state, {**env, "RAY_ADDRESS": state["gcs_address"]})
    import ray

    ray.shutdown()
    ray_app_command(["cluster", "down"], env)


@pytest.fixture(scope="session")
def ray_address(ray_head: Head) -> str:
    """The head's address, with this test process connected to it."""
    from ray_app.core.settings import Settings
    from ray_app.ops.runtime import connect

    connect(Settings(ray={"address": ray_head.address}))
    return ray_head.address


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end tests run last, and the one that takes the shared head down runs very last."""

    def order(item: pytest.Item) -> tuple[int, int]:
        is_e2e = "tests/e2e/" in item.nodeid
        return (int(is_e2e), int("cluster_down" in item.name))

    items.sort(key=order)
