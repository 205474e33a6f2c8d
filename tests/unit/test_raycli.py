"""The token a Ray CLI is run with, and the error line taken from its output; no Ray."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ray_app.core.raycli import failure, token_env

# What `serve deploy` printed when the head refused it (stdout only logs progress).
SERVE_DEPLOY_STDOUT = "2026-11-30 03:49:55,374\tINFO scripts.py:231 -- Deploying from config file"
SERVE_DEPLOY_STDERR = """Traceback (most recent call last):
  File "/venv/bin/serve", line 6, in <module>
    sys.exit(cli())
  File "/venv/lib/python3.11/site-packages/ray/dashboard/modules/dashboard_sdk.py", line 342
    raise AuthenticationError(formatted_error)
ray.exceptions.AuthenticationError: Authentication required: Unauthorized: Missing token

Token authentication is enabled but no authentication token was found. Note: RAY_AUTH_MODE
is currently 'disabled' (not 'token').
"""


def test_a_plain_shell_gets_token_mode_and_the_token_file(tmp_path: Path) -> None:
    token = tmp_path / "auth_token"
    assert token_env(token, {}) == {}  # no token: nothing to send
    token.write_text("secret")
    assert token_env(token, {}) == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


def test_the_token_the_caller_named_is_kept(tmp_path: Path) -> None:
    other = tmp_path / "other_token"
    other.write_text("secret")
    assert token_env(tmp_path / "none", {"RAY_AUTH_TOKEN_PATH": str(other)}) == {
        "RAY_AUTH_MODE": "token"
    }
    assert token_env(tmp_path / "none", {"RAY_AUTH_TOKEN": "secret"}) == {"RAY_AUTH_MODE": "token"}
    assert token_env(other, {"RAY_AUTH_MODE": "disabled"}) == {}  # the caller chose


def test_a_failed_cli_is_named_by_its_exception_not_its_last_log_line() -> None:
    done = subprocess.CompletedProcess([], 1, SERVE_DEPLOY_STDOUT, SERVE_DEPLOY_STDERR)
    assert failure(done) == (
        "ray.exceptions.AuthenticationError: Authentication required: Unauthorized: Missing token"
    )
    assert failure(subprocess.CompletedProcess([], 1, "", "bad port\n")) == "bad port"
    assert failure(subprocess.CompletedProcess([], 1, "last\n", "")) == "last"
    assert failure(subprocess.CompletedProcess([], 3, "", "")) == "exit status 3, no output"
