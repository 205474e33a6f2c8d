"""The RayJob (cluster/), the RayCronJob and RayService (charts/ray-app, rendered), offline.

Three layers, each with mutated copies that must fail so that a check cannot pass vacuously:

- the KubeRay v1.7.0 CRDs (strict, ``tests/infra/crd.py``): what the API server checks;
- what the operator itself checks before it acts (``operator_errors``): a transcription of
  the v1.7.0 ``ValidateRay*Spec`` rules and the CRDs' CEL rules that concern these manifests,
  since an invalid spec is accepted by ``kubectl apply`` and only shows up as an event later;
- what this project needs: the pinned Ray everywhere, the same cluster as ray-cluster.yaml,
  entrypoints that exist in the image with a settings file the pods mount, serveConfigV2 equal
  to serve_config.yaml and valid for Serve, a schedule after the US close.

The chart's objects are those ``helm template`` renders with values-dev.yaml (tests/infra/chart.py;
skipped with the reason where helm is absent: ``make tools-helm`` installs it).
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import os
import posixpath
import re
import shlex
import zoneinfo
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra import chart, crd, project, serve_config_sync
from tests.infra.test_cluster import quantity
from tests.infra.test_docker import flags_and_args, parse_dockerfile

pytestmark = pytest.mark.infra

WORKLOADS = {
    "ray-job.tune.yaml": "RayJob",
    "ray-cronjob.pipeline.yaml": "RayCronJob",
    "ray-service.yaml": "RayService",
}
# Rendered from charts/ray-app/templates/<name>; the others are files in cluster/.
CHART_WORKLOADS = {"ray-cronjob.pipeline.yaml", "ray-service.yaml"}
SETTINGS_FILE = project.CHART / "files" / "cluster.yaml"
NAMESPACE = "ray-app"
HIGH_THROUGHPUT_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
SERVE_PORT = 8000
# The last US trading session closes at 16:00 New York time.
MARKET_TZ = "America/New_York"
MARKET_CLOSE = dt.time(16, 0)


def load(name: str) -> dict[str, Any]:
    if name in CHART_WORKLOADS:
        docs = copy.deepcopy(chart.rendered_from(f"templates/{name}"))
    else:
        docs = crd.load_yaml_documents(project.CLUSTER / name)
    assert len(docs) == 1, f"{name} must hold exactly one document"
    assert docs[0].get("kind") == WORKLOADS[name], f"{name} must hold a {WORKLOADS[name]}"
    return docs[0]


@pytest.fixture(scope="module")
def ray_job() -> dict[str, Any]:
    return load("ray-job.tune.yaml")


@pytest.fixture(scope="module")
def ray_cronjob() -> dict[str, Any]:
    return load("ray-cronjob.pipeline.yaml")


@pytest.fixture(scope="module")
def ray_service() -> dict[str, Any]:
    return load("ray-service.yaml")


@pytest.fixture(scope="module")
def config_maps() -> dict[str, dict[str, Path]]:
    return chart_config_maps()


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RAY_APP_* from the developer's shell: settings files are read as the pods read them."""
    for name in list(os.environ):
        if name.startswith("RAY_APP_"):
            monkeypatch.delenv(name)


# --- Where things are in each kind -----------------------------------------------------------


