"""Load for the tests that break things on purpose: clients that send prediction requests as
fast as they go and keep every answer, and what the chaos targets are measured with.

A request is lost when it gets a non-2xx answer, a connection error or no answer within the
client's timeout (10 s, as the issue's measurements counted). Rates are answered requests per
second over a window, so a test can compare the rate before a replica is killed with the rate
once the node is back to full strength.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests

TIMEOUT_S = 10.0
POLL_S = 0.25  # how often recovery_s looks; well inside the 10 s it measures


@dataclass(frozen=True)
class Answer:
    """One request: when it ended, its status (0: connection error, -1: timeout), what served
    it, and why it failed."""

    at: float
    status: int
    variant: str | None = None
    version: int | None = None
    feature_date: str | None = None
    error: str | None = None


@dataclass
class Load:
    """Every answer the clients got, in the order they ended."""

    answers: list[Answer] = field(default_factory=list)

    @property
    def lost(self) -> list[Answer]:
        return [a for a in self.answers if not 200 <= a.status < 300]

    def counts(self) -> dict[str, int]:
        return {
            "sent": len(self.answers),
            "lost": len(self.lost),
            "non_2xx": sum(a.status > 0 and not 200 <= a.status < 300 for a in self.answers),
            "connection_errors": sum(a.status == 0 for a in self.answers),
            "timeouts": sum(a.status == -1 for a in self.answers),
        }

    def rate(self, start: float, end: float) -> float:
        """Answered (2xx) requests per second between ``start`` and ``end`` (monotonic)."""
        ok = sum(start <= a.at < end and 200 <= a.status < 300 for a in self.answers)
        return ok / (end - start)


def _ask(session: requests.Session, url: str, body: dict[str, Any]) -> Answer:
    try:
        reply = session.post(f"{url}/v1/predict", json=body, timeout=TIMEOUT_S)
    except requests.Timeout as exc:
        return Answer(time.monotonic(), -1, error=repr(exc))
    except requests.RequestException as exc:  # refused, reset, or cut in the middle
        return Answer(time.monotonic(), 0, error=repr(exc))
    if reply.status_code != 200:
        return Answer(time.monotonic(), reply.status_code, error=reply.text[:200])
    data = reply.json()
    first = data["predictions"][0]["feature_date"]
    return Answer(time.monotonic(), 200, data["variant"], data["model_version"], first)


# The clients yield the CPU to everything else (Ray starts its workers at niceness 15): on a
# machine of 2 cores clients sending as fast as they go would otherwise starve the servers,
# a replica that is starting above all, as clients on other machines do not.
CLIENT_NICENESS = 19


@contextmanager
def load(
    url: str,
    bodies: Callable[[int], dict[str, Any]],
    clients: int = 4,
    headers: dict[str, str] | None = None,
) -> Iterator[Load]:
    """``clients`` threads, each with its own keep-alive session (sending ``headers``: the
    API key), sending ``bodies(i)`` in a loop until the block ends."""
    out, stop = Load(), threading.Event()

    def client(offset: int) -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CLIENT_NICENESS)
        with requests.Session() as session:
            session.headers.update(headers or {})
            i = offset
            while not stop.is_set():
                out.answers.append(_ask(session, url, bodies(i)))
                i += clients

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield out
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def replica_pids(dashboard: str, app: str = "ray-app") -> dict[str, list[int]]:
    """The process ids of the live replicas of every deployment of ``app`` on the cluster
    whose dashboard is ``dashboard`` (named: other Ray clusters may run on the same machine),
    from one call of the state API."""
    from ray.util.state import list_actors

    actors = list_actors(address=dashboard, filters=[("state", "=", "ALIVE")], limit=10_000)
    pids: dict[str, list[int]] = {}
    for actor in actors:
        _, found, rest = (actor.name or "").partition(f"{app}#")
        if found and "#" in rest:
            pids.setdefault(rest.split("#")[0], []).append(int(actor.pid))
    return pids


def kill_replica(dashboard: str, deployment: str) -> tuple[int, float]:
    """``kill -9`` one replica process of ``deployment``; its pid and when (monotonic) it was
    killed: after the state API found it, which takes a while on a loaded machine."""
    pid = replica_pids(dashboard)[deployment][0]
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    return pid, killed_at


def all_running(expected: dict[str, int], app: str = "ray-app") -> bool:
    """Whether ``serve status`` shows exactly ``expected`` RUNNING replicas per deployment,
    and no replica in any other state."""
    from ray import serve

    deployments = serve.status().applications[app].deployments
    states = {name: dict(d.replica_states) for name, d in deployments.items()}
    return all(states.get(name) == {"RUNNING": n} for name, n in expected.items())


def recovery_s(
    dashboard: str, expected: dict[str, int], killed: int, since: float, timeout_s: float = 60.0
) -> float:
    """Seconds from ``since`` (monotonic) until process ``killed`` is replaced: ``serve
    status`` shows every deployment's replicas RUNNING again after it showed the killed one's
    deployment short of that (it says RUNNING for a dead replica until Serve notices), and the
    live replica processes are as many as expected, none of them ``killed``.

    ``serve status`` is one call to the controller every ``POLL_S``; the state API (through
    the dashboard, slow on a loaded machine) only confirms the processes once status says
    RUNNING, so how long it takes to answer is not counted as recovery, and the measurement
    leaves the CPU to the replica that is starting."""
    deadline, noticed = since + timeout_s, False
    while time.monotonic() < deadline:
        running = all_running(expected)
        at = time.monotonic()
        noticed = noticed or not running
        if running and noticed and replaced(dashboard, expected, killed):
            return at - since
        time.sleep(POLL_S)
    raise TimeoutError(f"replicas not all RUNNING within {timeout_s}s: {expected}")


def replaced(dashboard: str, expected: dict[str, int], killed: int) -> bool:
    """Whether every deployment has its number of live replica processes, none ``killed``."""
    alive = replica_pids(dashboard)
    return all(
        len(alive.get(name, [])) == count and killed not in alive[name]
        for name, count in expected.items()
    )
