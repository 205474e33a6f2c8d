"""The Kubernetes Pod Security Standards' "restricted" profile, checked offline on pod specs.

A transcription of the checks the Pod Security admission controller runs for
``pod-security.kubernetes.io/enforce: restricted`` (version "latest", Kubernetes 1.35): the
baseline checks plus the restricted ones. :func:`restricted_violations` returns what the
admission controller would refuse, one line each; :func:`pod_specs` finds every pod template
in a manifest, Ray custom resources included (KubeRay copies them into real pods), with the
autoscaler sidecar KubeRay adds to a head as one more container.

On top of the standard, :func:`hardening_violations` holds this project's rules: a read-only
root filesystem and a container-level RuntimeDefault seccomp profile on every container.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# Volume types "restricted" allows (everything else, hostPath first, is refused).
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
_VOLUME_META = frozenset({"name"})
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
SECCOMP_ALLOWED = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ALLOWED = frozenset({"RuntimeDefault", "Localhost"})


def containers_of(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from pod.get(key) or []


def _ray_cluster_pods(cluster: dict[str, Any], where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    head = cluster["headGroupSpec"]["template"]["spec"]
    if cluster.get("enableInTreeAutoscaling"):
        # KubeRay adds the autoscaler as a sidecar of the head, with autoscalerOptions'
        # securityContext (none given: none set).
        options = cluster.get("autoscalerOptions") or {}
        sidecar = {"name": "autoscaler", "securityContext": options.get("securityContext", {})}
        head = {**head, "containers": [*head["containers"], sidecar]}
    yield f"{where}head", head
    for group in cluster.get("workerGroupSpecs") or []:
        yield f"{where}worker group {group['groupName']}", group["template"]["spec"]


def _job_pods(spec: dict[str, Any], where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if spec.get("rayClusterSpec"):
        yield from _ray_cluster_pods(spec["rayClusterSpec"], where)
    submitter = (spec.get("submitterPodTemplate") or {}).get("spec")
    if submitter:
        yield f"{where}submitter", submitter


def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every pod template in ``doc``; nothing for kinds without pods."""
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    name = f"{kind}/{doc.get('metadata', {}).get('name', '?')} "
    if kind == "Pod":
        yield name.strip(), spec
    elif kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        yield name.strip(), spec["template"]["spec"]
    elif kind == "CronJob":
        yield name.strip(), spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "RayCluster":
        yield from _ray_cluster_pods(spec, name)
    elif kind == "RayService":
        yield from _ray_cluster_pods(spec["rayClusterConfig"], name)
    elif kind == "RayJob":
        yield from _job_pods(spec, name)
    elif kind == "RayCronJob":
        yield from _job_pods(spec["jobTemplate"], name)


def _baseline(pod: dict[str, Any]) -> Iterator[str]:
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            yield f"{field} is true"
    pod_ctx = pod.get("securityContext") or {}
    for c in containers_of(pod):
        ctx, name = c.get("securityContext") or {}, c.get("name", "?")
        if ctx.get("privileged"):
            yield f"container {name}: privileged"
        if (ctx.get("windowsOptions") or {}).get("hostProcess"):
            yield f"container {name}: windowsOptions.hostProcess"
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                yield f"container {name}: hostPort {port['hostPort']}"
        if ctx.get("procMount", "Default") != "Default":
            yield f"container {name}: procMount {ctx['procMount']}"
    for where, ctx in [
        ("pod", pod_ctx),
        *((c.get("name", "?"), c.get("securityContext") or {}) for c in containers_of(pod)),
    ]:
        selinux = ctx.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in SELINUX_TYPES:
            yield f"{where}: seLinuxOptions.type {selinux['type']!r}"
        for field in ("user", "role"):
            if selinux.get(field):
                yield f"{where}: seLinuxOptions.{field} is set"
        apparmor = (ctx.get("appArmorProfile") or {}).get("type")
        if apparmor is not None and apparmor not in APPARMOR_ALLOWED:
            yield f"{where}: appArmorProfile {apparmor}"
    for sysctl in pod_ctx.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            yield f"pod: sysctl {sysctl.get('name')} is not in the safe set"
    if (pod_ctx.get("windowsOptions") or {}).get("hostProcess"):
        yield "pod: windowsOptions.hostProcess"


def _restricted(pod: dict[str, Any]) -> Iterator[str]:
    for volume in pod.get("volumes") or []:
        types = set(volume) - _VOLUME_META
        if not types <= RESTRICTED_VOLUMES:
            yield f"volume {volume.get('name')}: type {sorted(types - RESTRICTED_VOLUMES)}"
    pod_ctx = pod.get("securityContext") or {}
    pod_non_root = pod_ctx.get("runAsNonRoot") is True
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type")
    if pod_ctx.get("runAsUser") == 0:
        yield "pod: runAsUser 0"
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_ALLOWED:
        yield f"pod: seccompProfile {pod_seccomp}"
    for c in containers_of(pod):
        ctx, name = c.get("securityContext") or {}, c.get("name", "?")
        if ctx.get("allowPrivilegeEscalation") is not False:
            yield f"container {name}: allowPrivilegeEscalation is not false"
        non_root = ctx.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            yield f"container {name}: runAsNonRoot is not true (here or on the pod)"
        if ctx.get("runAsUser") == 0:
            yield f"container {name}: runAsUser 0"
        seccomp = (ctx.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in SECCOMP_ALLOWED:
            yield f"container {name}: seccompProfile {seccomp}"
        if seccomp is None and pod_seccomp not in SECCOMP_ALLOWED:
            yield f"container {name}: no RuntimeDefault/Localhost seccompProfile (here or on pod)"
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            yield f"container {name}: capabilities.drop lacks ALL"
        added = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            yield f"container {name}: capabilities.add {sorted(added)}"


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What Pod Security admission at level "restricted" refuses in ``pod`` (a pod spec)."""
    return [*_baseline(pod), *_restricted(pod)]


def hardening_violations(pod: dict[str, Any]) -> list[str]:
    """This project's rules beyond "restricted": read-only root, seccomp on each container."""
    errors = []
    for c in containers_of(pod):
        ctx, name = c.get("securityContext") or {}, c.get("name", "?")
        if ctx.get("readOnlyRootFilesystem") is not True:
            errors.append(f"container {name}: readOnlyRootFilesystem is not true")
        if (ctx.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            errors.append(f"container {name}: seccompProfile is not RuntimeDefault")
    return errors


def violations(pod: dict[str, Any]) -> list[str]:
    """:func:`restricted_violations` and :func:`hardening_violations` together."""
    return restricted_violations(pod) + hardening_violations(pod)