def job_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The RayJob spec: a RayJob's own, a RayCronJob's jobTemplate."""
    return doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "RayService":
        return doc["spec"]["rayClusterConfig"]
    if doc["kind"] == "RayCluster":
        return doc["spec"]
    return job_spec(doc)["rayClusterSpec"]


def pod_specs(cluster: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "head", cluster["headGroupSpec"]["template"]["spec"]
    for group in cluster.get("workerGroupSpecs", []):
        yield f"worker group {group['groupName']}", group["template"]["spec"]


def ray_containers(cluster: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The Ray container of every pod (KubeRay's RayContainerIndex is 0)."""
    for where, pod in pod_specs(cluster):
        yield where, pod["containers"][0]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def ports_of(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def image_parts(image: str) -> tuple[str, str, str]:
    """(repository, tag, digest) of ``repo:tag``, ``repo@sha256:...`` or ``repo:tag@sha256:...``."""
    name, _, digest = image.partition("@")
    repo, _, tag = name.rpartition(":")
    if not repo or "/" in tag:
        repo, tag = name, ""
    return repo, tag, digest


def all_images(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for where, pod in pod_specs(cluster_spec(doc)):
        for c in pod.get("initContainers", []) + pod["containers"]:
            yield f"{where}/{c['name']}", c["image"]
    if doc["kind"] != "RayService":
        submitter = job_spec(doc).get("submitterPodTemplate", {}).get("spec", {})
        for c in submitter.get("containers", []):
            yield f"submitter/{c['name']}", c["image"]


WORKLOAD_PARAMS = [pytest.param(name, id=kind) for name, kind in WORKLOADS.items()]
JOB_PARAMS = [p for p in WORKLOAD_PARAMS if p.id != "RayService"]


# --- The KubeRay CRDs ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", WORKLOAD_PARAMS)
def test_workload_matches_its_crd(name: str, kuberay_crds: Path) -> None:
    errors = crd.validation_errors(load(name))
    assert not errors, "\n".join(errors)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets the dotted ``path`` (list indexes as numbers) to ``value``."""

    def mutate(doc: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(leaf) if isinstance(node, list) else leaf] = value

    return mutate


@pytest.mark.parametrize(
    ("name", "mutate", "expected"),
    [
        pytest.param(
            "ray-cronjob.pipeline.yaml",
            _set("spec.concurrencyPolicy", "Forbid"),
            "'concurrencyPolicy' was unexpected",
            id="cron-concurrency-policy-absent-in-v1.7.0",
        ),
        pytest.param(
            "ray-cronjob.pipeline.yaml",
            _set("spec.jobTemplate.entryPoint", "python x.py"),
            "'entryPoint' was unexpected",
            id="cron-job-template-typo",
        ),
        pytest.param(
            "ray-cronjob.pipeline.yaml",
            _set("spec.jobTemplate.deletionStrategy.deletionRules.0.policy", "DeleteAll"),
            "'DeleteAll' is not one of",
            id="cron-deletion-policy-enum",
        ),
        pytest.param(
            "ray-cronjob.pipeline.yaml",
            _set("spec.jobTemplate.deletionStrategy.deletionRules.0.condition.ttlSeconds", -1),
            "is less than the minimum of 0",
            id="cron-negative-ttl",
        ),
        pytest.param(
            "ray-cronjob.pipeline.yaml",
            _set("spec.timeZone", ""),
            "should be non-empty",
            id="cron-empty-time-zone",
        ),
        pytest.param(
            "ray-job.tune.yaml",
            _set("spec.submitterConfig.backoffLimit", "2"),
            "'2' is not of type 'integer'",
            id="job-string-for-integer",
        ),
        pytest.param(
            "ray-job.tune.yaml",
            _set("spec.shutdownAfterJobFinish", True),
            "'shutdownAfterJobFinish' was unexpected",
            id="job-typo",
        ),
        pytest.param(
            "ray-job.tune.yaml",
            _set("spec.rayClusterSpec.headGroupSpec.template.spec.containers.0.volumeMount", []),
            "'volumeMount' was unexpected",
            id="job-container-typo",
        ),
        pytest.param(
            "ray-service.yaml",
            _set("spec.serveConfigV2", {"applications": []}),
            "is not of type 'string'",
            id="service-serve-config-not-a-string",
        ),
        pytest.param(
            "ray-service.yaml",
            _set("spec.upgradeStrategy.typ", "NewCluster"),
            "'typ' was unexpected",
            id="service-upgrade-typo",
        ),
        pytest.param(
            "ray-service.yaml",
            _set("spec.rayClusterConfig.workerGroupSpecs.0.minReplicas", 2**31),
            "is greater than the maximum",
            id="service-int32-overflow",
        ),
    ],
)
def test_crd_rejects_mutated_workloads(
    name: str, mutate: Callable[[dict[str, Any]], None], expected: str, kuberay_crds: Path
) -> None:
    doc = copy.deepcopy(load(name))
    mutate(doc)
    errors = crd.validation_errors(doc)
    assert any(expected in e for e in errors), f"expected {expected!r} in {errors}"


# --- What the operator checks (KubeRay v1.7.0, utils/validation.go and CEL) ------------------

MAX_RAY_CLUSTER_NAME = 53  # 63 - len("-serve-svc")
MAX_RAY_JOB_OR_SERVICE_NAME = MAX_RAY_CLUSTER_NAME - 6  # KubeRay appends "-xxxxx"
MAX_RAY_CRONJOB_NAME = MAX_RAY_JOB_OR_SERVICE_NAME - 6  # each run's RayJob appends "-xxxxx"
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
UPGRADE_TYPES = {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _name_errors(name: str, limit: int) -> list[str]:
    errors = []
    if len(name) > limit:
        errors.append(f"name {name!r} is longer than {limit} characters")
    if not _DNS1035.match(name):
        errors.append(f"name {name!r} is not a DNS-1035 label")
    return errors


def cluster_errors(cluster: dict[str, Any]) -> list[str]:
    """``ValidateRayClusterSpec``: the rules these manifests could break."""
    errors = []
    head = cluster["headGroupSpec"]
    if not head["template"]["spec"].get("containers"):
        errors.append("headGroupSpec should have at least one container")
    groups = [("Head", head), *((g["groupName"], g) for g in cluster.get("workerGroupSpecs", []))]
    for name, group in groups:
        params = group.get("rayStartParams", {})
        if "labels" in params:
            errors.append(f"rayStartParams['labels'] is not supported for {name} group")
        if group.get("resources") and params.keys() & {"num-cpus", "num-gpus", "memory"}:
            errors.append(f"resources set in both rayStartParams and resources of {name}")
    head_env = env_of(head["template"]["spec"]["containers"][0])
    if cluster.get("gcsFaultToleranceOptions"):
        if "redis-password" in head.get("rayStartParams", {}):
            errors.append("redis-password in rayStartParams with GcsFaultToleranceOptions")
        errors += [
            f"{v} env var with GcsFaultToleranceOptions"
            for v in ("REDIS_PASSWORD", "RAY_REDIS_ADDRESS")
            if v in head_env
        ]
    elif "RAY_REDIS_ADDRESS" in head_env:
        errors.append("RAY_REDIS_ADDRESS implies GCS fault tolerance without its options")
    autoscaling = bool(cluster.get("enableInTreeAutoscaling"))
    if autoscaling and cluster.get("autoscalerOptions", {}).get("version") == "v2":
        for where, pod in pod_specs(cluster):
            if pod.get("restartPolicy", "Never") != "Never":
                errors.append(f"restartPolicy of the {where} should be Never with autoscaler v2")
    if autoscaling and any(g.get("suspend") for _, g in groups[1:]):
        errors.append("a worker group cannot be suspended with the autoscaler enabled")
    if cluster.get("authOptions", {}).get("mode") == "token":
        version = cluster.get("rayVersion", "")
        if not version or _version(version) < (2, 52, 0):
            errors.append(f"token authentication needs rayVersion >= 2.52.0, got {version!r}")
    return errors


def _deletion_errors(spec: dict[str, Any]) -> list[str]:
    errors = []
    shutdown = bool(spec.get("shutdownAfterJobFinishes"))
    if not shutdown and spec.get("ttlSecondsAfterFinished", 0) > 0:
        errors.append("ttlSecondsAfterFinished needs shutdownAfterJobFinishes")
    strategy = spec.get("deletionStrategy")
    if strategy is None:
        return errors
    legacy = "onSuccess" in strategy or "onFailure" in strategy
    rules = strategy.get("deletionRules", [])
    if legacy and rules:
        errors.append("legacy onSuccess/onFailure and deletionRules together")
    if not rules and not ("onSuccess" in strategy and "onFailure" in strategy):
        errors.append("deletionStrategy needs both onSuccess and onFailure, or deletionRules")
    if rules and shutdown:
        errors.append("shutdownAfterJobFinishes and deletionRules are mutually exclusive")
    autoscaling = bool(spec.get("rayClusterSpec", {}).get("enableInTreeAutoscaling"))
    ttls: dict[str, dict[str, int]] = {}
    for i, rule in enumerate(rules):
        cond = rule["condition"]
        if ("jobStatus" in cond) == ("jobDeploymentStatus" in cond):
            errors.append(f"deletionRules[{i}]: exactly one of jobStatus, jobDeploymentStatus")
            continue
        if autoscaling and rule["policy"] == "DeleteWorkers":
            errors.append(f"deletionRules[{i}]: DeleteWorkers with autoscaling enabled")
        by_policy = ttls.setdefault(cond.get("jobStatus", ""), {})
        if rule["policy"] in by_policy:
            errors.append(f"deletionRules[{i}]: duplicate {rule['policy']} for {cond}")
        by_policy[rule["policy"]] = cond.get("ttlSeconds", 0)
    for status, by_policy in ttls.items():
        order = [
            by_policy[p] for p in ("DeleteWorkers", "DeleteCluster", "DeleteSelf") if p in by_policy
        ]
        if order != sorted(order):
            errors.append(f"for JobStatus {status!r}: TTLs must grow Workers <= Cluster <= Self")
    return errors


def job_errors(spec: dict[str, Any]) -> list[str]:
    """``ValidateRayJobSpec`` for a RayJob spec (a RayJob's or a RayCronJob's jobTemplate)."""
    errors = []
    mode = spec.get("submissionMode", "K8sJobMode")
    if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
        errors.append("a RayJob without shutdownAfterJobFinishes cannot be suspended")
    if spec.get("ttlSecondsAfterFinished", 0) < 0:
        errors.append("ttlSecondsAfterFinished must be non-negative")
    errors += _deletion_errors(spec)
    if not spec.get("rayClusterSpec") and not spec.get("clusterSelector"):
        errors.append("one of rayClusterSpec or clusterSelector must be set")
    if mode == "InteractiveMode" and spec.get("backoffLimit", 0) > 0:
        errors.append("backoffLimit is incompatible with InteractiveMode")
    if mode == "SidecarMode" and ("submitterPodTemplate" in spec or "submitterConfig" in spec):
        errors.append("SidecarMode supports neither submitterPodTemplate nor submitterConfig")
    if spec.get("rayClusterSpec"):
        errors += cluster_errors(spec["rayClusterSpec"])
    if "activeDeadlineSeconds" in spec and spec["activeDeadlineSeconds"] <= 0:
        errors.append("activeDeadlineSeconds must be a positive integer")
    if spec.get("backoffLimit", 0) < 0:
        errors.append("backoffLimit must be non-negative")
    if not spec.get("entrypoint", "").strip() and mode != "InteractiveMode":
        errors.append("no entrypoint")
    return errors


def operator_errors(doc: dict[str, Any]) -> list[str]:
    """What the KubeRay v1.7.0 operator would refuse in ``doc`` (beyond its CRD)."""
    kind, spec, name = doc["kind"], doc["spec"], doc["metadata"]["name"]
    if kind == "RayJob":
        return _name_errors(name, MAX_RAY_JOB_OR_SERVICE_NAME) + job_errors(spec)
    if kind == "RayCronJob":
        errors = _name_errors(name, MAX_RAY_CRONJOB_NAME)
        try:
            cron_fields(spec["schedule"])
        except ValueError as exc:
            errors.append(f"invalid cron schedule: {exc}")
        if "timeZone" in spec:
            try:
                zoneinfo.ZoneInfo(spec["timeZone"])
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                errors.append(f"unknown time zone {spec['timeZone']!r}")
        return errors + [f"jobTemplate: {e}" for e in job_errors(spec["jobTemplate"])]
    if kind == "RayService":
        errors = _name_errors(name, MAX_RAY_JOB_OR_SERVICE_NAME)
        errors += cluster_errors(spec["rayClusterConfig"])
        if (
            spec["rayClusterConfig"]["headGroupSpec"]
            .get("headService", {})
            .get("metadata", {})
            .get("name")
        ):
            errors.append("headService.metadata.name should not be set")
        strategy = spec.get("upgradeStrategy", {})
        kind_ = strategy.get("type")
        if kind_ is not None and kind_ not in UPGRADE_TYPES:
            errors.append(f"upgradeStrategy.type {kind_!r} is not one of {sorted(UPGRADE_TYPES)}")
        if spec.get("rayClusterDeletionDelaySeconds", 0) < 0:
            errors.append("rayClusterDeletionDelaySeconds must be non-negative")
        if kind_ == "NewClusterWithIncrementalUpgrade":
            options = strategy.get("clusterUpgradeOptions")
            if not spec["rayClusterConfig"].get("enableInTreeAutoscaling"):
                errors.append("NewClusterWithIncrementalUpgrade needs the autoscaler")
            if not options:
                errors.append("NewClusterWithIncrementalUpgrade needs clusterUpgradeOptions")
        return errors
    raise AssertionError(f"no operator rules for {kind}")


@pytest.mark.parametrize("name", WORKLOAD_PARAMS)
def test_operator_accepts_workload(name: str) -> None:
    assert operator_errors(load(name)) == []


def _head(path: str) -> str:
    return f"{path}.headGroupSpec.template.spec"


@pytest.mark.parametrize(
    ("name", "mutate", "expected"),
    [
        pytest.param(
            "ray-job.tune.yaml",
            _set("spec.shutdownAfterJobFinishes", False),
            "ttlSecondsAfterFinished needs shutdownAfterJobFinishes",
            id="ttl-without-shutdown",
        ),
        pytest.param(
            "ray-job.tune.yaml",
            _set("spec.activeDeadlineSeconds", 0),
            "activeDeadlineSeconds must be a positive integer",
            id="zero-deadline",
        ),
        pytest.param(
            "ray-job.tune.yaml",
            _set("metadata.name", "ray-app-tune-" + "x" * 40),
            "longer than 47",
            id="job-name-too-long",
        ),
        pytest.param(
            "ray-job.tune.yaml",
            _set("spec.rayClusterSpec.rayVersion", "2.51.0"),
            "token authentication needs rayVersion >= 2.52.0",
            id="token-auth-on-old-ray",
        ),
        pytest.param(
            "ray-job.tune.yaml",
            _set(_head("spec.rayClusterSpec") + ".restartPolicy", "Always"),
            "should be Never with autoscaler v2",
            id="head-restart-policy",
        ),
        pytest.param(
            "ray-cronjob.pipeline.yaml",
            _set("spec.jobTemplate.shutdownAfterJobFinishes", True),
            "mutually exclusive",
            id="rules-and-shutdown",
        ),
        pytest.param(
            "ray-cronjob.pipeline.yaml",
            _set("spec.jobTemplate.deletionStrategy.deletionRules.3.condition.ttlSeconds", 60),
            "TTLs must grow",
            id="self-deleted-before-cluster",
        ),
        pytest.param(
            "ray-cronjob.pipeline.yaml",
            _set(
                "spec.jobTemplate.deletionStrategy.deletionRules.0.condition",
                {"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Failed"},
            ),
            "exactly one of jobStatus, jobDeploymentStatus",
            id="condition-with-both-statuses",
        ),
        pytest.param(
            "ray-cronjob.pipeline.yaml",
            _set("spec.schedule", "30 18 * * 1-5 *"),
            "invalid cron schedule",
            id="six-field-schedule",
        ),
        pytest.param(
            "ray-cronjob.pipeline.yaml",
            _set("spec.timeZone", "America/NewYork"),
            "unknown time zone",
            id="bad-time-zone",
        ),
        pytest.param(
            "ray-cronjob.pipeline.yaml",
            _set("metadata.name", "ray-app-pipeline-" + "x" * 30),
            "longer than 41",
            id="cron-name-too-long",
        ),
        pytest.param(
            "ray-service.yaml",
            _set("spec.upgradeStrategy.type", "BlueGreen"),
            "is not one of",
            id="upgrade-type",
        ),
        pytest.param(
            "ray-service.yaml",
            _set("spec.upgradeStrategy.type", "NewClusterWithIncrementalUpgrade"),
            "needs clusterUpgradeOptions",
            id="incremental-without-options",
        ),
        pytest.param(
            "ray-service.yaml",
            _set("spec.rayClusterConfig.headGroupSpec.rayStartParams.redis-password", "x"),
            "redis-password in rayStartParams",
            id="redis-password-param",
        ),
        pytest.param(
            "ray-service.yaml",
            _set("metadata.name", "Ray_App"),
            "not a DNS-1035 label",
            id="service-name",
        ),
    ],
)
def test_operator_rejects(
    name: str, mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    doc = copy.deepcopy(load(name))
    mutate(doc)
    errors = operator_errors(doc)
    assert any(expected in e for e in errors), f"expected {expected!r} in {errors}"


# --- Ray version, images, and the same cluster as ray-cluster.yaml ------------------------------


@pytest.mark.parametrize("name", WORKLOAD_PARAMS)
def test_ray_version_and_image_tags_are_the_pin(name: str, ray_version: str) -> None:
    doc = load(name)
    assert cluster_spec(doc)["rayVersion"] == ray_version
    images = dict(all_images(doc))
    assert any(w.startswith("submitter") for w in images) or doc["kind"] == "RayService"
    for where, image in images.items():
        repo, tag, _ = image_parts(image)
        assert repo.endswith("/ray-app"), f"{where}: {image!r} is not the ray-app image"
        assert tag == ray_version or tag.startswith(f"{ray_version}-"), (
            f"{where}: image tag {tag!r} is not Ray {ray_version}"
        )


@pytest.mark.parametrize("name", WORKLOAD_PARAMS)
def test_cluster_is_the_one_of_ray_cluster_yaml(name: str, ray_cluster: dict[str, Any]) -> None:
    """Same identity, authentication, autoscaler, settings and security as ray-cluster.yaml."""
    ours, theirs = cluster_spec(load(name)), cluster_spec(ray_cluster)
    for key in ("rayVersion", "authOptions", "enableInTreeAutoscaling", "autoscalerOptions"):
        assert ours.get(key) == theirs.get(key), key
    assert ours["headGroupSpec"]["rayStartParams"] == theirs["headGroupSpec"]["rayStartParams"]
    their_groups = {g["groupName"]: g for g in theirs["workerGroupSpecs"]}
    their_pods = dict(pod_specs(theirs))
    # Port names mean the same numbers everywhere (a worker may expose one only the head has).
    their_ports = {n: p for _, c in ray_containers(theirs) for n, p in ports_of(c).items()}
    for where, pod in pod_specs(ours):
        reference = their_pods[where]
        for key in ("serviceAccountName", "securityContext"):
            assert pod.get(key) == reference.get(key), f"{where}: {key}"
        mine, base = pod["containers"][0], reference["containers"][0]
        for key in ("name", "imagePullPolicy", "envFrom", "securityContext"):
            assert mine.get(key) == base.get(key), f"{where}: container {key}"
        # The chart may pin the same image by digest (repository:tag@sha256:...).
        assert image_parts(mine["image"])[:2] == image_parts(base["image"])[:2], where
        for port_name, number in ports_of(mine).items():
            assert their_ports.get(port_name) == number, f"{where}: port {port_name}"
        assert {"name": "ray-logs", "mountPath": "/tmp/ray"} in mine["volumeMounts"], where
    for group in ours["workerGroupSpecs"]:
        assert group["groupName"] in their_groups, f"no group {group['groupName']} in ray-cluster"
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    if ours.get("gcsFaultToleranceOptions"):
        assert ours["gcsFaultToleranceOptions"] == theirs["gcsFaultToleranceOptions"]


@pytest.mark.parametrize("name", WORKLOAD_PARAMS)
def test_every_container_requests_and_limits_cpu_and_memory(name: str) -> None:
    doc = load(name)
    found: list[tuple[str, dict[str, Any]]] = []
    cluster = cluster_spec(doc)
    for where, pod in pod_specs(cluster):
        found += [
            (f"{where}/{c['name']}", c) for c in pod.get("initContainers", []) + pod["containers"]
        ]
    found.append(("autoscaler", cluster["autoscalerOptions"]))
    if doc["kind"] != "RayService":
        submitter = job_spec(doc)["submitterPodTemplate"]["spec"]
        assert submitter.get("restartPolicy") == "Never", "a submitter Job's pod never restarts"
        found += [(f"submitter/{c['name']}", c) for c in submitter["containers"]]
    for where, container in found:
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert resource in resources.get(kind, {}), f"{where}: no {kind}.{resource}"
        for resource, limit in resources["limits"].items():
            request = resources["requests"].get(resource)
            if request is not None:
                assert quantity(request) <= quantity(limit), f"{where}: {resource} request > limit"


# --- Jobs: entrypoints, settings file, clean-up ---------------------------------------------------


def image_layout() -> tuple[str, dict[str, str]]:
    """docker/Dockerfile's last WORKDIR and its COPYs as {image directory: repository path}."""
    workdir, copies = "/", {}
    for ins in parse_dockerfile((project.DOCKER / "Dockerfile").read_text()):
        if ins.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, ins.args.strip())
        elif ins.keyword == "COPY":
            flags, words = flags_and_args(ins.args)
            if "from" in flags:
                continue
            dest = posixpath.normpath(posixpath.join(workdir, words[-1]))
            for source in words[:-1]:
                if source.endswith("/"):  # a folder: its files land under dest
                    copies[dest] = source.rstrip("/")
    return workdir, copies


def chart_config_maps() -> dict[str, dict[str, Path]]:
    """{ConfigMap name: {key: file}} of the ConfigMaps the chart renders from its files/."""
    maps: dict[str, dict[str, Path]] = {}
    for config_map in chart.find("ConfigMap"):
        files = {}
        for key, text in config_map.get("data", {}).items():
            source = project.CHART / "files" / key
            assert source.is_file(), f"{config_map['metadata']['name']}: no files/{key}"
            assert source.read_text(encoding="utf-8") == text, f"{key} is not files/{key}"
            files[key] = source
        maps[config_map["metadata"]["name"]] = files
    return maps


def mounted_file(
    pod: dict[str, Any], path: str, config_maps: dict[str, dict[str, Path]]
) -> Path | None:
    """The repository file a pod sees at ``path`` through a ConfigMap of the chart, if any."""
    directory, key = posixpath.split(path)
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in pod["containers"][0].get("volumeMounts", []):
        if posixpath.normpath(mount["mountPath"]) != directory or "subPath" in mount:
            continue
        source = volumes[mount["name"]].get("configMap")
        if not source or source.get("optional"):
            continue
        files = config_maps.get(source["name"], {})
        items = {i["path"]: i["key"] for i in source.get("items", [])} or {k: k for k in files}
        if key in items and items[key] in files:
            return files[items[key]]
    return None


def entrypoint_parts(spec: dict[str, Any]) -> tuple[str, list[str]]:
    """(script path, its arguments) of a ``python <script> ...`` entrypoint."""
    words = shlex.split(spec["entrypoint"])
    assert words[0] in ("python", "python3"), f"not a python entrypoint: {spec['entrypoint']}"
    return words[1], words[2:]


def option(args: list[str], name: str) -> str:
    for i, word in enumerate(args):
        if word == name:
            return args[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    raise AssertionError(f"no {name} in {args}")


@pytest.mark.parametrize(
    ("name", "script"),
    [
        pytest.param("ray-job.tune.yaml", "jobs/tune.py", id="RayJob"),
        pytest.param("ray-cronjob.pipeline.yaml", "jobs/pipeline.py", id="RayCronJob"),
    ],
)
def test_entrypoint_runs_a_job_script_of_the_image(name: str, script: str) -> None:
    path, _ = entrypoint_parts(job_spec(load(name)))
    workdir, copies = image_layout()
    assert posixpath.isabs(path), "absolute: the driver's working directory is Ray's, not ours"
    directory, filename = posixpath.split(path)
    assert directory in copies, f"{directory} is not a folder docker/Dockerfile copies"
    in_repo = project.REPO / copies[directory] / filename
    assert in_repo.relative_to(project.REPO).as_posix() == script
    assert in_repo.is_file(), f"{in_repo} does not exist"
    assert path.startswith(workdir.rstrip("/") + "/"), f"{path} is outside {workdir}"


@pytest.mark.parametrize("name", JOB_PARAMS)
def test_entrypoint_config_is_a_mounted_settings_file(
    name: str, config_maps: dict[str, dict[str, Path]], clean_env: None
) -> None:
    from ray_app.core.settings import load_settings

    spec = job_spec(load(name))
    _, args = entrypoint_parts(spec)
    config = option(args, "--config")
    for where, pod in pod_specs(spec["rayClusterSpec"]):
        source = mounted_file(pod, config, config_maps)
        assert source is not None, f"{where}: {config} is not mounted from the chart's ConfigMap"
        assert source.is_file(), f"{source} does not exist"
    settings = load_settings(source)
    assert "://" in settings.data_root, "a cluster needs a data root every node reaches"
    uri = settings.mlflow.tracking_uri or ""
    assert uri.startswith(("http://", "https://")), "a cluster needs an MLflow tracking server"


def test_the_pipeline_keeps_dagster_state_in_postgres_and_skips_holidays(
    config_maps: dict[str, dict[str, Path]], clean_env: None
) -> None:
    """The RayCronJob's driver (on the head) reaches Dagster's PostgreSQL instance storage,
    which outlives the run's cluster, and ends at once on an exchange holiday."""
    from ray_app.core.settings import load_settings
    from ray_app.orchestration.instance import POSTGRES_URL_ENV

    spec = job_spec(load("ray-cronjob.pipeline.yaml"))
    _, args = entrypoint_parts(spec)
    assert "--calendar" in args
    head = dict(pod_specs(spec["rayClusterSpec"]))["head"]
    env = {e["name"]: e for e in head["containers"][0].get("env", [])}
    secret = env[POSTGRES_URL_ENV]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": "ray-app-mlflow", "key": "dagster-postgres-url"}
    source = mounted_file(head, option(args, "--config"), config_maps)
    assert source is not None and load_settings(source).pipeline.dagster_storage == "postgres"


def test_mounted_file_finds_nothing_where_nothing_is_mounted(
    ray_job: dict[str, Any], config_maps: dict[str, dict[str, Path]]
) -> None:
    pod = dict(pod_specs(job_spec(ray_job)["rayClusterSpec"]))["head"]
    _, args = entrypoint_parts(job_spec(ray_job))
    config = option(args, "--config")
    assert mounted_file(pod, config, config_maps) is not None
    assert mounted_file(pod, config.replace("configs", "config"), config_maps) is None
    assert mounted_file(pod, config, {}) is None
    unmounted = copy.deepcopy(pod)
    unmounted["containers"][0]["volumeMounts"] = [
        m for m in unmounted["containers"][0]["volumeMounts"] if m["name"] == "ray-logs"
    ]
    assert mounted_file(unmounted, config, config_maps) is None


def test_cluster_settings_file_is_rejected_when_invalid(tmp_path: Path, clean_env: None) -> None:
    """The settings check above can fail: an unknown key is an error, as on the cluster."""
    from ray_app.core.settings import SettingsError, load_settings

    text = SETTINGS_FILE.read_text()
    bad = tmp_path / "cluster.yaml"
    bad.write_text(text.replace("tracking_uri:", "tracking_url:"))
    with pytest.raises(SettingsError, match="tracking_url"):
        load_settings(bad)


def test_ray_job_shuts_its_cluster_down(ray_job: dict[str, Any]) -> None:
    spec = ray_job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert 0 < spec["ttlSecondsAfterFinished"] <= 3600, "delete the cluster within the hour"
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["backoffLimit"] >= 0
    assert "clusterSelector" not in spec, "a cluster of its own"


def test_cron_runs_delete_their_cluster_and_themselves(ray_cronjob: dict[str, Any]) -> None:
    spec = ray_cronjob["spec"]["jobTemplate"]
    if spec.get("shutdownAfterJobFinishes"):
        return
    rules = spec["deletionStrategy"]["deletionRules"]
    covered = {
        (r["policy"], r["condition"].get("jobStatus") or r["condition"]["jobDeploymentStatus"])
        for r in rules
    }
    for outcome in ("SUCCEEDED", "FAILED", "Failed"):
        assert ("DeleteCluster", outcome) in covered, f"no cluster clean-up after {outcome}"
        assert ("DeleteSelf", outcome) in covered, f"runs after {outcome} would pile up"
    for rule in rules:
        if rule["policy"] == "DeleteCluster":
            assert rule["condition"]["ttlSeconds"] <= 3600, "delete the cluster within the hour"


# --- The schedule ---------------------------------------------------------------------------------

_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_CRON_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, (_MONTHS, 1)),
    ("day of week", 0, 6, (_DAYS, 0)),
)


