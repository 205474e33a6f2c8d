"""charts/ray-app through helm: lint it and render it, offline, for tests/infra.

helm comes from ``make tools-helm`` (``.tools/bin/helm``) or PATH; where it is absent the
caller's test skips with :data:`HELM_MISSING`. Renders are cached per environment, so the
chart is templated once per test session.
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra import project

CHART = project.CHART
NAMESPACE = "ray-app"
RELEASE = "ray-app"
ENVIRONMENTS = ("dev", "prod")
# Prod renders only an image pinned by digest; until CI has written one into values.yaml the
# tests render prod with this stand-in.
STAND_IN_DIGEST = "sha256:" + "0" * 64
HELM_MISSING = "helm not found: run `make tools-helm` (tests/infra/install_helm.py)"
_SOURCE = re.compile(r"^# Source: [^/]+/(?P<path>.+)$", re.MULTILINE)


def helm() -> str:
    """The helm binary (``make tools-helm``'s first, else PATH's); skips the calling test where
    there is none."""
    pinned = project.TOOLS_BIN / "helm"
    tool = str(pinned) if pinned.is_file() else project.find_tool("helm")
    if tool is None:
        pytest.skip(HELM_MISSING)
    return tool


def values_file(env: str) -> Path:
    return CHART / f"values-{env}.yaml"


def env_args(env: str) -> list[str]:
    """helm's value arguments for an environment, as its Argo CD Application gives them."""
    args = ["--values", str(values_file(env))]
    if env == "prod" and not default_values()["image"]["digest"]:
        args += ["--set", f"image.digest={STAND_IN_DIGEST}"]
    return args


@functools.cache
def default_values() -> dict[str, Any]:
    with (CHART / "values.yaml").open(encoding="utf-8") as fh:
        data: dict[str, Any] = yaml.safe_load(fh)
    return data


def run(*args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    """``helm <args...>`` with the chart's path appended where ``{chart}`` is given."""
    command = [helm(), *(str(chart) if a == "{chart}" else a for a in args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def template_text(*extra: str, chart: Path = CHART) -> str:
    done = run("template", RELEASE, "{chart}", "--namespace", NAMESPACE, *extra, chart=chart)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip())
    return done.stdout


def parse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(template path, document) of each object in ``helm template`` output."""
    out = []
    for chunk in re.split(r"^---\s*$", text, flags=re.MULTILINE):
        source = _SOURCE.search(chunk)
        for doc in yaml.safe_load_all(chunk):
            if doc:
                out.append((source["path"] if source else "?", doc))
    return out


@functools.cache
def _rendered(env: str) -> tuple[tuple[str, dict[str, Any]], ...]:
    return tuple(parse(template_text(*env_args(env))))


def rendered(env: str = "dev") -> list[dict[str, Any]]:
    """Every object the chart renders for ``env`` (deep copies are the caller's business)."""
    return [doc for _, doc in _rendered(env)]


def rendered_from(template: str, env: str = "dev") -> list[dict[str, Any]]:
    """The objects of one template file, e.g. ``templates/ray-service.yaml``."""
    return [doc for path, doc in _rendered(env) if path == template]


def find(kind: str, env: str = "dev", name: str | None = None) -> list[dict[str, Any]]:
    return [
        d
        for d in rendered(env)
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
