"""``ray-app data gc``: what must survive, gathered from the registry and from serving.

The data layer plans a gc from the manifests (``ray_app.data.retention``); what it cannot see
is gathered here, since only this layer reads both the registry and Serve's configuration:

- every registered model version's lineage (its ``data_version`` and ``feature_version``
  tags), whatever its alias: a version can be promoted, rolled back to or audited later. When
  the registry cannot be read the gc is refused, never run on a guess;
- the feature set serving reads: the one the ingress pins (``feature_version`` in the running
  cluster's Serve config, or in the desired ``pipeline.serve_config`` file), else the newest,
  which ``features/_latest.json`` names and the plan always keeps. A dashboard that does not
  answer means no cluster serves there; one that refuses to answer refuses the gc.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_app.core.errors import RayAppError
from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.ingest import MANIFEST_LOCK, MANIFEST_LOCK_TIMEOUT_S
from ray_app.data.retention import GcPlan, Protected, collect, plan_gc
from ray_app.registry.tracking import tracking_uri


class GcRefusedError(RayAppError):
    """A gc that cannot know every version it must keep; nothing was removed."""


def _why(found: dict[str, list[str]], version: str | None, reason: str) -> None:
    if version:
        found.setdefault(version, []).append(reason)


def _registry_has_no_store(settings: Settings) -> bool:
    """Whether the registry is the default SQLite file under a local data root and it does
    not exist yet (nothing was ever registered; reading would create it)."""
    if settings.mlflow.tracking_uri or "://" in settings.data_root:
        return False
    return not (Path(settings.data_root).expanduser() / "mlflow.db").exists()


def registry_lineage(settings: Settings) -> Protected:
    """The data and feature versions every registered model version was trained on."""
    if _registry_has_no_store(settings):
        return Protected()
    from ray_app.registry.versions import list_versions

    try:
        versions = list_versions(settings)
    except Exception as exc:  # any failure: the lineage is unknown, so nothing may go
        raise GcRefusedError(
            f"cannot read the model registry at {tracking_uri(settings)} "
            f"({type(exc).__name__}: {exc}); refusing to gc: a registered model's lineage "
            "may name any data version"
        ) from None
    data: dict[str, list[str]] = {}
    features: dict[str, list[str]] = {}
    name = settings.mlflow.model_name
    for row in versions:
        aliases = f" ({', '.join(row['aliases'])})" if row["aliases"] else ""
        reason = f"lineage of model {name} v{row['version']}{aliases}"
        _why(data, row["lineage"].get("data_version"), reason)
        _why(features, row["lineage"].get("feature_version"), reason)
    return Protected(data_versions=data, feature_versions=features)


def served_feature_versions(settings: Settings, address: str | None) -> dict[str, list[str]]:
    """Feature version -> why, for each one serving pins (running cluster, desired file)."""
    from ray_app.serving.rollout import (
        DashboardUnreachableError,
        RolloutError,
        auth_headers,
        dashboard_address,
        load_config,
        running_config,
        serving_state,
    )

    found: dict[str, list[str]] = {}
    configs: list[tuple[str, dict[str, Any] | None]] = []
    where = dashboard_address(address)
    try:
        configs.append(
            (f"served by the cluster at {where}", running_config(where, auth_headers(settings)))
        )
    except DashboardUnreachableError:
        pass  # no cluster runs there: it serves nothing
    except RolloutError as exc:
        raise GcRefusedError(f"cannot tell what serving reads: {exc}; refusing to gc") from None
    desired = settings.pipeline.serve_config
    if desired.is_file():
        configs.append((f"pinned in {desired}", load_config(desired)))
    for reason, config in configs:
        if config is not None:
            state = serving_state(config)
            _why(found, state.ingress.feature_version, reason)
            _why(found, state.args.feature_version, reason)
    return found


@dataclass(frozen=True)
class GcRun:
    """A gc's plan, and whether it was carried out."""

    data_root: str
    plan: GcPlan
    dry_run: bool


def run_gc(settings: Settings, keep: int, *, dry_run: bool, address: str | None = None) -> GcRun:
    """Plan, and unless ``dry_run`` carry out, a gc keeping the ``keep`` newest versions and
    every protected one, under the root's ``raw-manifest`` lock (no ingest records meanwhile)."""
    root = DataRoot(settings.data_root)
    with root.lock(MANIFEST_LOCK, MANIFEST_LOCK_TIMEOUT_S):
        lineage = registry_lineage(settings)
        features = dict(lineage.feature_versions)
        for version, reasons in served_feature_versions(settings, address).items():
            features.setdefault(version, []).extend(reasons)
        protected = lineage.model_copy(update={"feature_versions": features})
        plan = plan_gc(root, keep, protected, dt.datetime.now(dt.timezone.utc))
        if not dry_run:
            collect(root, plan)
    return GcRun(root.display(), plan, dry_run)
