"""docker/compose.yaml, the dev stack: valid Compose, every mounted file present, health checks
and start order set, secure by default (secrets as files, keys asked, MLflow's basic-auth app,
Redis with a password), and the services named as monitoring/'s configs expect (no engine
here: the stack's scripts run with stand-ins)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from tests.infra import dockerfile, project, tools
from tests.infra.test_chart import mlflow_auth_config_reader

pytestmark = pytest.mark.infra

COMPOSE = project.DOCKER / "compose.yaml"
MAKE_SECRETS = project.DOCKER / "make-secrets.sh"
MLFLOW_SERVER = project.DOCKER / "mlflow-server.sh"
ALERTMANAGER = project.MONITORING / "alertmanager.yml"
SERVICES = {
    "ray-head",
    "ray-worker",
    "mlflow",
    "mlflow-user",
    "postgres",
    "redis",
    "prometheus",
    "alertmanager",
    "grafana",
}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE)


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of every volume entry, short or long syntax."""
    found = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source, _, rest = entry.partition(":")
            found.append((source, rest.split(":")[0]))
        else:
            found.append((str(entry.get("source", "")), entry["target"]))
    return found


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def missing_bind_mounts(doc: dict[str, Any], base: Path) -> list[str]:
    """Host paths the services mount that do not exist (relative to the compose file)."""
    return [
        f"{name}: {source}"
        for name, service in doc.get("services", {}).items()
        for source, _ in mounts(service)
        if is_bind(source) and not (base / source).exists()
    ]


