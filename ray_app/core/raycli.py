"""Ray's token for this process and the Ray CLIs it starts, and those CLIs' real errors.

Ray's clients (``ray.init`` with an address, ``ray job submit``, ``serve deploy``) send the
cluster's token only when ``RAY_AUTH_MODE=token`` is in their environment, which a plain
shell does not set; Ray turns it on by itself only when ``ray.init()`` or ``ray start``
finds a token for a local cluster. ``token_env`` does the same for every client, so no
caller has to export anything. Sending a token to a cluster without authentication is
harmless: it ignores it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

AUTH_MODE = "RAY_AUTH_MODE"
TOKEN = "RAY_AUTH_TOKEN"
TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"
RAY_DEFAULT_TOKEN = Path("~/.ray/auth_token")

# The last line of a Python traceback: `ray.exceptions.AuthenticationError: ...`.
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit)\b")


def token_env(
    token_path: Path = RAY_DEFAULT_TOKEN, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """The variables that make a Ray client send the token; empty when ``environ`` already
    names the mode (the caller chose) or there is no token to send.

    The token is ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` when set, else ``token_path``.
    """
    if AUTH_MODE in environ:
        return {}
    given = environ.get(TOKEN_PATH)
    if environ.get(TOKEN) or (given and Path(given).expanduser().is_file()):
        return {AUTH_MODE: "token"}
    path = token_path.expanduser()
    return {AUTH_MODE: "token", TOKEN_PATH: str(path)} if path.is_file() else {}


def use_token(token_path: Path = RAY_DEFAULT_TOKEN) -> None:
    """Token mode for this process and every process it starts, as Ray's own ``ray.init``
    does for a local cluster it finds."""
    env = token_env(token_path)
    if not env:
        return
    os.environ.update(env)
    if "ray._raylet" in sys.modules:  # Ray read RAY_AUTH_MODE when imported: re-read it
        from ray._raylet import Config  # type: ignore[attr-defined]

        Config.initialize("")


def ray_cli(name: str) -> str:
    """A Ray CLI (``ray``, ``serve``) of this interpreter's environment, else from PATH."""
    path = Path(sys.executable).with_name(name)
    return str(path) if path.exists() else name


def failure(result: subprocess.CompletedProcess[str]) -> str:
    """Why a Ray CLI failed, in one line: the exception its traceback ends with, else the
    last line of stderr. Its stdout only logs progress ("Deploying from config file")."""
    lines = [ln.strip() for ln in (result.stderr or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if _EXCEPTION_LINE.match(ln)]
    if errors:
        return errors[-1]
    if lines:
        return lines[-1]
    out = [ln.strip() for ln in (result.stdout or "").splitlines() if ln.strip()]
    return out[-1] if out else f"exit status {result.returncode}, no output"
