"""A search tracked by a real `mlflow server` whose backend store is PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from ray_app.data.feature_store import build_features
from ray_app.data.ingest import run_ingest
from ray_app.training.train import load_training_data
from ray_app.training.tune import run_search
from tests.integration.test_train_tune import small_settings

pytestmark = pytest.mark.integration

POSTGRES = "postgresql://postgres@127.0.0.1:5432"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh database per test, so runs from earlier sessions never count."""
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        admin = psycopg2.connect(f"{POSTGRES}/test", connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is required (.ci/run starts it): {exc}")
    admin.autocommit = True
    name = f"ray_app_mlflow_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    yield f"{POSTGRES}/{name}"
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


@pytest.fixture
def mlflow_server(database: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        database.replace("postgresql://", "postgresql+psycopg2://"),
        "--artifacts-destination",
        str(tmp_path / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
        assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
    else:
        pytest.fail("mlflow server did not answer /health within 120 s")
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def test_a_search_against_a_tracking_server_on_postgres(
    ray_address: str, mlflow_server: str, database: str, tmp_path: Path
) -> None:
    settings = small_settings(tmp_path / "data", mlflow={"tracking_uri": mlflow_server})
    settings.tune.num_samples = 2
    settings.train.hparams.epochs = 2
    run_ingest(settings)
    build_features(settings)
    outcome = run_search(settings, load_training_data(settings))
    assert mlflow.get_tracking_uri() == mlflow_server
    children = mlflow.search_runs(
        experiment_names=[settings.mlflow.experiment],
        filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'",
    )
    assert len(children) == 2 and set(children["status"]) == {"FINISHED"}
    import psycopg2

    with psycopg2.connect(database) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM runs")
        assert cursor.fetchone()[0] == 3  # the parent and its two trials, in PostgreSQL