def _cron_value(text: str, field: str, names: Any) -> int:
    if names and text.lower() in names[0]:
        return names[0].index(text.lower()) + names[1]
    if not text.isdigit():
        raise ValueError(f"{field}: {text!r} is not a number")
    return int(text)


def cron_fields(schedule: str) -> list[set[int]]:
    """The allowed values of a standard 5-field cron schedule (robfig/cron ``ParseStandard``,
    which KubeRay uses, less its @descriptors); ValueError when it is not one."""
    words = schedule.split()
    if len(words) != 5:
        raise ValueError(f"expected 5 fields, got {len(words)} in {schedule!r}")
    result = []
    for word, (field, low, high, names) in zip(words, _CRON_FIELDS, strict=True):
        values: set[int] = set()
        for part in word.split(","):
            span, slash, step_text = part.partition("/")
            if slash and not step_text.isdigit():
                raise ValueError(f"{field}: bad step in {part!r}")
            step = int(step_text) if slash else 1
            if step < 1:
                raise ValueError(f"{field}: step must be positive in {part!r}")
            if span in ("*", "?"):
                start, end = low, high
            elif "-" in span:
                a, b = span.split("-", 1)
                start, end = _cron_value(a, field, names), _cron_value(b, field, names)
            else:
                start = _cron_value(span, field, names)
                end = high if slash else start
            if not low <= start <= end <= high:
                raise ValueError(f"{field}: {part!r} is outside {low}-{high}")
            values.update(range(start, end + 1, step))
        result.append(values)
    return result


