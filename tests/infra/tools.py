"""External checkers the infra tests run: check-jsonschema, checkov, amtool, hadolint."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.infra import project

# `make tools-checkov` installs it here (a venv of its own: its pins conflict with Ray's).
CHECKOV = project.REPO / ".tools" / "checkov" / "bin" / "checkov"


def run(
    command: list[str], stdin: str | None = None, timeout: int = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )


def require(name: str, hint: str) -> str:
    """The tool's path, or skip the test saying how to install it."""
    tool = project.find_tool(name)
    if tool is None:
        pytest.skip(f"{name} not installed ({hint})")
    return tool


def check_jsonschema(builtin: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema with one of its vendored schemas (offline: they ship with it)."""
    tool = require("check-jsonschema", "a dev extra: pip install -e '.[dev]'")
    return run([tool, "--builtin-schema", builtin, *map(str, paths)])


def checkov(*args: str) -> subprocess.CompletedProcess[str]:
    """checkov offline: no download of Prisma Cloud guidelines, compact text output."""
    if not CHECKOV.is_file():
        pytest.skip(f"checkov not installed at {CHECKOV} (make tools-checkov)")
    command = [str(CHECKOV), "--skip-download", "--compact", "--quiet", *args]
    return run(command, timeout=300)
