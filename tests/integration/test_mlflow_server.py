"""A search tracked by a real `mlflow server` whose backend store is PostgreSQL, behind
MLflow's basic-auth app: the client authenticates with a password from the secrets backend."""

from __future__ import annotations

import base64
import json
import os
import secrets as token_source
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from ray_app.core.secrets import SecretError, Secrets, open_secrets
from ray_app.core.settings import Settings
from ray_app.data.feature_store import build_features
from ray_app.data.ingest import run_ingest
from ray_app.registry.tracking import TrackingError, connect_mlflow
from ray_app.training.train import load_training_data
from ray_app.training.tune import run_search
from tests.integration.test_train_tune import small_settings

pytestmark = pytest.mark.integration

POSTGRES = "postgresql://postgres@127.0.0.1:5432"
ADMIN = "admin"
APP_USER = "ray-app"
# The server's own secrets, which the test (running the server) keeps in the secrets backend
# too: the bootstrap admin password and the key that signs CSRF tokens.
ADMIN_PASSWORD = "mlflow_admin_password"
FLASK_KEY = "mlflow_flask_secret_key"


@dataclass(frozen=True)
class Server:
    url: str
    secrets_dir: Path


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
def secrets_dir(tmp_path: Path) -> Path:
    """The file backend's folder, laid out as a mounted Kubernetes Secret: random passwords
    (MLflow wants 12 characters or more)."""
    folder = tmp_path / "secrets"
    folder.mkdir(mode=0o700)
    for name in (ADMIN_PASSWORD, FLASK_KEY, "mlflow_password"):
        (folder / name).write_text(token_source.token_urlsafe(24))
    return folder


def prod_secrets(folder: Path) -> Secrets:
    return open_secrets(Settings(environment="prod", secrets={"backend": "file", "dir": folder}))


def basic_auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def create_user(url: str, admin_password: str, user: str, password: str) -> None:
    """The app's own user, made by the admin: the app never holds the admin password."""
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/users/create",
        data=json.dumps({"username": user, "password": password}).encode(),
        headers={"Content-Type": "application/json", **basic_auth(ADMIN, admin_password)},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as answer:  # the first request is slow
        assert answer.status == 200


def auth_config(database: str, folder: Path) -> Path:
    """MLflow's auth config: users in the same PostgreSQL database (own tables, own alembic
    version table); the admin password comes from the environment, not this file."""
    path = folder / "basic_auth.ini"
    path.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {database}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # One PBKDF2 check per user and minute, not per request: Tune logs many metrics.
        "auth_cache_ttl_seconds = 60\n"
    )
    return path


@pytest.fixture
def mlflow_server(database: str, secrets_dir: Path, tmp_path: Path) -> Iterator[Server]:
    secrets = prod_secrets(secrets_dir)
    admin_password = secrets.get(ADMIN_PASSWORD).get_secret_value()
    store = database.replace("postgresql://", "postgresql+psycopg2://")
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config(store, tmp_path)),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.get(FLASK_KEY).get_secret_value(),
    }
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        store,
        "--artifacts-destination",
        str(tmp_path / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--app-name",
        "basic-auth",
    ]
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, server, log_path)
        create_user(
            url, admin_password, APP_USER, secrets.get("mlflow_password").get_secret_value()
        )
        yield Server(url, secrets_dir)
    finally:
        stop(server)


