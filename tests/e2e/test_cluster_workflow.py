"""The users' own commands, end to end, on the session's head (`ray-app cluster up`):
`ray job submit` of the pipeline, `serve deploy` through `ray-app rollout`, HTTP calls,
token auth, and `ray-app cluster down` leaving no process behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Head, free_port, local_auth, ray_app_command
from tests.e2e.support import RAY, post, smoke_pipeline, submit_pipeline

pytestmark = pytest.mark.e2e


def get(url: str) -> dict[str, Any]:
    request = urllib.request.Request(url, headers=local_auth())
    with urllib.request.urlopen(request, timeout=10) as answer:
        loaded: dict[str, Any] = json.loads(answer.read())
    return loaded


@pytest.fixture(scope="module")
def deployment(ray_head: Head, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The pipeline submitted as a Ray job with a smoke configuration on the sample data."""
    smoke = smoke_pipeline(tmp_path_factory.mktemp("e2e"))
    submit = submit_pipeline(ray_head.dashboard, smoke.config, {**os.environ, **ray_head.env})
    assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-2000:]
    return {
        "url": smoke.url,
        "serve_config": smoke.serve_config,
        "log": submit.stdout,
        "config": smoke.config,
    }


def test_the_pipeline_job_ends_with_a_deployed_app(deployment: dict[str, Any]) -> None:
    log = deployment["log"]
    for asset in (
        "raw_bars",
        "feature_set",
        "search",
        "model_release",
        "deployment",
        "ab_evidence",
    ):
        assert f"{asset}: materialized" in log, log[-3000:]
    assert "check feature_set.point_in_time: passed" in log, log[-3000:]
    # Before the deploy, each pinned version's table was scored on the cluster: the variants
    # read it back rather than predicting the feature set on their first request.
    assert re.search(r"champion\S* v\d+ on [0-9a-f]+: table \d+ rows in", log), log[-3000:]
    assert "succeeded" in log.lower()


def test_http_predictions(deployment: dict[str, Any]) -> None:
    status, reply = post(deployment["url"] + "/v1/predict", {"tickers": ["IBM", "msft"]})
    assert status == 200, reply
    assert [p["ticker"] for p in reply["predictions"]] == ["IBM", "MSFT"]
    assert reply["model_version"] >= 1 and reply["request_id"]
    status, reply = post(deployment["url"] + "/v1/predict", {"tickers": ["NOPE"]})
    assert status == 404 and "NOPE" in json.dumps(reply)


def test_rollout_under_load_fails_no_request(ray_head: Head, deployment: dict[str, Any]) -> None:
    failures: list[str] = []
    sent = 0
    stop = threading.Event()

    def client() -> None:
        nonlocal sent
        while not stop.is_set():
            status, reply = post(deployment["url"] + "/v1/predict", {"tickers": ["AAPL"]})
            sent += 1
            if status != 200:
                failures.append(f"{status}: {reply}")

    thread = threading.Thread(target=client)
    thread.start()
    try:
        time.sleep(1)
        rolled = ray_app_command(
            [
                "rollout",
                "--serve-config",
                str(deployment["serve_config"]),
                "--challenger-weight",
                "0.1",
                "--address",
                ray_head.dashboard,
                "--config",
                str(deployment["config"]),
            ],
            ray_head.env,
        )
        assert rolled.returncode == 0, rolled.stderr + rolled.stdout
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            weights = {
                v["name"]: v["weight"] for v in get(deployment["url"] + "/v1/models")["variants"]
            }
            if weights.get("challenger") == pytest.approx(0.1):
                break
            time.sleep(1)
        assert weights == {"champion": pytest.approx(0.9), "challenger": pytest.approx(0.1)}
        time.sleep(2)
    finally:
        stop.set()
        thread.join()
    assert sent > 20 and failures == []


@pytest.mark.parametrize("token", ["wrong-token", None])
def test_jobs_need_the_token(ray_head: Head, tmp_path: Path, token: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN")}
    env.update(HOME=str(tmp_path), RAY_AUTH_MODE="token")
    if token:
        env["RAY_AUTH_TOKEN"] = token
    refused = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head.dashboard, "--", "python", "-c", "print(1)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0
    assert "auth" in (refused.stdout + refused.stderr).lower()


def test_cluster_commands_name_the_cause(ray_head: Head, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        env = {
            "RAY_APP_CLUSTER__STATE_DIR": str(tmp_path / "other"),
            "RAY_APP_CLUSTER__DASHBOARD_PORT": str(busy),
        }
        clash = ray_app_command(["cluster", "up"], env)
    assert clash.returncode == 2
    assert f"port {busy} is already taken" in clash.stderr and "DASHBOARD_PORT" in clash.stderr
    again = ray_app_command(["cluster", "up"], ray_head.env)
    assert again.returncode == 0 and "already running" in again.stdout
    shown = ray_app_command(["cluster", "status", "--json"], ray_head.env)
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["dashboard"] == ray_head.dashboard and len(status["nodes"]) == 1
    assert status["resources"]["CPU"] == 2 and status["serve"].get("ray-app") == "RUNNING"
    assert any("jobs/pipeline.py" in job["entrypoint"] for job in status["jobs"])
    dead = ray_app_command(["pipeline"], {"RAY_ADDRESS": f"127.0.0.1:{free_port()}"})
    assert dead.returncode == 2 and "no Ray head answers" in dead.stderr
    wrong = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    wrong["applications"][0]["import_path"] = "ray_app.serving.nope:build_app"
    path = tmp_path / "wrong.yaml"
    path.write_text(yaml.safe_dump(wrong))
    refused = ray_app_command(["rollout", "--serve-config", str(path), "--no-apply"], ray_head.env)
    assert refused.returncode == 2 and "import_path" in refused.stderr


def test_cluster_down_leaves_no_process(ray_head: Head) -> None:
    """Last in the session (see tests/conftest.py): it takes the shared head down."""
    import ray

    from ray_app.ops.cluster import ClusterState, head_processes

    ray.shutdown()  # this process is a driver of the head: leave before it goes
    state = ClusterState(**ray_head.state)  # type: ignore[arg-type]
    assert head_processes(state)
    down = ray_app_command(["cluster", "down"], ray_head.env)
    assert down.returncode == 0, down.stderr
    assert head_processes(state) == []
    assert shutil.which(RAY) is not None
