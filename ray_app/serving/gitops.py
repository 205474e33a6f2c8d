"""Serving changes as commits: where git, not ``serve deploy``, owns what a RayService serves.

On Kubernetes the RayService's ``serveConfigV2`` is the chart's copy of ``serve_config.yaml``
(``charts/ray-app/files/serve_config.yaml``) and Argo CD applies whatever the tracked branch
holds, with self-heal on. A rollout there does not talk to Ray: it writes the new
``user_config`` of the deployments (A/B weights, the shadow, pinned model versions) into both
files of a git checkout and commits them; Argo CD then syncs the RayService and KubeRay updates
the Serve applications in place. ``serve deploy`` stays the way for a local or ad-hoc cluster.

:func:`apply_serving_change` is that step. It changes only ``deployments[].user_config`` (never
the application's ``args``, which would restart every replica), keeps the file's leading
comments, writes both files in one rename each, and with ``commit=True`` commits exactly those
two paths. :func:`chart_copy_is_current` is what ``make manifests`` and the tests check.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ray_app.core.errors import RayAppError

SERVE_CONFIG = Path("serve_config.yaml")
CHART_SERVE_CONFIG = Path("charts/ray-app/files/serve_config.yaml")
APPLICATION = "ray-app"


class GitOpsError(RayAppError):
    """A serving change that cannot be written or committed; the message is one line."""


@dataclass(frozen=True)
class ServingChange:
    """What :func:`apply_serving_change` did: the files written and the commit, if any."""

    changed: bool
    paths: tuple[Path, ...]
    commit: str | None


def split_header(text: str) -> tuple[str, str]:
    """(the leading comment and blank lines, the rest) of a YAML file's text."""
    lines = text.splitlines(keepends=True)
    n = 0
    while n < len(lines) and (not lines[n].strip() or lines[n].lstrip().startswith("#")):
        n += 1
    return "".join(lines[:n]), "".join(lines[n:])


def _application(config: Any, name: str) -> dict[str, Any]:
    apps = config.get("applications", []) if isinstance(config, dict) else []
    for app in apps:
        if isinstance(app, dict) and app.get("name") == name:
            return app
    raise GitOpsError(f"the serve config has no application named {name!r}")


def render_change(
    text: str, user_configs: Mapping[str, Mapping[str, Any]], application: str = APPLICATION
) -> str:
    """``text`` (a Serve config file) with the named deployments' ``user_config`` replaced.

    Every name must be a deployment the application already lists: a typo must not add one.
    """
    header, body = split_header(text)
    try:
        config = yaml.safe_load(body)
    except yaml.YAMLError as exc:
        raise GitOpsError(f"the serve config is not valid YAML: {exc}") from None
    app = _application(config, application)
    deployments = {d.get("name"): d for d in app.get("deployments", []) if isinstance(d, dict)}
    unknown = sorted(set(user_configs) - set(deployments))
    if unknown:
        raise GitOpsError(
            f"application {application!r} has no deployment {', '.join(map(repr, unknown))}; "
            f"it has {', '.join(map(repr, sorted(map(str, deployments))))}"
        )
    for name, user_config in user_configs.items():
        deployments[name]["user_config"] = dict(user_config)
    return header + yaml.safe_dump(config, sort_keys=False)


def _write(path: Path, text: str) -> None:
    """Replace ``path`` in one rename, so a reader (or git) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _git(checkout: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(checkout), *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        raise GitOpsError(f"git {args[0]} failed in {checkout}: {reason[-1] if reason else '?'}")
    return done.stdout.strip()


def chart_copy_is_current(checkout: Path) -> bool:
    """Whether the chart's copy holds the checkout's serve_config.yaml, byte for byte."""
    copy = checkout / CHART_SERVE_CONFIG
    source = checkout / SERVE_CONFIG
    return copy.is_file() and copy.read_bytes() == source.read_bytes()


def apply_serving_change(
    checkout: Path,
    user_configs: Mapping[str, Mapping[str, Any]],
    *,
    commit: bool = False,
    message: str | None = None,
    application: str = APPLICATION,
) -> ServingChange:
    """Write deployments' ``user_config`` into ``checkout``'s serve config and chart copy.

    ``user_configs`` maps deployment names (``Ingress``, ``champion``, ``challenger``) to their
    whole new ``user_config``. With ``commit``, the two files (and nothing else staged) are
    committed with ``message``; pushing is left to the caller, whose credentials it is.
    Nothing is written or committed when the files already say the same.
    """
    source = checkout / SERVE_CONFIG
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GitOpsError(f"{source} does not exist: not a ray-app checkout") from None
    new = render_change(text, user_configs, application)
    if yaml.safe_load(new) == yaml.safe_load(text):
        new = text  # the same config: keep the file as it is written
    targets = (SERVE_CONFIG, CHART_SERVE_CONFIG)
    if new == text and chart_copy_is_current(checkout):
        return ServingChange(changed=False, paths=(), commit=None)
    if commit:
        _git(checkout, "rev-parse", "--is-inside-work-tree")
    for target in targets:
        _write(checkout / target, new)
    if not commit:
        return ServingChange(changed=True, paths=targets, commit=None)
    paths = [t.as_posix() for t in targets]
    _git(checkout, "add", "--", *paths)
    summary = message or f"serving: new user_config for {', '.join(sorted(user_configs))}"
    _git(checkout, "commit", "--quiet", "--message", summary, "--only", "--", *paths)
    return ServingChange(changed=True, paths=targets, commit=_git(checkout, "rev-parse", "HEAD"))
