"""Chaos: the head's GCS is killed while Serve answers. The node dies (there is no GCS fault
tolerance on a local head), and the user's commands recover with no manual step:
`cluster status` names the dead head and its leftovers, other commands fail within seconds,
`cluster up` cleans up and starts a new head, and the pipeline job deploys again.

The head is this module's own (state folder and every port, HAProxy's included), all
traffic is on 127.0.0.1, and every command runs from a plain shell: no RAY_AUTH_MODE, token
path or address exported. The pipeline runs through `make run` itself, pointed at the
test's ports (``DASHBOARD``, ``SERVE_URL``) and smoke configuration (``CONFIG``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ray_app.ops.cluster import ClusterState, head_processes
from tests.conftest import REPO, free_port, plain_shell, ray_app_command
from tests.e2e.support import SmokePipeline, post, smoke_pipeline

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

NODE_DEATH_S = 180  # the raylet gives up on its lost GCS after 20 s (own_head)
RECOVERY_S = 900  # `make run`: cluster up, the pipeline job (ingest to smoke), a prediction
FAIL_FAST_S = 60  # a command refused by a dead head: import time on a busy machine


class Load(threading.Thread):
    """Predictions sent one after another, counted by outcome."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.ok, self.failed = url + "/v1/predict", 0, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                status, _ = post(self.url, {"tickers": ["AAPL"]}, timeout=2)
            except (OSError, ValueError):
                status = 0
            self.ok, self.failed = self.ok + (status == 200), self.failed + (status != 200)
            time.sleep(0.1)

    def stop(self) -> None:
        self.done.set()
        self.join()


@pytest.fixture
def own_head(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Settings of a head of the test's own; it is stopped whatever the test left."""
    env = {
        "RAY_APP_CLUSTER__STATE_DIR": str(tmp_path / "cluster"),
        "RAY_APP_CLUSTER__GCS_PORT": str(free_port()),
        "RAY_APP_CLUSTER__DASHBOARD_PORT": str(free_port()),
        "RAY_APP_CLUSTER__METRICS_PORT": str(free_port()),
        "RAY_APP_CLUSTER__NUM_CPUS": "2",
        "RAY_APP_DATA_ROOT": str(tmp_path / "data"),
        # A raylet gives up on a lost GCS after 60 s by default; the recovery is under test,
        # not that wait, so this head's raylet gives up after 20 s.
        "RAY_gcs_rpc_server_reconnect_timeout_s": "20",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),  # 8404 and 9101 by default
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }
    yield env
    ray_app_command(["cluster", "down"], env, plain=True)


def _state(env: dict[str, str]) -> ClusterState:
    path = Path(env["RAY_APP_CLUSTER__STATE_DIR"]) / "cluster.json"
    return ClusterState(**json.loads(path.read_text()))


def _up(env: dict[str, str]) -> str:
    """`ray-app cluster up` from a plain shell; its stdout."""
    started = ray_app_command(["cluster", "up"], env, plain=True)
    assert started.returncode == 0, started.stderr + started.stdout
    return started.stdout


def _make_run(env: dict[str, str], smoke: SmokePipeline) -> subprocess.CompletedProcess[str]:
    """`make run` from a plain shell, on the test's head and ports, never reinstalling."""
    dashboard = f"http://127.0.0.1:{env['RAY_APP_CLUSTER__DASHBOARD_PORT']}"
    overrides = {"DASHBOARD": dashboard, "SERVE_URL": smoke.url, "CONFIG": smoke.config}
    return subprocess.run(
        [
            "make",
            "-o",
            ".venv/.installed-stamp",
            "run",
            *(f"{k}={v}" for k, v in overrides.items()),
        ],
        cwd=REPO,
        env=plain_shell(env),
        capture_output=True,
        text=True,
        timeout=900,
    )


