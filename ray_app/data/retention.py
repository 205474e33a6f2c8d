"""Which data versions a data root keeps: pins, and the plan and the work of ``data gc``.

Raw partitions are never overwritten (``ray_app.data.ingest``), so a root grows with every
ingest until old versions are removed. ``plan_gc`` decides from the manifests alone what goes:
every raw version but the ``keep`` newest, the latest, the pinned ones and those the caller
names as protected (a registered model's lineage, what serving reads: ``ray_app.ops.data_gc``
gathers them, since the data layer reads neither the registry nor Serve). A feature set goes
with its data version; the feature set ``_latest.json`` names is kept with its data version.
A partition file goes when no kept manifest names it.

``collect`` removes what a plan names in an order that leaves a readable root after a crash at
any point: feature manifests (a set without one is an unfinished build, ignored by readers),
then their folders, then raw manifests, then the partitions no kept manifest names. The caller
holds the root's ``raw-manifest`` lock across planning and removal, so no ingest records a
manifest in between; an ingest that wrote a partition before the lock and finds it removed
fails that ticker (``ingest._fail_missing_partitions``), so nothing recorded is ever lost.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from ray_app.core.errors import RayAppError
from ray_app.core.identifiers import check_version
from ray_app.core.storage import DataRoot
from ray_app.data.feature_store import (
    FEATURES,
    MANIFEST,
    latest_feature_version,
    read_feature_manifest,
)
from ray_app.data.ingest import (
    MANIFEST_LOCK,
    MANIFEST_LOCK_TIMEOUT_S,
    RAW,
    latest_manifest,
    manifest_path,
    raw_versions,
    read_manifest,
)

PINS = "_pins.json"
# A partition no manifest names is an ingest's in flight (written, not yet recorded) or a
# crashed one's; only one older than this is removed. Removing one in flight would lose no
# data (that ingest fails the ticker), only make it ingest again.
ORPHAN_GRACE = dt.timedelta(hours=24)
LATEST_DATA = "latest data version (LATEST.json)"
LATEST_FEATURES = "latest feature set (features/_latest.json)"


class RetentionError(RayAppError):
    """A pin of a version that does not exist, or a gc that cannot know what to keep."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pin(_Record):
    """A data version kept by ``data gc`` whatever its age, and why."""

    pinned_at: dt.datetime
    note: str = ""


class Pins(_Record):
    """``<data_root>/_pins.json``: data version -> its pin."""

    versions: dict[str, Pin] = Field(default_factory=dict)


class Protected(_Record):
    """Versions that must survive a gc, each with the reasons (a model's lineage, serving)."""

    data_versions: dict[str, list[str]] = Field(default_factory=dict)
    feature_versions: dict[str, list[str]] = Field(default_factory=dict)


class GcPlan(_Record):
    """What a gc keeps (version -> why) and removes; files are paths below the root."""

    keep: int
    kept: dict[str, list[str]]
    removed: list[str]
    kept_features: dict[str, list[str]]
    removed_features: list[str]
    removed_files: list[str]
    removed_bytes: int
    kept_files: int


def read_pins(root: DataRoot) -> Pins:
    return Pins.model_validate(root.read_json(PINS) or {})


def pin(root: DataRoot, version: str, note: str = "") -> Pins:
    """Pin data version ``version`` (it must exist) against gc; the pins after."""
    with root.lock(MANIFEST_LOCK, MANIFEST_LOCK_TIMEOUT_S):
        try:
            read_manifest(root, version)
        except KeyError as exc:
            raise RetentionError(str(exc.args[0])) from None
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        pins = read_pins(root)
        versions = {**pins.versions, version: Pin(pinned_at=now, note=note)}
        return _write_pins(root, Pins(versions=versions))


def unpin(root: DataRoot, version: str) -> Pins:
    """Drop the pin of ``version``; RetentionError naming the pins when it has none."""
    check_version(version, "data version")
    with root.lock(MANIFEST_LOCK, MANIFEST_LOCK_TIMEOUT_S):
        pins = read_pins(root)
        if version not in pins.versions:
            pinned = ", ".join(sorted(pins.versions)) or "none"
            raise RetentionError(f"data version {version} is not pinned (pinned: {pinned})")
        kept = {v: p for v, p in pins.versions.items() if v != version}
        return _write_pins(root, Pins(versions=kept))


def _write_pins(root: DataRoot, pins: Pins) -> Pins:
    root.write_json(pins.model_dump(mode="json"), PINS)
    return pins


