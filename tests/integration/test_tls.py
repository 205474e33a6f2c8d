"""HTTPS and loopback binds of the local prediction API, through the user's entry point.

The serving application (test_serve_app's, with its fake model loader) runs on the session's
head with the shipped serve_config.yaml's HTTP options (on a free port); then `ray-app cluster
up --tls`, as a user's shell runs it, adds the HTTPS front with a certificate from a `trustme`
CA. Real TLS clients (Python's ssl module): TLS 1.2 and 1.3 answer, plain HTTP and TLS 1.1 are
refused by the server, a client trusting another CA fails. Every socket Serve's HAProxy and the
front listen on is on 127.0.0.1. `ray-app cluster up --no-tls` stops the front at the end.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
import trustme
import yaml

from ray_app.ops.cluster import ClusterState, owns
from tests.conftest import Head, ray_app_command
from tests.integration.test_serve_app import (
    KEY,
    SERVE_CONFIG,
    TICKERS,
    app_config,
    apply,
    fast_serve_env,
    free_port,
    wait_until,
)
from tests.integration.vault import Bao

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Serving:
    port: int
    env: dict[str, str]  # the controller's, with HAProxy's stats and metrics ports


@dataclass(frozen=True)
class Front:
    port: int
    ca: trustme.CA
    state: dict[str, Any]

    def context(self, **versions: ssl.TLSVersion) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        for name, version in versions.items():
            setattr(context, name, version)
        return context


@pytest.fixture(scope="module")
def serving(
    ray_address: str, bao: Bao, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Serving]:
    from ray import serve

    from ray_app.core.settings import Settings
    from ray_app.data.feature_store import build_features
    from ray_app.data.ingest import run_ingest

    root = tmp_path_factory.mktemp("tls") / "data"
    settings = Settings(data_root=str(root), ingest={"source": "sample", "tickers": TICKERS})
    run_ingest(settings)
    build_features(settings)
    port = free_port()
    http_options = {**yaml.safe_load(SERVE_CONFIG.read_text())["http_options"], "port": port}
    env = fast_serve_env()
    serve.start(http_options=http_options, controller_options={"runtime_env": {"env_vars": env}})
    apply(app_config(root, bao))
    wait_until(
        lambda: requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200, 90
    )
    yield Serving(port, env)
    serve.shutdown()


@pytest.fixture(scope="module")
def front(
    serving: Serving, ray_head: Head, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Front]:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    folder = tmp_path_factory.mktemp("tls-cert")
    cert, key = folder / "cert.pem", folder / "key.pem"
    leaf.private_key_pem.write_to_path(str(key))
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    port = free_port()
    env = {
        **ray_head.env,
        "RAY_APP_CLUSTER__TLS__CERTFILE": str(cert),
        "RAY_APP_CLUSTER__TLS__KEYFILE": str(key),
        "RAY_APP_CLUSTER__TLS__PORT": str(port),
        "RAY_APP_CLUSTER__TLS__UPSTREAM_PORT": str(serving.port),
    }
    up = ray_app_command(["cluster", "up", "--tls"], env, plain=True, timeout=120)
    assert up.returncode == 0, up.stderr + up.stdout
    assert f"API over HTTPS: https://localhost:{port}" in up.stdout, up.stdout
    state_file = Path(ray_head.env["RAY_APP_CLUSTER__STATE_DIR"]) / "cluster.json"
    state = json.loads(state_file.read_text())
    yield Front(port, ca, state)
    down = ray_app_command(["cluster", "up", "--no-tls"], env, plain=True, timeout=120)
    assert down.returncode == 0, down.stderr + down.stdout
    assert "HTTPS front stopped" in down.stdout
    assert not _running(state["tls"]["pid"], state["pids"][str(state["tls"]["pid"])])
    assert json.loads(state_file.read_text())["tls"] is None


def _running(pid: int, created: float) -> bool:
    try:
        return bool(psutil.Process(pid).create_time() == created)
    except psutil.NoSuchProcess:
        return False


def https(
    front: Front, method: str, path: str, context: ssl.SSLContext, body: Any = None
) -> tuple[http.client.HTTPResponse, bytes, str | None]:
    """One request over a fresh TLS connection; the answer, its body and the TLS version."""
    conn = http.client.HTTPSConnection("localhost", front.port, context=context, timeout=15)
    try:
        headers = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
        conn.request(method, path, None if body is None else json.dumps(body), headers)
        answer = conn.getresponse()
        data = answer.read()
        assert conn.sock is not None
        return answer, data, conn.sock.version()
    finally:
        conn.close()


def test_the_api_answers_over_tls_1_2_and_1_3(front: Front) -> None:
    tls12 = front.context(maximum_version=ssl.TLSVersion.TLSv1_2)
    answer, _, version = https(front, "GET", "/healthz", tls12)
    assert (answer.status, version) == (200, "TLSv1.2")
    assert answer.headers["Strict-Transport-Security"] == "max-age=31536000"
    answer, data, version = https(
        front, "POST", "/v1/predict", front.context(), {"tickers": ["IBM"]}
    )
    assert (answer.status, version) == (200, "TLSv1.3"), data
    assert [p["ticker"] for p in json.loads(data)["predictions"]] == ["IBM"]


def test_plain_http_is_refused(front: Front) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=15)
    try:
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            conn.request("GET", "/healthz")
            conn.getresponse()
    finally:
        conn.close()


def tls_1_1_client() -> ssl.SSLContext:
    """A client that offers TLS 1.1 at most, with OpenSSL's security level 0 so that it is not
    this side that refuses (TLS 1.1 needs SHA-1, which levels 1 and up forbid)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def handshake(port: int, context: ssl.SSLContext) -> str | None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=15) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as secured,
    ):
        return secured.version()


