"""cluster/: KubeRay custom resources against the v1.7.0 CRDs, built-in kinds against Kubernetes."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import validate as k8s_validate
from kubernetes_validate.utils import ValidationError as K8sValidationError

from tests.infra import crd, project

pytestmark = pytest.mark.infra

KUBERNETES_VERSION = project.KUBERNETES_VERSION

# The KubeRay objects applied by hand (the chart's are checked in test_chart/test_kuberay_workloads;
# the Argo CD objects in cluster/argocd/ in test_chart).
MANIFESTS = sorted(project.CLUSTER.glob("*.yaml"))
DOCS = [
    (path, index, doc)
    for path in MANIFESTS
    for index, doc in enumerate(crd.load_yaml_documents(path))
]


def _doc_id(path: Path, index: int, doc: dict[str, Any]) -> str:
    name = doc.get("metadata", {}).get("name", "?")
    return f"{path.name}#{index}:{doc.get('kind')}/{name}"


RAY_DOCS = [
    pytest.param(doc, id=_doc_id(p, i, doc))
    for p, i, doc in DOCS
    if str(doc.get("apiVersion", "")).startswith("ray.io/")
]
BUILTIN_DOCS = [
    pytest.param(doc, id=_doc_id(p, i, doc))
    for p, i, doc in DOCS
    if not str(doc.get("apiVersion", "")).startswith("ray.io/")
]

_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
}


def quantity(value: str | int) -> Decimal:
    """A Kubernetes resource quantity ("500m", "8Gi", 4) as a number."""
    match = _QUANTITY.match(str(value))
    assert match and match.group(2) in _SUFFIX, f"not a quantity: {value!r}"
    return Decimal(match.group(1)) * _SUFFIX[match.group(2)]


def pod_specs(cluster: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    spec = cluster["spec"]
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield f"worker group {group['groupName']}", group["template"]["spec"]


def containers(cluster: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for where, pod in pod_specs(cluster):
        for c in pod.get("initContainers", []) + pod["containers"]:
            yield f"{where}/{c['name']}", c
    autoscaler = cluster["spec"].get("autoscalerOptions")
    if cluster["spec"].get("enableInTreeAutoscaling"):
        assert autoscaler, "autoscaling is on: set autoscalerOptions.resources for its sidecar"
        yield "autoscaler sidecar", autoscaler


def test_manifests_exist() -> None:
    assert (project.CLUSTER / "ray-cluster.yaml") in MANIFESTS
    assert RAY_DOCS, "no ray.io documents found under cluster/"


# --- KubeRay CRDs -------------------------------------------------------------------------


@pytest.mark.parametrize("doc", RAY_DOCS)
def test_custom_resource_matches_its_crd(doc: dict[str, Any], kuberay_crds: Path) -> None:
    errors = crd.validation_errors(doc)
    assert not errors, "\n".join(errors)


def test_validator_accepts_a_minimal_cluster(kuberay_crds: Path) -> None:
    minimal = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "mini"},
        "spec": {
            "headGroupSpec": {
                "rayStartParams": {},
                "template": {"spec": {"containers": [{"name": "ray-head", "image": "r:1"}]}},
            }
        },
    }
    assert crd.validation_errors(minimal) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(
            lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(
                {"resourcez": {}}
            ),
            "'resourcez' was unexpected",
            id="unknown-container-field",
        ),
        pytest.param(
            lambda d: d["spec"].update({"enableInTreeAutoscalling": True}),
            "'enableInTreeAutoscalling' was unexpected",
            id="unknown-spec-field",
        ),
        pytest.param(
            lambda d: d["metadata"].update({"label": {"a": "b"}}),
            "'label' was unexpected",
            id="unknown-metadata-field",
        ),
        pytest.param(
            lambda d: d["spec"]["workerGroupSpecs"][0].update({"maxReplicas": "8"}),
            "'8' is not of type 'integer'",
            id="string-for-integer",
        ),
        pytest.param(
            lambda d: d["spec"]["workerGroupSpecs"][0].update({"maxReplicas": 2**31}),
            "is greater than the maximum",
            id="int32-overflow",
        ),
        pytest.param(
            lambda d: d["spec"]["authOptions"].update({"mode": "tokens"}),
            "'tokens' is not one of ['disabled', 'token']",
            id="bad-enum",
        ),
        pytest.param(
            lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0][
                "ports"
            ].append({"containerPort": 8265, "name": "dashboard2"}),
            "share the list-map key",
            id="duplicate-container-port",
        ),
        pytest.param(
            lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"][
                "limits"
            ].update({"memory": ["8Gi"]}),
            "is not valid under any of the given schemas",
            id="int-or-string",
        ),
        pytest.param(
            lambda d: d.update({"apiVersion": "ray.io/v2"}),
            "has no version 'v2'",
            id="unknown-version",
        ),
    ],
)
def test_validator_rejects(
    mutate: Any, expected: str, ray_cluster: dict[str, Any], kuberay_crds: Path
) -> None:
    doc = copy.deepcopy(ray_cluster)
    mutate(doc)
    try:
        errors = crd.validation_errors(doc)
    except ValueError as exc:
        errors = [str(exc)]
    assert any(expected in e for e in errors), f"expected {expected!r} in {errors}"


# --- Built-in kinds ---------------------------------------------------------------------------


@pytest.mark.parametrize("doc", BUILTIN_DOCS)
def test_builtin_kind_is_valid_kubernetes(doc: dict[str, Any]) -> None:
    try:
        k8s_validate(doc, KUBERNETES_VERSION, strict=True)
    except K8sValidationError as exc:
        pytest.fail(f"{exc.json_path}: {exc.message}")


def test_builtin_validation_is_strict() -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 8000, "targetPortt": 8000}]},
    }
    with pytest.raises(K8sValidationError, match="targetPortt"):
        k8s_validate(service, KUBERNETES_VERSION, strict=True)


# --- What the platform needs of its RayCluster -----------------------------------------------


def test_ray_version_matches_pyproject(ray_cluster: dict[str, Any], ray_version: str) -> None:
    assert ray_cluster["spec"]["rayVersion"] == ray_version


def test_images_carry_the_pinned_ray_version(ray_cluster: dict[str, Any], ray_version: str) -> None:
    for where, pod in pod_specs(ray_cluster):
        image = pod["containers"][0]["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{where}: image {image!r} has no tag"
        assert tag != "latest", f"{where}: image {image!r} uses :latest"
        assert tag == ray_version or tag.startswith(f"{ray_version}-"), (
            f"{where}: image tag {tag!r} is not Ray {ray_version}"
        )
        assert repo.endswith("/ray-app"), f"{where}: {image!r} is not the ray-app image"


def test_every_container_requests_and_limits_cpu_and_memory(
    ray_cluster: dict[str, Any],
) -> None:
    for where, container in containers(ray_cluster):
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert resource in resources.get(kind, {}), f"{where}: no {kind}.{resource}"
        for resource, limit in resources["limits"].items():
            request = resources["requests"].get(resource)
            if request is not None:
                assert quantity(request) <= quantity(limit), f"{where}: {resource} request > limit"


def test_autoscaling_bounds(ray_cluster: dict[str, Any]) -> None:
    spec = ray_cluster["spec"]
    assert spec.get("enableInTreeAutoscaling") is True
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    for name, g in groups.items():
        assert 0 <= g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"], name
    cpu = groups["cpu"]
    assert cpu["maxReplicas"] > cpu["minReplicas"], "the CPU group must be able to scale"


def test_gpu_group_is_optional_and_asks_for_gpus(ray_cluster: dict[str, Any]) -> None:
    groups = {g["groupName"]: g for g in ray_cluster["spec"]["workerGroupSpecs"]}
    gpu = groups["gpu"]
    assert gpu["minReplicas"] == 0 and gpu.get("replicas", 0) == 0
    container = gpu["template"]["spec"]["containers"][0]
    assert quantity(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    tolerations = gpu["template"]["spec"].get("tolerations", [])
    assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations)


def test_token_authentication(ray_cluster: dict[str, Any]) -> None:
    auth = ray_cluster["spec"]["authOptions"]
    assert auth["mode"] == "token"
    assert auth.get("secretName"), "name the token Secret so clients can read the token"


def test_gcs_fault_tolerance_uses_external_redis_with_a_secret_password(
    ray_cluster: dict[str, Any],
) -> None:
    ft = ray_cluster["spec"]["gcsFaultToleranceOptions"]
    assert re.match(r"^(rediss?://)?[a-z0-9.-]+:\d+$", ft["redisAddress"]), ft["redisAddress"]
    ref = ft["redisPassword"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] and ref["key"]
    assert "value" not in ft["redisPassword"], "no plain-text Redis password in the manifest"
    # The deprecated annotation and the field may not be combined.
    assert "ray.io/ft-enabled" not in ray_cluster["metadata"].get("annotations", {})


def _ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def test_head_exposes_gcs_dashboard_client_serve_and_metrics(ray_cluster: dict[str, Any]) -> None:
    head = ray_cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert _ports(head) == {
        "gcs-server": 6379,
        "dashboard": 8265,
        "client": 10001,
        "serve": 8000,
        "metrics": 8080,
    }


def test_workers_expose_metrics(ray_cluster: dict[str, Any]) -> None:
    for group in ray_cluster["spec"]["workerGroupSpecs"]:
        container = group["template"]["spec"]["containers"][0]
        assert _ports(container).get("metrics") == 8080, group["groupName"]


def test_pods_run_as_the_images_non_root_user(ray_cluster: dict[str, Any]) -> None:
    for where, pod in pod_specs(ray_cluster):
        ctx = pod.get("securityContext", {})
        assert ctx.get("runAsNonRoot") is True, where
        assert ctx.get("runAsUser") == 1000, f"{where}: the Ray image's user is uid 1000"


def test_serve_service_selects_this_cluster(ray_cluster: dict[str, Any]) -> None:
    services = [d for _, _, d in DOCS if d.get("kind") == "Service"]
    assert services, "cluster/ray-cluster.yaml should carry the Serve Service"
    for svc in services:
        assert svc["metadata"]["namespace"] == ray_cluster["metadata"]["namespace"]
        selector = svc["spec"]["selector"]
        assert selector.get("ray.io/cluster") == ray_cluster["metadata"]["name"]
        assert {p["targetPort"] for p in svc["spec"]["ports"]} == {8000}


def test_serve_listens_on_the_pods_address(ray_cluster: dict[str, Any]) -> None:
    """The Serve Service spans every node, so a deploy that starts from serve_config.yaml
    (127.0.0.1, the local value) must be overlaid with the pod's address on each Ray node."""
    from ray_app.core.settings import Settings

    for where, pod in pod_specs(ray_cluster):
        for container in pod["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env.get("RAY_APP_PIPELINE__SERVE_HOST") == "0.0.0.0", where
    assert Settings(pipeline={"serve_host": "0.0.0.0"}).pipeline.serve_host == "0.0.0.0"


def test_manifest_yaml_has_no_duplicate_keys() -> None:
    """PyYAML keeps the last of two equal keys silently; the API server would too."""

    class Strict(yaml.SafeLoader):
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        keys = [loader.construct_object(k) for k, _ in node.value]
        dupes = {k for k in keys if keys.count(k) > 1}
        assert not dupes, f"duplicate keys {dupes} at line {node.start_mark.line + 1}"
        return loader.construct_mapping(node)

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    for path in MANIFESTS:
        with path.open() as fh:
            list(yaml.load_all(fh, Loader=Strict))
