"""Facts about the project the infrastructure files must agree with: pins, paths, versions."""

from __future__ import annotations

import fnmatch
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from tests.infra.crd import REPO, SCHEMAS

PYPROJECT = REPO / "pyproject.toml"
CLUSTER = REPO / "cluster"
ARGOCD = CLUSTER / "argocd"
CHART = REPO / "charts" / "ray-app"
TOOLS_BIN = REPO / ".tools" / "bin"
DOCKER = REPO / "docker"
TERRAFORM = REPO / "terraform"
MONITORING = REPO / "monitoring"
GRAFANA_SCHEMAS = SCHEMAS / "grafana-dashboard"
KUBERAY_VERSION_FILE = SCHEMAS / "kuberay-crds" / "VERSION"
# Kubernetes version built-in kinds are validated against: terraform/'s EKS version
# (test_terraform checks that the two agree).
KUBERNETES_VERSION = "1.35"


@functools.cache
def pyproject() -> dict[str, Any]:
    with PYPROJECT.open("rb") as fh:
        return tomllib.load(fh)


def pinned_version(package: str) -> str:
    """The exact version a ``package==X`` dependency of pyproject.toml pins (extras allowed)."""
    for line in pyproject()["project"]["dependencies"]:
        req = Requirement(line)
        if req.name.lower() != package.lower():
            continue
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            raise AssertionError(f"{package} is not pinned with == in pyproject.toml: {line!r}")
        return specs[0].version
    raise AssertionError(f"{package} is not a dependency in pyproject.toml")


def ray_version() -> str:
    return pinned_version("ray")


def repository_files(pattern: str) -> list[Path]:
    """Files under the repository whose name matches ``pattern`` (fnmatch), outside hidden and
    generated folders (.venv, .tools, .git, data)."""
    skip = {"data", "node_modules", "__pycache__"}
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in skip]
        found += [Path(root) / f for f in fnmatch.filter(files, pattern)]
    return sorted(found)


def find_tool(name: str) -> str | None:
    """An executable on PATH, next to this interpreter (a venv's bin/) or in .tools/bin (the
    Makefile's tools-* targets), else None."""
    here = str(Path(sys.executable).parent)
    path = os.pathsep.join([here, str(TOOLS_BIN), os.defpath])
    return shutil.which(name) or shutil.which(name, path=path)


def kustomize_build(folder: Path) -> list[dict[str, Any]]:
    """``kustomize build`` (or ``kubectl kustomize``) of ``folder``, as Argo CD would."""
    tool = find_tool("kustomize") or find_tool("kubectl")
    if tool is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    verb = "build" if Path(tool).name == "kustomize" else "kustomize"
    done = subprocess.run(
        [tool, verb, str(folder)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]