def fire_times(schedule: str, start: dt.datetime, days: int) -> list[dt.datetime]:
    """Every time ``schedule`` fires in ``days`` days from ``start`` (local, naive)."""
    minutes, hours, doms, months, dows = cron_fields(schedule)
    dom_any, dow_any = len(doms) == 31, len(dows) == 7
    times = []
    for day in range(days):
        date = (start + dt.timedelta(days=day)).date()
        dow = (date.weekday() + 1) % 7  # cron: Sunday is 0
        if date.month not in months:
            continue
        if dom_any or dow_any:
            if date.day not in doms or dow not in dows:
                continue
        elif date.day not in doms and dow not in dows:  # both restricted: either matches
            continue
        times += [
            dt.datetime.combine(date, dt.time(h, m)) for h in sorted(hours) for m in sorted(minutes)
        ]
    return times


@pytest.mark.parametrize(
    "schedule",
    ["30 22 * * 1-5", "30 18 * * MON-FRI", "*/15 0-6,20-23 1,15 JAN-DEC ?", "0 0 * * 0"],
)
def test_cron_parser_accepts(schedule: str) -> None:
    cron_fields(schedule)


@pytest.mark.parametrize(
    "schedule",
    [
        "30 22 * *",
        "30 22 * * 1-5 2026",
        "61 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * * * 7",
        "*/0 * * * *",
        "x * * * *",
        "5-1 * * * *",
        "* * * * MON-XYZ",
        "",
    ],
)
def test_cron_parser_rejects(schedule: str) -> None:
    with pytest.raises(ValueError):
        cron_fields(schedule)


