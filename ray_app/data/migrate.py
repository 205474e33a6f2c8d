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

Schema version 2 keeps every data version's bars (content-addressed partitions). Version 1
wrote each ticker's bars in place (``raw/ticker=<T>/bars.parquet``), so only the bars of the
last ingest survive: the migration copies each such file to its content-addressed name, points
every manifest entry whose hash it holds there, and marks the entries whose bars were
overwritten as unreadable (``path`` null). The copies are written before any manifest, and the
old files are deleted only after every manifest is, so a crash at any point loses nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray_app.core.errors import RayAppError
from ray_app.core.storage import DataRoot
from ray_app.data.feature_store import FEATURES, MANIFEST
from ray_app.data.ingest import (
    LATEST,
    MANIFEST_LOCK,
    MANIFEST_LOCK_TIMEOUT_S,
    MANIFESTS,
    RAW,
    partition,
)
from ray_app.data.manifests import (
    SCHEMA_VERSION,
    FeatureManifest,
    ManifestFormatError,
    RawManifest,
    parse_manifest,
)

Payload = dict[str, Any]
LEGACY_BARS = "bars.parquet"  # schema version 1's one partition per ticker, overwritten


class MigrationError(RayAppError):
    """A data root that cannot be migrated; nothing in it was changed."""


@dataclass(frozen=True)
class LegacyBars:
    """A schema version 1 partition, ``raw/ticker=<T>/bars.parquet``, and the content-addressed
    file it becomes."""

    ticker: str
    hash: str

    @property
    def parts(self) -> tuple[str, ...]:
        return (RAW, f"ticker={self.ticker}", LEGACY_BARS)

    @property
    def target(self) -> str:
        return partition(self.ticker, self.hash)


@dataclass(frozen=True)
class Partitions:
    """The raw partitions a manifest entry can point to once the legacy files are copied."""

    paths: frozenset[str]


def _first_versioned(payload: Payload, _: Partitions) -> Payload:
    """Unversioned (before schema versions) to 1: version 1 kept the fields as they were."""
    return payload


def _content_addressed(payload: Payload, stored: Partitions) -> Payload:
    """1 to 2: each raw entry's ``path`` is its content-addressed file below the root, or None
    when no stored file holds its bars (a later ingest overwrote them)."""
    if "spec_hash" in payload:  # a feature manifest: unchanged
        return payload
    tickers = {}
    for ticker, entry in payload["tickers"].items():
        path = partition(ticker, entry["hash"])
        tickers[ticker] = {**entry, "path": path if path in stored.paths else None}
    return {**payload, "tickers": tickers}


# STEPS[n] upgrades a manifest of schema version n to n + 1; no schema_version is version 0.
STEPS: tuple[Callable[[Payload, Partitions], Payload], ...] = (
    _first_versioned,
    _content_addressed,
)


def upgrade(payload: Payload, where: str, stored: Partitions) -> Payload:
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
        payload = {**STEPS[version](payload, stored), "schema_version": version + 1}
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
    moved: list[str]  # legacy partitions copied to their content-addressed name
    unreadable: dict[str, list[str]]  # data version -> tickers whose bars were overwritten

    @property
    def changed(self) -> bool:
        return bool(self.upgraded or self.moved)


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


def legacy_partitions(root: DataRoot) -> list[LegacyBars]:
    """Every schema version 1 partition still under ``root``, with its content hash."""
    found = []
    for folder in root.list_dirs(RAW):
        parts = (RAW, folder, LEGACY_BARS)
        if folder.startswith("ticker=") and root.exists(*parts):
            digest = root.read_metadata(*parts).get("ray_app.hash")
            if digest is None:
                raise ManifestFormatError(f"{root.display(*parts)} has no ray_app.hash")
            found.append(LegacyBars(folder.removeprefix("ticker="), digest))
    return found


def _stored_partitions(root: DataRoot, legacy: list[LegacyBars]) -> Partitions:
    """The content-addressed files there are now, and those the legacy files become."""
    present = {
        f"{RAW}/{folder}/{name}"
        for folder in root.list_dirs(RAW)
        for name in root.list_files(RAW, folder)
        if name != LEGACY_BARS
    }
    return Partitions(frozenset(present | {bars.target for bars in legacy}))


def plan_migration(root: DataRoot, stored: Partitions) -> tuple[list[ManifestUpgrade], int]:
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
        upgraded = upgrade(payload, where, stored)
        parse_manifest(model, upgraded, where)  # never write what the readers would refuse
        upgrades.append(ManifestUpgrade(parts, where, payload.get("schema_version"), upgraded))
    return upgrades, current


def _unreadable(upgrades: list[ManifestUpgrade]) -> dict[str, list[str]]:
    """Data version -> the tickers an upgraded raw manifest lists without readable bars."""
    found = {}
    for change in upgrades:
        if change.parts[0] == RAW:
            lost = sorted(t for t, e in change.payload["tickers"].items() if e["path"] is None)
            if lost:
                found[change.payload["version"]] = lost
    return found


def migrate(data_root: str, *, dry_run: bool = False) -> Migration:
    """Upgrade every manifest under ``data_root`` in place (``dry_run``: only say which).

    Holds the raw manifest lock, so no ingest extends a manifest while it is rewritten, and
    no ``data gc`` removes a partition.
    """
    root = DataRoot(data_root)
    if not root.exists():
        raise MigrationError(f"data root {root.display()} does not exist")
    with root.lock(MANIFEST_LOCK, MANIFEST_LOCK_TIMEOUT_S):
        legacy = legacy_partitions(root)
        upgrades, current = plan_migration(root, _stored_partitions(root, legacy))
        if not dry_run:
            for bars in legacy:  # the copies first: a manifest never points to a missing file
                if not root.exists(*bars.target.split("/")):
                    root.write_bytes(root.read_bytes(*bars.parts), *bars.target.split("/"))
            for change in upgrades:
                root.write_json(change.payload, *change.parts)
            for bars in legacy:  # and the old files last, once nothing reads them
                root.delete(*bars.parts)
    return Migration(
        root.display(),
        upgrades,
        current,
        dry_run,
        [root.display(*bars.parts) for bars in legacy],
        _unreadable(upgrades),
    )
