"""``ray-app migrate``: upgrade every manifest under a data root to the current schema version.

Readers refuse any manifest of another schema version (``ray_app.data.manifests``), so an
upgrade of ray-app never misreads a data root an older one wrote. Migrating upgrades each raw
and feature manifest by the steps from its version to the current one, and validates the
result against the typed model before anything is written: one manifest that cannot be
upgraded stops the run with the root as it was. Each file is then replaced atomically
(``DataRoot.write_json``), so a crash leaves every file whole, in its old or its new format,
and running again finishes the job. A root already current is left untouched.

The upgraded file keeps every field the old one had; only ``schema_version`` and what the
steps change differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray_app.core.errors import RayAppError
from ray_app.core.storage import DataRoot
from ray_app.data.feature_store import FEATURES, MANIFEST
from ray_app.data.ingest import LATEST, MANIFEST_LOCK, MANIFEST_LOCK_TIMEOUT_S, MANIFESTS, RAW
from ray_app.data.manifests import (
    SCHEMA_VERSION,
    FeatureManifest,
    ManifestFormatError,
    RawManifest,
    parse_manifest,
)

Payload = dict[str, Any]


class MigrationError(RayAppError):
    """A data root that cannot be migrated; nothing in it was changed."""


def _first_versioned(payload: Payload) -> Payload:
    """Unversioned (before schema versions) to 1: version 1 kept the fields as they were."""
    return payload


# STEPS[n] upgrades a manifest of schema version n to n + 1; no schema_version is version 0.
STEPS: tuple[Callable[[Payload], Payload], ...] = (_first_versioned,)


def upgrade(payload: Payload, where: str) -> Payload:
    """``payload`` at the current schema version; ManifestFormatError for a newer one."""
    found = payload.get("schema_version", 0)
    if not isinstance(found, int) or found < 0:
        raise ManifestFormatError(f"{where}: schema_version {found!r} is not a version")
    if found > SCHEMA_VERSION:
        raise ManifestFormatError(
            f"{where} has schema version {found}, newer than this ray-app writes "
            f"({SCHEMA_VERSION}): upgrade ray-app instead"
        )
    for version in range(found, SCHEMA_VERSION):
        payload = {**STEPS[version](payload), "schema_version": version + 1}
    return payload


@dataclass(frozen=True)
class ManifestUpgrade:
    """One manifest file to rewrite: where, from which version, and its upgraded content."""

    parts: tuple[str, ...]
    path: str
    from_version: int | None
    payload: Payload


@dataclass(frozen=True)
class Migration:
    """What a migration changed (or, on a dry run, would change) and what was current."""

    data_root: str
    upgraded: list[ManifestUpgrade]
    current: int
    dry_run: bool


def _manifest_files(
    root: DataRoot,
) -> list[tuple[type[RawManifest | FeatureManifest], tuple[str, ...]]]:
    """Every raw and feature manifest under ``root`` with the model it is read as."""
    raw = [
        (RAW, MANIFESTS, name)
        for name in root.list_files(RAW, MANIFESTS)
        if name.endswith(".json") and name != LATEST
    ]
    features = [
        (FEATURES, version, MANIFEST)
        for version in root.list_dirs(FEATURES)
        if root.exists(FEATURES, version, MANIFEST)
    ]
    return [(RawManifest, p) for p in raw] + [(FeatureManifest, p) for p in features]


def plan_migration(root: DataRoot) -> tuple[list[ManifestUpgrade], int]:
    """(the manifests to rewrite, upgraded and validated; how many are current already)."""
    upgrades, current = [], 0
    for model, parts in _manifest_files(root):
        where = root.display(*parts)
        try:
            payload = root.read_json(*parts) or {}
        except ValueError as exc:
            raise ManifestFormatError(f"{where} is not JSON: {exc}") from None
        if payload.get("schema_version") == SCHEMA_VERSION:
            current += 1
            continue
        upgraded = upgrade(payload, where)
        parse_manifest(model, upgraded, where)  # never write what the readers would refuse
        upgrades.append(ManifestUpgrade(parts, where, payload.get("schema_version"), upgraded))
    return upgrades, current


def migrate(data_root: str, *, dry_run: bool = False) -> Migration:
    """Upgrade every manifest under ``data_root`` in place (``dry_run``: only say which).

    Holds the raw manifest lock, so no ingest extends a manifest while it is rewritten.
    """
    root = DataRoot(data_root)
    if not root.exists():
        raise MigrationError(f"data root {root.display()} does not exist")
    with root.lock(MANIFEST_LOCK, MANIFEST_LOCK_TIMEOUT_S):
        upgrades, current = plan_migration(root)
        if not dry_run:
            for change in upgrades:
                root.write_json(change.payload, *change.parts)
    return Migration(root.display(), upgrades, current, dry_run)