def test_cron_runs_after_each_us_trading_day(ray_cronjob: dict[str, Any]) -> None:
    spec = ray_cronjob["spec"]
    schedule = spec["schedule"]
    assert not schedule.startswith(("TZ=", "CRON_TZ=")), "use spec.timeZone, KubeRay adds TZ="
    # Without timeZone the operator's own zone applies (the controller's, usually UTC).
    assert spec.get("timeZone") == MARKET_TZ, "schedule in New York time, DST included"
    zoneinfo.ZoneInfo(spec["timeZone"])
    monday = dt.datetime(2026, 1, 5)  # two whole weeks, Monday to Sunday
    runs = fire_times(schedule, monday, 14)
    assert sorted({r.weekday() for r in runs}) == [0, 1, 2, 3, 4], "every weekday, no weekend"
    assert len(runs) == 10, "once per weekday"
    close = dt.datetime.combine(monday.date(), MARKET_CLOSE)
    for run in runs:
        after_close = run - run.replace(hour=close.hour, minute=close.minute)
        assert dt.timedelta(hours=1) <= after_close, f"{run:%a %H:%M} is too soon after 16:00"
    gap = min(b - a for a, b in itertools.pairwise(runs))
    job = spec["jobTemplate"]
    attempts = job.get("backoffLimit", 0) + 1
    longest = dt.timedelta(seconds=job["activeDeadlineSeconds"]) * attempts
    assert longest < gap, "no concurrencyPolicy in v1.7.0: a run must end before the next"