def _why(reasons: dict[str, list[str]], version: str, reason: str) -> None:
    reasons.setdefault(version, []).append(reason)


def _kept_versions(
    root: DataRoot, keep: int, protected: Protected, feature_data: dict[str, str]
) -> dict[str, list[str]]:
    """Data version -> why it is kept, for every raw version the gc keeps."""
    newest = raw_versions(root)
    known = {m.version for m in newest}
    kept: dict[str, list[str]] = {}
    for rank, manifest in enumerate(newest[:keep], start=1):
        _why(kept, manifest.version, f"newest {rank} of {keep}")
    latest = latest_manifest(root)
    if latest is not None:
        _why(kept, latest.version, LATEST_DATA)
    for version, pinned in read_pins(root).versions.items():
        note = f": {pinned.note}" if pinned.note else ""
        _why(kept, version, f"pinned on {pinned.pinned_at:%Y-%m-%d}{note}")
    for version, reasons in protected.data_versions.items():
        for reason in reasons:
            _why(kept, version, reason)
    for feature, reasons in protected.feature_versions.items():
        if feature in feature_data:
            for reason in reasons:
                if reason not in kept.get(feature_data[feature], []):  # said once is enough
                    _why(kept, feature_data[feature], f"{reason} (feature set {feature})")
    return {v: r for v, r in kept.items() if v in known}


def _feature_sets(root: DataRoot) -> dict[str, str]:
    """Feature version -> its data version, of every complete feature set."""
    found = {}
    for version in root.list_dirs(FEATURES):
        manifest = read_feature_manifest(root, version)
        if manifest is not None:  # without one: a build in progress or interrupted, left be
            found[version] = manifest.data_version
    return found


def _partitions(root: DataRoot) -> list[str]:
    """Every raw partition file below the root (paths as manifests name them)."""
    return [
        f"{RAW}/{folder}/{name}"
        for folder in root.list_dirs(RAW)
        if folder.startswith("ticker=")
        for name in root.list_files(RAW, folder)
    ]


def plan_gc(root: DataRoot, keep: int, protected: Protected, now: dt.datetime) -> GcPlan:
    """What ``data gc --keep keep`` keeps and removes; reads manifests only, changes nothing."""
    feature_data = _feature_sets(root)
    latest_features = latest_feature_version(root)
    protected_features = dict(protected.feature_versions)
    if latest_features in feature_data:
        protected_features.setdefault(latest_features, []).append(LATEST_FEATURES)
    protected = protected.model_copy(update={"feature_versions": protected_features})
    kept = _kept_versions(root, keep, protected, feature_data)
    manifests = raw_versions(root)
    removed = [m.version for m in manifests if m.version not in kept]
    kept_features: dict[str, list[str]] = {}
    for feature, data_version in feature_data.items():
        if data_version in kept or data_version not in {m.version for m in manifests}:
            reasons = protected_features.get(feature) or [
                f"data version {data_version} kept"
                if data_version in kept
                else f"data version {data_version} not under this root"
            ]
            kept_features[feature] = reasons
    named = {
        entry.path
        for manifest in manifests
        if manifest.version in kept
        for entry in manifest.tickers.values()
        if entry.path
    }
    once_named = {
        entry.path for manifest in manifests for entry in manifest.tickers.values() if entry.path
    }
    removed_files = []
    for path in _partitions(root):
        if path in named:
            continue
        written = root.modified(*path.split("/"))
        if path in once_named or (written is not None and now - written > ORPHAN_GRACE):
            removed_files.append(path)
    return GcPlan(
        keep=keep,
        kept=kept,
        removed=removed,
        kept_features=kept_features,
        removed_features=sorted(set(feature_data) - set(kept_features)),
        removed_files=removed_files,
        removed_bytes=sum(root.size(*p.split("/")) for p in removed_files),
        kept_files=len(named),
    )


def collect(root: DataRoot, plan: GcPlan) -> None:
    """Remove what ``plan`` names, in the order that keeps the root readable (module doc)."""
    for feature in plan.removed_features:
        root.delete(FEATURES, feature, MANIFEST)
    for feature in plan.removed_features:
        if root.exists(FEATURES, feature):
            root.delete_dir(FEATURES, feature)
    for version in plan.removed:
        root.delete(*manifest_path(version))
    for path in plan.removed_files:
        root.delete(*path.split("/"))
