"""Which processes belong to a recorded head: by its session, node, raylet and recorded
process ids, never by what every Ray cluster on the machine shares; no Ray."""

from __future__ import annotations

from typing import Any

import pytest

from ray_app.ops.cluster import ClusterState, owns

SESSION = "session_2026-11-30_03-48-07_295282_9755"
NODE = "f9e67d2d0f719c8ad3959ddae6042b2769d53ee318c56c14f1c4675e"
HEAD = ClusterState(
    gcs_address="127.0.0.1:6380",
    dashboard_url="http://127.0.0.1:8265",
    token_path="/root/.ray/auth_token",
    haproxy=True,
    started_at=100.0,
    session_dir=f"/tmp/ray/{SESSION}",
    node_id=NODE,
    gcs_pid=10,
    raylet_pid=11,
    pids={"10": 101.0, "11": 102.0},
)


def info(pid: int = 50, created: float = 200.0, cmdline: str | None = "", **environ: str) -> Any:
    """psutil's info of a process; None where it may not be read (another user's)."""
    readable = cmdline is not None
    return {
        "pid": pid,
        "create_time": created,
        "cmdline": cmdline.split() if readable else None,
        "environ": environ if readable else None,
    }


@pytest.mark.parametrize(
    "process",
    [
        info(10, 101.0),  # the recorded GCS
        info(cmdline=f"python -u log_monitor.py --session-dir=/tmp/ray/{SESSION}"),
        info(cmdline=f"haproxy -db -f /tmp/haproxy-serve/{NODE}/haproxy.cfg"),
        info(cmdline="ray::RuntimeEnvAgent", RAY_NODE_ID=NODE),
        info(cmdline="ray::ServeController", RAY_RAYLET_PID="11"),
    ],
)
def test_the_heads_own_processes_are_found(process: Any) -> None:
    assert owns(HEAD, process, raylet_pid="11")


@pytest.mark.parametrize(
    "process",
    [
        info(10, 999.0),  # the GCS's id, reused by another process
        info(cmdline="/venv/bin/ray/core/src/ray/gcs/gcs_server --gcs_server_port=6380"),
        info(cmdline="python -u monitor.py --session-dir=/tmp/ray/session_other"),
        info(cmdline="ray::ServeController", RAY_RAYLET_PID="12"),
        info(cmdline="ray::IDLE", RAY_NODE_ID="another-node"),
        info(cmdline=None),  # another user's process: nothing readable
    ],
)
def test_other_clusters_processes_are_left_alone(process: Any) -> None:
    assert not owns(HEAD, process, raylet_pid="11")


def test_a_reused_raylet_id_marks_nothing() -> None:
    assert not owns(HEAD, info(cmdline="ray::ServeController", RAY_RAYLET_PID="11"), None)


def test_two_heads_get_disjoint_replica_ports_and_a_busy_block_is_skipped() -> None:
    """Each head's Serve replicas and fallback proxy listen on a block of their own (Serve
    takes them from the same defaults on every head), below the ephemeral range, and never on
    a port in use."""
    from ray_app.ops.cluster import INGRESS_PORTS, ingress_port_ranges

    def block(env: dict[str, str]) -> range:
        ports = [int(v) for v in env.values()]
        assert int(env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"]) not in (8500, 9500)
        return range(min(ports), max(ports) + 1)

    def free(port: int) -> bool:
        return False

    first, second = block(ingress_port_ranges(6380, free)), block(ingress_port_ranges(6381, free))
    assert len(first) == len(second) == 2 * INGRESS_PORTS + 2
    assert not set(first) & set(second) and first.stop <= 32768
    busy = first.start + 150
    moved = block(ingress_port_ranges(6380, lambda port: port == busy))
    assert busy not in moved