def test_fire_times_follow_the_schedule() -> None:
    monday = dt.datetime(2026, 1, 5)
    assert len(fire_times("0 * * * *", monday, 1)) == 24
    assert [t.day for t in fire_times("0 9 1,15 * *", monday, 31)] == [15, 1]
    assert fire_times("30 22 * * 0", monday, 7) == [dt.datetime(2026, 1, 11, 22, 30)]


# --- The RayService ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def serve_config_text() -> str:
    if not serve_config_sync.SERVE_CONFIG.is_file():
        pytest.fail("serve_config.yaml (the RayService's serveConfigV2) does not exist")
    return serve_config_sync.SERVE_CONFIG.read_text(encoding="utf-8")


def test_serve_config_v2_is_serve_config_yaml_on_the_pods_address(
    ray_service: dict[str, Any], serve_config_text: str
) -> None:
    """One source: serveConfigV2 is serve_config.yaml with the chart's one overlay, the HTTP
    host (the pod's address instead of the local 127.0.0.1)."""
    from ray_app.serving.rollout import with_host

    embedded = yaml.safe_load(ray_service["spec"]["serveConfigV2"])
    local = yaml.safe_load(serve_config_text)
    assert local["http_options"]["host"] == "127.0.0.1", "the file holds the local value"
    host = chart.default_values()["serve"]["httpHost"]
    assert host == "0.0.0.0" and embedded["http_options"]["host"] == host
    assert embedded == with_host(local, host), (
        "serveConfigV2 is not serve_config.yaml with the chart's host: run make manifests"
    )


