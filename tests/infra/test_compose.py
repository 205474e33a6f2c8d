"""docker/compose.yaml, the dev stack: valid Compose, every mounted file present, health checks
and start order set, and the services named as monitoring/'s configs expect (no engine here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra import dockerfile, project, tools

pytestmark = pytest.mark.infra

COMPOSE = project.DOCKER / "compose.yaml"
ALERTMANAGER = project.MONITORING / "alertmanager.yml"
SERVICES = {
    "ray-head",
    "ray-worker",
    "mlflow",
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


def test_health_checks_and_start_order(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in compose["services"], f"{name} -> {dependency}"
            assert rule["condition"] == "service_healthy", f"{name} -> {dependency}"
    order = {n: set(s.get("depends_on", {})) for n, s in compose["services"].items()}
    assert {"mlflow", "redis"} <= order["ray-head"] and order["mlflow"] == {"postgres"}
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


def test_secrets_come_from_the_environment(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    for variable in ("RAY_AUTH_TOKEN", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert re.search(rf"\$\{{{variable}:\?", text), (
            f"{variable} must be required, not defaulted"
        )
    assert "docker/.env" in (project.REPO / ".gitignore").read_text()


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
