"""Kubernetes Pod Security Standards, offline: what the "restricted" profile refuses in a pod.

The controls of https://kubernetes.io/docs/concepts/security/pod-security-standards/ (v1.35),
baseline's and restricted's, checked on a PodSpec as the admission controller checks them.
Each violation is one line naming the control, the container or volume, and the value, so a
manifest can list the exceptions it documents and a test can compare the two sets.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# Volume types restricted allows (baseline allows every type but hostPath).
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
SAFE_SYSCTLS = {
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


def _containers(pod: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod.get(kind, []):
            yield f"container {container['name']}", container


def _effective(pod: dict[str, Any], container: dict[str, Any], key: str) -> Any:
    """A securityContext field of the container, else of the pod."""
    own = container.get("securityContext", {})
    return own[key] if key in own else pod.get("securityContext", {}).get(key)


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Every control of the restricted profile (baseline's included) the pod spec breaks."""
    found: list[str] = []
    ctx = pod.get("securityContext", {})
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            found.append(f"{host}: true")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {', '.join(sorted(kinds))}")
    for sysctl in ctx.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            found.append(f"sysctl {sysctl['name']}")
    for where, container in _containers(pod):
        own = container.get("securityContext", {})
        if own.get("privileged"):
            found.append(f"{where}: privileged")
        caps = own.get("capabilities", {})
        added = set(caps.get("add", []))
        if added - {"NET_BIND_SERVICE"}:
            found.append(f"{where}: adds capabilities {sorted(added - {'NET_BIND_SERVICE'})}")
        if "ALL" not in caps.get("drop", []):
            found.append(f"{where}: does not drop ALL capabilities")
        if own.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: allowPrivilegeEscalation not false")
        if _effective(pod, container, "runAsNonRoot") is not True:
            found.append(f"{where}: runAsNonRoot not true")
        if _effective(pod, container, "runAsUser") == 0:
            found.append(f"{where}: runAsUser 0")
        seccomp = (_effective(pod, container, "seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{where}: seccompProfile {seccomp}")
        if own.get("procMount", "Default") != "Default":
            found.append(f"{where}: procMount {own['procMount']}")
        selinux = _effective(pod, container, "seLinuxOptions") or {}
        if selinux.get("user") or selinux.get("role"):
            found.append(f"{where}: seLinuxOptions user/role")
        if selinux.get("type") not in (None, "", "container_t", "container_init_t"):
            found.append(f"{where}: seLinuxOptions type {selinux['type']}")
        apparmor = (_effective(pod, container, "appArmorProfile") or {}).get("type")
        if apparmor == "Unconfined":
            found.append(f"{where}: appArmorProfile Unconfined")
        for port in container.get("ports", []):
            if port.get("hostPort"):
                found.append(f"{where}: hostPort {port['hostPort']}")
        if added - BASELINE_CAPABILITIES:
            found.append(f"{where}: adds non-baseline capabilities")
    return found