def test_sync_detects_and_repairs_a_stale_copy(tmp_path: Path, serve_config_text: str) -> None:
    source, copy_ = tmp_path / "serve_config.yaml", tmp_path / "chart" / "serve_config.yaml"
    source.write_text(serve_config_text)
    copies = {source: copy_}
    assert serve_config_sync.stale(copies) == [copy_], "a missing copy is stale"
    assert serve_config_sync.sync(copies) == [copy_]
    assert serve_config_sync.stale(copies) == []
    source.write_text(serve_config_text.replace("port: 8000", "port: 8001"))
    assert serve_config_sync.stale(copies) == [copy_]
    serve_config_sync.sync(copies)
    assert copy_.read_text() == source.read_text()


def test_chart_copies_are_current() -> None:
    stale = [p.relative_to(project.REPO).as_posix() for p in serve_config_sync.stale()]
    assert stale == [], f"stale: {stale}; run make manifests"
    assert serve_config_sync.main(["--check"]) == 0


def _serve_schema() -> Any:
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema


def test_serve_config_v2_passes_serve_deploy_schema(ray_service: dict[str, Any]) -> None:
    config = yaml.safe_load(ray_service["spec"]["serveConfigV2"])
    schema = _serve_schema().model_validate(config)
    assert schema.applications, "no Serve application"
    assert schema.http_options.port == SERVE_PORT


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(
            lambda c: c["applications"][0]["deployments"][0].update(num_replicas=0), id="replicas"
        ),
        pytest.param(lambda c: c["http_options"].update(port="http"), id="port"),
        pytest.param(
            lambda c: c.update(applications=[c["applications"][0]] * 2), id="duplicate-app"
        ),
        pytest.param(lambda c: c["applications"][0].pop("import_path"), id="no-import-path"),
    ],
)
def test_serve_deploy_schema_rejects(
    mutate: Callable[[dict[str, Any]], None], ray_service: dict[str, Any]
) -> None:
    config = yaml.safe_load(ray_service["spec"]["serveConfigV2"])
    mutate(config)
    with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
        _serve_schema().model_validate(config)