def wait_for_health(url: str, server: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
        assert server.poll() is None, log_path.read_text()[-2000:]
    pytest.fail("mlflow server did not answer /health within 120 s")


def stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL: uvicorn's graceful shutdown waits for clients' keep-alive
    connections, which the test's MLflow client may still hold."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


@pytest.fixture
def mlflow_client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Restore the variables ``connect_mlflow`` sets, so no later test inherits credentials;
    and a patient client, as password checks make a busy test machine's server slower."""
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")


def test_a_search_against_a_tracking_server_on_postgres(
    ray_address: str, mlflow_server: Server, database: str, tmp_path: Path, mlflow_client_env: None
) -> None:
    url = mlflow_server.url
    with pytest.raises(urllib.error.HTTPError) as refused:  # no credentials: 401
        urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1")
    assert refused.value.code == 401
    settings = small_settings(
        tmp_path / "data",
        environment="prod",
        mlflow={"tracking_uri": url, "username": APP_USER},
        secrets={"backend": "file", "dir": mlflow_server.secrets_dir},
    )
    settings.tune.num_samples = 2
    settings.train.hparams["epochs"] = 2
    run_ingest(settings)
    build_features(settings)
    outcome = run_search(settings, load_training_data(settings))
    assert mlflow.get_tracking_uri() == url
    children = mlflow.search_runs(
        experiment_names=[settings.mlflow.experiment],
        filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'",
    )
    assert len(children) == 2 and set(children["status"]) == {"FINISHED"}
    import psycopg2

    with psycopg2.connect(database) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM runs")
        assert cursor.fetchone()[0] == 3  # the parent and its two trials, in PostgreSQL


def test_a_wrong_password_is_refused_without_showing_it(
    mlflow_server: Server, tmp_path: Path, mlflow_client_env: None
) -> None:
    wrong = token_source.token_urlsafe(24)
    (mlflow_server.secrets_dir / "mlflow_password").write_text(wrong)
    settings = small_settings(
        tmp_path / "data",
        mlflow={"tracking_uri": mlflow_server.url, "username": APP_USER},
        secrets={"backend": "file", "dir": mlflow_server.secrets_dir},
    )
    with pytest.raises(TrackingError, match="401") as info:
        connect_mlflow(settings)
    assert wrong not in str(info.value)


def test_mlflows_old_default_admin_password_is_refused_outside_dev(secrets_dir: Path) -> None:
    (secrets_dir / ADMIN_PASSWORD).write_text("password1234")
    with pytest.raises(SecretError, match=f"secret {ADMIN_PASSWORD} .* refused outside"):
        prod_secrets(secrets_dir).get(ADMIN_PASSWORD)


def chart_uvicorn_opts(tls_dir: Path) -> str:
    """The ``--uvicorn-opts`` the chart's MLflow container runs with, its certificate folder
    (the mounted Secret) replaced by ``tls_dir``."""
    import shlex

    from tests.infra import chart

    (deployment,) = chart.find("Deployment", name="mlflow")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][0].replace("\\\n", " ")
    words = shlex.split(script.split("exec mlflow server", 1)[1])
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
    return words[words.index("--uvicorn-opts") + 1].replace(mount["mountPath"], str(tls_dir))


def test_a_client_reaches_the_server_over_tls_with_the_charts_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart's server TLS options on a real `mlflow server` (SQLite store): a client that
    trusts the CA through MLFLOW_TRACKING_SERVER_CERT_PATH (as the Ray pods do) works, one
    that does not is refused, and plain HTTP gets no answer."""
    import trustme
    from mlflow.exceptions import MlflowException

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    leaf.private_key_pem.write_to_path(str(tls_dir / "tls.key"))
    (tls_dir / "tls.crt").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination",
        str(tmp_path / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--uvicorn-opts",
        chart_uvicorn_opts(tls_dir),
    ]
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"https://localhost:{port}"
    try:
        deadline = time.monotonic() + 300  # importing MLflow takes minutes on a busy machine
        context = ssl.create_default_context()
        ca.configure_trust(context)
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2, context=context) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert server.poll() is None, log_path.read_text()[-2000:]
                assert time.monotonic() < deadline, "no HTTPS answer within 300 s"
                time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(tmp_path / "ca.crt"))
        client = mlflow.MlflowClient(tracking_uri=url)
        experiment = client.create_experiment(f"tls-{uuid.uuid4().hex[:8]}")
        assert client.get_experiment(experiment).experiment_id == experiment
        monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH")
        with pytest.raises(MlflowException, match=r"(?i)certificate|ssl"):
            mlflow.MlflowClient(tracking_uri=url).get_experiment(experiment)
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        stop(server)