def test_tls_1_1_is_refused_by_the_server(front: Front) -> None:
    client = tls_1_1_client()
    front.ca.configure_trust(client)
    # The same client gets TLS 1.1 from a server that allows it: the refusal is the front's.
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    front.ca.issue_cert("localhost").configure_cert(server_context)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_context.minimum_version = ssl.TLSVersion.TLSv1_1
    server_context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def serve_one() -> None:
            conn, _ = listener.accept()
            with server_context.wrap_socket(conn, server_side=True) as secured:
                secured.recv(1)

        thread = threading.Thread(target=serve_one, daemon=True)
        thread.start()
        assert handshake(listener.getsockname()[1], client) == "TLSv1.1"
        thread.join(15)
    with pytest.raises(ssl.SSLError) as refused:
        handshake(front.port, client)
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", refused.value


def test_a_client_trusting_another_ca_fails(front: Front) -> None:
    stranger = ssl.create_default_context()
    trustme.CA().configure_trust(stranger)
    with pytest.raises(ssl.SSLCertVerificationError):
        https(front, "GET", "/healthz", stranger)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(front.port, ssl.create_default_context())  # the system's CAs


def listeners(process: psutil.Process) -> set[tuple[str, int]]:
    try:
        return {
            (c.laddr.ip, c.laddr.port)
            for c in process.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        }
    except psutil.NoSuchProcess:
        return set()


def test_every_listener_of_the_ingress_is_on_loopback(
    front: Front, serving: Serving, ray_head: Head
) -> None:
    """Serve's HAProxy (HTTP, stats and metrics ports) and the front listen on 127.0.0.1 only,
    and the HAProxy admin socket is its owner's alone."""
    node = front.state["node_id"]
    config = f"/{node}/haproxy.cfg"
    haproxies = [
        p for p in psutil.process_iter(["cmdline"]) if config in " ".join(p.info["cmdline"] or [])
    ]
    assert haproxies, f"no HAProxy of node {node}"
    bound = set().union(*(listeners(p) for p in haproxies))
    stats = int(serving.env["RAY_SERVE_HAPROXY_STATS_PORT"])
    metrics = int(serving.env["RAY_SERVE_HAPROXY_METRICS_PORT"])
    assert {("127.0.0.1", port) for port in (serving.port, stats, metrics)} <= bound, bound
    assert {ip for ip, _ in bound} == {"127.0.0.1"}, bound
    front_pid = front.state["tls"]["pid"]
    assert listeners(psutil.Process(front_pid)) == {("127.0.0.1", front.port)}
    socket_path = Path(f"/tmp/haproxy-serve/{node}/admin.sock")
    assert oct(socket_path.stat().st_mode & 0o777) == "0o600"
    # Serve's own HTTP servers bind http_options.host too: the replicas' direct ingress and
    # the Python proxy actor. (Their "[::]" sockets are Ray's gRPC servers, core worker and
    # Serve's inter-deployment gRPC, whose address Ray fixes: not HTTP, not this test's.)
    state = ClusterState(**front.state)
    http_servers: dict[str, set[tuple[str, int]]] = {}
    attrs = ["pid", "cmdline", "environ", "create_time"]
    for process in psutil.process_iter(attrs, ad_value=None):
        title = " ".join(process.info["cmdline"] or []).strip()
        serve_actor = title.startswith(("ray::ServeReplica:ray-app:", "ray::ProxyActor"))
        if serve_actor and owns(state, process.info, str(state.raylet_pid)):
            http_servers[title] = {a for a in listeners(process) if "." in a[0]}
    ingress = [a for title, a in http_servers.items() if title.endswith(":Ingress")]
    assert ingress and all(ingress), f"no Ingress replica answering HTTP: {http_servers}"
    assert {ip for a in http_servers.values() for ip, _ in a} == {"127.0.0.1"}, http_servers


def test_the_front_is_a_process_of_the_head(front: Front, ray_head: Head) -> None:
    """`cluster status` shows it, and `cluster down` stops it with the head: it is one of the
    head's daemons."""
    state = ClusterState(**front.state)
    pid = front.state["tls"]["pid"]
    process = psutil.Process(pid)
    info = {"pid": pid, "create_time": process.create_time(), "cmdline": [], "environ": {}}
    assert owns(state, info, None)
    status = ray_app_command(["cluster", "status", "--json"], ray_head.env, plain=True)
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)["tls"]
    assert (shown["url"], shown["alive"]) == (f"https://localhost:{front.port}", True)