def test_serve_config_args_build_the_app(ray_service: dict[str, Any]) -> None:
    """The project's own applications get ``args`` that ``build_app`` accepts."""
    from ray_app.serving.args import ServeArgs

    config = yaml.safe_load(ray_service["spec"]["serveConfigV2"])
    ours = [a for a in config["applications"] if a["import_path"].startswith("ray_app.")]
    assert ours, "no ray_app application in serveConfigV2"
    for app in ours:
        ServeArgs.model_validate(app.get("args", {}))


def test_serve_runs_high_throughput_on_every_node(ray_service: dict[str, Any]) -> None:
    cluster = cluster_spec(ray_service)
    for where, container in ray_containers(cluster):
        env = env_of(container)
        for name, value in HIGH_THROUGHPUT_ENV.items():
            assert env.get(name) == value, f"{where}: {name} must be {value!r}"
        assert ports_of(container).get("serve") == SERVE_PORT, f"{where}: no serve port 8000"


def test_serve_replicas_use_the_clusters_registry(
    ray_service: dict[str, Any], clean_env: None
) -> None:
    from ray_app.core.settings import load_settings

    wanted = load_settings(SETTINGS_FILE).mlflow.tracking_uri
    for where, container in ray_containers(cluster_spec(ray_service)):
        assert env_of(container).get("RAY_APP_MLFLOW__TRACKING_URI") == wanted, where


def test_service_upgrades_without_downtime_and_survives_a_head_restart(
    ray_service: dict[str, Any],
) -> None:
    spec = ray_service["spec"]
    assert spec["upgradeStrategy"]["type"] in {"NewCluster", "NewClusterWithIncrementalUpgrade"}
    assert spec["rayClusterConfig"].get("gcsFaultToleranceOptions"), "RayService HA needs GCS FT"
    cpu = {g["groupName"]: g for g in spec["rayClusterConfig"]["workerGroupSpecs"]}["cpu"]
    assert cpu["minReplicas"] >= 2, "one lost worker pod must not stop serving"


def test_kuberay_generated_names_do_not_collide(ray_service: dict[str, Any]) -> None:
    """KubeRay names Services after the CR: RayService X makes X-head-svc and X-serve-svc, and
    RayClusters X-<5 chars>; none may clash with ray-cluster.yaml's or the Services we write."""
    docs = [d for p in cluster_files() for d in crd.load_yaml_documents(p)] + chart.rendered()
    clusters = [d["metadata"]["name"] for d in docs if d["kind"] == "RayCluster"]
    services = [d["metadata"]["name"] for d in docs if d["kind"] == "Service"]
    made = [f"{c}-head-svc" for c in clusters]
    rs = ray_service["metadata"]["name"]
    made += [f"{rs}-head-svc", f"{rs}-serve-svc"]
    names = made + services
    assert len(names) == len(set(names)), f"duplicate Service names: {names}"
    for cluster in clusters:
        assert not re.fullmatch(rf"{re.escape(rs)}-[a-z0-9]{{5}}", cluster)


# --- cluster/ and the chart together ----------------------------------------------------------


def cluster_files() -> list[Path]:
    return sorted(project.CLUSTER.glob("*.yaml"))


def test_cluster_folder_holds_only_the_ad_hoc_cluster_and_one_shot_jobs() -> None:
    """Long-lived objects come from the chart (Argo CD); cluster/ keeps what people apply by
    hand: the ad-hoc RayCluster (and its Service) and one-shot RayJobs."""
    for path in cluster_files():
        for doc in crd.load_yaml_documents(path):
            assert doc["kind"] in {"RayCluster", "Service", "RayJob"}, f"{path.name}: {doc['kind']}"
            assert doc["metadata"].get("namespace") == NAMESPACE, path.name
    for doc in chart.rendered():
        assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]["name"]


def test_jobs_mount_a_config_map_the_chart_makes(config_maps: dict[str, dict[str, Path]]) -> None:
    assert config_maps, "the chart renders no ConfigMap"
    for name in ("ray-job.tune.yaml", "ray-cronjob.pipeline.yaml"):
        for where, pod in pod_specs(cluster_spec(load(name))):
            maps = [v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v]
            assert maps and set(maps) <= set(config_maps), f"{name} {where}: {maps}"


def test_config_map_check_can_fail(config_maps: dict[str, dict[str, Path]]) -> None:
    pod = dict(pod_specs(cluster_spec(load("ray-job.tune.yaml"))))["head"]
    renamed = {f"{k}-old": v for k, v in config_maps.items()}
    maps = [v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v]
    assert not set(maps) <= set(renamed)