def _wait_gone(pid: int, limit: float) -> float:
    """Seconds until ``pid`` exits; fails past ``limit``."""
    start = time.monotonic()
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() - start < limit, f"process {pid} still alive after {limit} s"
        time.sleep(1)
    return time.monotonic() - start


def test_a_killed_head_recovers_with_no_manual_step(
    own_head: dict[str, str], tmp_path: Path
) -> None:
    smoke = smoke_pipeline(tmp_path, search=False)  # the recovery is under test, not the search
    _up(own_head)  # as the issue had it: `ray-app cluster up`, then `make run`
    first = _make_run(own_head, smoke)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]

    dead = _state(own_head)
    load = Load(smoke.url)
    load.start()
    time.sleep(2)
    os.kill(dead.gcs_pid, signal.SIGKILL)
    node_died_s = _wait_gone(dead.raylet_pid, NODE_DEATH_S)
    load.stop()

    shown = ray_app_command(["cluster", "status", "--json"], own_head, plain=True)
    report = json.loads(shown.stdout)
    assert shown.returncode == 1 and report["alive"] is False and report["leftovers"], report
    asked = time.monotonic()
    refused = ray_app_command(
        ["ingest", "--source", "sample", "--data-root", str(tmp_path / "other")],
        own_head,
        timeout=FAIL_FAST_S,
        plain=True,
    )
    refused_s = time.monotonic() - asked
    assert refused.returncode == 2 and "is dead" in refused.stderr, refused.stderr

    recovery = time.monotonic()
    second = _make_run(own_head, smoke)
    recovered_s = time.monotonic() - recovery
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    assert "was dead" in second.stdout and '"predictions"' in second.stdout, second.stdout
    # Dagster holds the deployment as made, but nothing answers: the run deploys again.
    assert "deployment: materialized" in second.stdout, second.stdout[-3000:]
    assert "nothing answers at" in second.stdout, second.stdout[-3000:]
    new = _state(own_head)
    status, reply = post(smoke.url + "/v1/predict", {"tickers": ["IBM"]})
    assert status == 200, reply
    rollout = ["rollout", "--serve-config", str(smoke.serve_config), "--address"]
    rollout += [new.dashboard_url, "--challenger-weight", "0.2", "--config", str(smoke.config)]
    rolled = ray_app_command(rollout, own_head, plain=True)
    assert rolled.returncode == 0, rolled.stderr + rolled.stdout
    print(
        f"\nhead recovery: {load.ok} predictions answered and {load.failed} failed after the "
        f"GCS kill; node dead after {node_died_s:.0f} s; {len(report['leftovers'])} leftover "
        f"process(es); a command refused in {refused_s:.1f} s; recovered (`make run`: "
        f"cluster up, the pipeline job, a prediction) in {recovered_s:.0f} s"
    )
    assert load.ok > 0 and recovered_s < RECOVERY_S


def test_down_leaves_nothing_that_makes_ray_wait(own_head: dict[str, str]) -> None:
    _up(own_head)
    state = _state(own_head)
    down = ray_app_command(["cluster", "down"], own_head, plain=True)
    assert down.returncode == 0 and "stopped" in down.stdout, down.stderr
    pointer = Path(state.session_dir).parent / "ray_current_cluster"
    assert not (pointer.exists() and pointer.read_text().strip().endswith(f":{state.port}"))
    assert head_processes(state) == []


def test_a_dead_pointer_starts_a_local_instance(tmp_path: Path) -> None:
    """Ray's pointer to the last cluster names a GCS that is gone and no head of ours is
    recorded: the command runs on an instance of its own instead of retrying for minutes."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # socket paths must be short
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
        env = {"RAY_TMPDIR": str(ray_tmp), "RAY_APP_CLUSTER__STATE_DIR": str(tmp_path / "none")}
        done = ray_app_command(
            ["ingest", "--source", "sample", "--tickers", "AAPL", "--data-root", str(tmp_path)],
            env,
            timeout=300,
            plain=True,
        )
        assert done.returncode == 0, done.stderr + done.stdout
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