def test_compose_schema() -> None:
    result = tools.check_jsonschema("vendor.compose-spec", COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  web:\n    image: nginx:1.27\n    healthcheck: yes-please\n")
    result = tools.check_jsonschema("vendor.compose-spec", bad)
    assert result.returncode != 0


def test_the_stack(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


def test_every_mounted_file_exists(compose: dict[str, Any]) -> None:
    binds = [s for svc in compose["services"].values() for s, _ in mounts(svc) if is_bind(s)]
    assert any("monitoring/prometheus" in s for s in binds)
    assert not missing_bind_mounts(compose, COMPOSE.parent)


def test_missing_mounts_are_found(tmp_path: Path) -> None:
    doc = {"services": {"p": {"volumes": ["../nope.yml:/etc/x:ro", "named:/data"]}}}
    assert missing_bind_mounts(doc, tmp_path) == ["p: ../nope.yml"]


def test_named_volumes_hold_data_artifacts_and_logs(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used = {s for svc in compose["services"].values() for s, _ in mounts(svc) if not is_bind(s)}
    assert used == declared, "every named volume declared and used"
    targets = {name: dict(mounts(svc)) for name, svc in compose["services"].items()}
    assert targets["ray-head"]["data"] == targets["ray-worker"]["data"], "one shared data root"
    assert "/tmp/ray" in targets["ray-head"].values(), "Ray's logs"
    assert "mlflow-artifacts" in targets["mlflow"]


def is_one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart") == "no"


def test_health_checks_and_start_order(compose: dict[str, Any]) -> None:
    """Every service that keeps running has a health check and whoever needs it waits for it
    to be healthy; a one-shot (mlflow-user) is waited for until it has succeeded."""
    services = compose["services"]
    for name, service in services.items():
        check = service.get("healthcheck")
        assert is_one_shot(service) or (check and check["test"][0] in ("CMD", "CMD-SHELL")), name
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} -> {dependency}"
            wanted = (
                "service_completed_successfully"
                if is_one_shot(services[dependency])
                else "service_healthy"
            )
            assert rule["condition"] == wanted, f"{name} -> {dependency}"
    order = {n: set(s.get("depends_on", {})) for n, s in services.items()}
    assert {"mlflow-user", "redis"} <= order["ray-head"] and order["mlflow"] == {"postgres"}
    assert order["mlflow-user"] == {"mlflow"}
    assert order["ray-worker"] == {"ray-head"} and order["grafana"] == {"prometheus"}


def test_images_are_pinned_or_built_from_the_dockerfile(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            build = service["build"]
            assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == (
                dockerfile.DOCKERFILE
            )
            assert build["target"] in dockerfile.targets()
            continue
        image = service["image"]
        assert re.search(r":[\w][\w.-]*$", image) and not image.endswith(":latest"), name


def test_ports_are_published_on_localhost_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_serve_listens_on_the_containers_address(compose: dict[str, Any]) -> None:
    """The head publishes Serve's port, so Serve must listen on the container's address: the
    deploy step's overlay (pipeline.serve_host), serve_config.yaml keeping 127.0.0.1."""
    from ray_app.core.settings import Settings

    head = compose["services"]["ray-head"]
    assert any(str(p).endswith(":8000") for p in head["ports"])
    env = head["environment"]
    assert env["RAY_APP_PIPELINE__SERVE_HOST"] == "0.0.0.0"
    assert Settings(pipeline={"serve_host": env["RAY_APP_PIPELINE__SERVE_HOST"]})


SECRET_WORDS = re.compile(r"PASSWORD|TOKEN|SECRET_KEY|_KEY$")


def test_secrets_are_files_never_values(compose: dict[str, Any]) -> None:
    """Every password, token and key reaches a container as a Compose secret (a file under
    /run/secrets, made by make-secrets.sh into the gitignored docker/secrets/): no variable
    carries one, nothing is interpolated, and every secret a service names is declared."""
    declared = compose["secrets"]
    assert all(spec == {"file": f"./secrets/{name}"} for name, spec in declared.items())
    assert "${" not in COMPOSE.read_text()
    for name, service in compose["services"].items():
        assert set(service.get("secrets", [])) <= set(declared), name
        for variable, value in service.get("environment", {}).items():
            if SECRET_WORDS.search(variable):
                assert str(value).startswith("/run/secrets/"), f"{name}: {variable}"
    assert "docker/secrets/" in (project.REPO / ".gitignore").read_text()


def ray_settings(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """ray-app's settings in the Ray nodes' environment."""
    from ray_app.core.settings import Settings

    for name in list(os.environ):
        if name.startswith("RAY_APP_"):
            monkeypatch.delenv(name)
    for variable, value in compose["services"]["ray-head"]["environment"].items():
        monkeypatch.setenv(variable, str(value))
    return Settings()


def test_the_ray_nodes_serve_a_secure_api(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API asks for keys (serve_config.yaml's auth), whose hashes the nodes read, with the
    file backend, from their secrets; the rate limit is counted in the stack's Redis, which
    asks for the password the nodes hold; MLflow is reached as its own user; placeholders are
    refused (environment prod)."""
    from ray_app.core.secrets import API_CLIENT_KEY, API_KEY_HASHES, MLFLOW_PASSWORD, REDIS_PASSWORD

    settings = ray_settings(compose, monkeypatch)
    services = compose["services"]
    assert settings.environment == "prod"
    assert (settings.secrets.backend, str(settings.secrets.dir)) == ("file", "/run/secrets")
    assert settings.api.rate_limit_redis_url.startswith("redis://redis:6379/")
    assert settings.online.redis_url.startswith("redis://redis:6379/")
    assert (
        settings.mlflow.username
        == services["mlflow-user"]["environment"]["RAY_APP_MLFLOW__USERNAME"]
    )
    needed = {API_KEY_HASHES, API_CLIENT_KEY, MLFLOW_PASSWORD, REDIS_PASSWORD}
    for node in ("ray-head", "ray-worker"):
        assert needed <= set(services[node]["secrets"]), node
    assert services["ray-worker"]["environment"] == services["ray-head"]["environment"]
    auth = yaml.safe_load((project.REPO / "serve_config.yaml").read_text())
    assert auth["applications"][0]["args"]["auth"]["mode"] == "keys"
    redis = services["redis"]
    assert "--requirepass" in " ".join(redis["command"]) and "redis_password" in redis["secrets"]
    assert "REDISCLI_AUTH" in redis["healthcheck"]["test"][1]


def make_secrets(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(MAKE_SECRETS), str(folder)], capture_output=True, text=True, check=False
    )


def test_make_secrets_makes_every_secret_once_and_keys_with_their_roles(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """Every declared secret, random and no placeholder, readable by the Ray nodes' file
    backend in prod; your key is admin, the stack's own operator; a second run keeps them."""
    from ray_app.core.api_keys import ApiKeys, Role
    from ray_app.core.secrets import PLACEHOLDERS, open_secrets
    from ray_app.core.settings import Settings

    folder = tmp_path / "secrets"
    done = make_secrets(folder)
    assert done.returncode == 0, done.stderr
    values = {name: (folder / name).read_text().strip() for name in compose["secrets"]}
    assert not set(values.values()) & PLACEHOLDERS and len(set(values.values())) == len(values)
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert oct((folder / "local_api_key").stat().st_mode & 0o777) == "0o600"
    secrets = open_secrets(Settings(environment="prod", secrets={"backend": "file", "dir": folder}))
    for name in compose["services"]["ray-head"]["secrets"]:
        assert secrets.get(name).get_secret_value() == values[name]
    keys = ApiKeys(secrets)
    mine = keys.match((folder / "local_api_key").read_text().strip())
    own = keys.match(values["api_client_key"])
    assert mine is not None and (mine.key_id, mine.role) == ("local", Role.admin)
    assert own is not None and (own.key_id, own.role) == ("pipeline", Role.operator)
    assert make_secrets(folder).returncode == 0
    assert {name: (folder / name).read_text().strip() for name in compose["secrets"]} == values


def run_mlflow_server(
    tmp_path: Path, admin_password: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """mlflow-server.sh with secrets in ``tmp_path`` and a stand-in `mlflow` that writes its
    arguments and the environment it got; that record's path."""
    secrets = tmp_path / "secrets"
    assert make_secrets(secrets).returncode == 0
    (secrets / "mlflow_admin_password").write_text(admin_password)
    script = MLFLOW_SERVER.read_text()
    script = script.replace("/run/secrets", str(secrets)).replace(
        "/tmp/mlflow", str(tmp_path / "conf")
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mlflow").write_text('#!/bin/sh\n{ echo "$@"; env; } > "$RECORD"\n')
    (bin_dir / "mlflow").chmod(0o755)
    record = tmp_path / "record"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RECORD": str(record)}
    done = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, check=False
    )
    return done, record


def test_mlflow_runs_basic_auth_with_its_secrets_from_files(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """The stack's MLflow runs the script it mounts: MLflow's basic-auth app, the store URI
    (with PostgreSQL's password) in MLflow's environment, not its arguments, and an auth
    config MLflow reads."""
    service = compose["services"]["mlflow"]
    (script_target,) = [t for s, t in mounts(service) if s == "./mlflow-server.sh"]
    assert service["command"] == ["bash", script_target]
    done, record = run_mlflow_server(tmp_path, "a-long-admin-passphrase")
    assert done.returncode == 0, done.stderr
    args, *env_lines = record.read_text().splitlines()
    assert args.split()[:3] == ["server", "--app-name", "basic-auth"]
    env = dict(line.split("=", 1) for line in env_lines if "=" in line)
    postgres = (tmp_path / "secrets" / "postgres_password").read_text().strip()
    assert postgres not in args and postgres in env["MLFLOW_BACKEND_STORE_URI"]
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "a-long-admin-passphrase"
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = env["MLFLOW_AUTH_CONFIG_PATH"]
    try:
        config = mlflow_auth_config_reader()()
    finally:
        del os.environ["MLFLOW_AUTH_CONFIG_PATH"]
    assert config.database_uri == env["MLFLOW_BACKEND_STORE_URI"]
    assert (config.admin_username, config.default_permission) == ("admin", "READ")


@pytest.mark.parametrize("password", ["password1234", "too-short"])
def test_mlflow_refuses_the_old_default_or_a_short_admin_password(
    tmp_path: Path, password: str
) -> None:
    done, record = run_mlflow_server(tmp_path, password)
    assert done.returncode == 1 and not record.exists()
    assert "refused: secret mlflow_admin_password" in done.stderr
    assert "too-short" not in done.stderr and not (tmp_path / "conf").exists()


class FakeMlflowUsers(BaseHTTPRequestHandler):
    """MLflow's user endpoints: ``existing`` users can only have their password updated."""

    existing: ClassVar[set[str]] = set()
    calls: ClassVar[list[tuple[str, str, str, dict[str, str]]]] = []

    def _answer(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls.append((self.command, self.path, self.headers["Authorization"], body))
        exists = body["username"] in self.existing
        status = 400 if self.path.endswith("/create") and exists else 200
        self.existing.add(body["username"])
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PATCH = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_mlflow() -> Iterator[str]:
    FakeMlflowUsers.existing, FakeMlflowUsers.calls = set(), []
    server = HTTPServer(("127.0.0.1", 0), FakeMlflowUsers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_nodes_mlflow_user_is_made_by_the_admin_then_rekeyed(
    compose: dict[str, Any], fake_mlflow: str, tmp_path: Path
) -> None:
    """mlflow-user creates the nodes' user with its secret password as the admin, and sets the
    password of a user that exists (after a rotation); the nodes never get the admin's."""
    import base64

    service = compose["services"]["mlflow-user"]
    (script_target,) = [t for s, t in mounts(service) if s == "./mlflow_user.py"]
    assert service["command"] == ["python", script_target]
    assert set(service["secrets"]) == {"mlflow_admin_password", "mlflow_password"}
    assert "mlflow_admin_password" not in compose["services"]["ray-head"]["secrets"]
    secrets = tmp_path / "secrets"
    assert make_secrets(secrets).returncode == 0
    env = {
        **os.environ,
        "MLFLOW_URL": fake_mlflow,
        "SECRETS_DIR": str(secrets),
        "RAY_APP_MLFLOW__USERNAME": service["environment"]["RAY_APP_MLFLOW__USERNAME"],
    }
    script = [sys.executable, str(project.DOCKER / "mlflow_user.py")]
    first = subprocess.run(script, env=env, capture_output=True, text=True, check=False)
    again = subprocess.run(script, env=env, capture_output=True, text=True, check=False)
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    assert first.stderr.endswith("created\n") and again.stderr.endswith("password set\n")
    admin = (secrets / "mlflow_admin_password").read_text().strip()
    basic = "Basic " + base64.b64encode(f"admin:{admin}".encode()).decode()
    password = (secrets / "mlflow_password").read_text().strip()
    assert [(c[0], c[1], c[2]) for c in FakeMlflowUsers.calls] == [
        ("POST", "/api/2.0/mlflow/users/create", basic),
        ("POST", "/api/2.0/mlflow/users/create", basic),
        ("PATCH", "/api/2.0/mlflow/users/update-password", basic),
    ]
    assert all(c[3] == {"username": "ray-app", "password": password} for c in FakeMlflowUsers.calls)


# --- the repository's monitoring configs, provisioned as they expect --------------------------


def mount_of(service: dict[str, Any], host_path: Path) -> str:
    for source, target in mounts(service):
        if is_bind(source) and (COMPOSE.parent / source).resolve() == host_path.resolve():
            return target
    raise AssertionError(f"{host_path} is not mounted")


def test_prometheus_finds_ray_and_alertmanager(compose: dict[str, Any]) -> None:
    services = compose["services"]
    config_dir = mount_of(services["prometheus"], project.MONITORING / "prometheus")
    assert f"--config.file={config_dir}/prometheus.yml" in services["prometheus"]["command"]
    config = load(project.MONITORING / "prometheus" / "prometheus.yml")
    (targets,) = [
        c["targets"] for a in config["alerting"]["alertmanagers"] for c in a["static_configs"]
    ]
    assert targets == ["alertmanager:9093"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (sd_file,) = jobs["ray"]["file_sd_configs"][0]["files"]
    head_logs = dict(mounts(services["ray-head"]))
    prom = dict(mounts(services["prometheus"]))
    volume = next(v for v, target in head_logs.items() if sd_file.startswith(target + "/"))
    assert sd_file.startswith(prom[volume] + "/"), "Prometheus reads the head's Ray folder"
    for head in jobs["ray-head"]["static_configs"][0]["targets"]:
        host, _, port = head.partition(":")
        assert host in services["ray-head"]["networks"]["default"]["aliases"]
        assert f"--metrics-export-port={port}" in services["ray-head"]["command"]


def test_grafana_is_provisioned_with_the_dashboards(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    grafana_dir = project.MONITORING / "grafana"
    assert mount_of(grafana, grafana_dir / "provisioning") == "/etc/grafana/provisioning"
    provider = load(grafana_dir / "provisioning" / "dashboards" / "ray-app.yml")
    (path,) = [p["options"]["path"] for p in provider["providers"]]
    assert mount_of(grafana, grafana_dir) == path
    (source,) = load(grafana_dir / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert source["url"] == "http://prometheus:9090"


def test_alertmanager_mounts_its_config(compose: dict[str, Any]) -> None:
    service = compose["services"]["alertmanager"]
    target = mount_of(service, ALERTMANAGER)
    assert f"--config.file={target}" in service["command"]


def test_amtool_accepts_the_alertmanager_config() -> None:
    amtool = tools.require("amtool", "apt-get install prometheus-alertmanager; .ci/run does")
    result = tools.run([amtool, "check-config", str(ALERTMANAGER)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_refuses_a_route_to_an_unknown_receiver(tmp_path: Path) -> None:
    amtool = tools.require("amtool", "apt-get install prometheus-alertmanager; .ci/run does")
    bad = tmp_path / "alertmanager.yml"
    bad.write_text(ALERTMANAGER.read_text().replace("receiver: critical", "receiver: nobody", 1))
    result = tools.run([amtool, "check-config", str(bad)])
    assert result.returncode != 0
    assert "nobody" in result.stdout + result.stderr
