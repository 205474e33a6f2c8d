"""``ray-app data export --dvc DEST VERSION``: one data version as a data root of its own.

The live data root keeps its versions itself (content-addressed partitions, manifests,
``data gc``); DVC never owns it. An export copies one immutable data version (its manifest,
the partitions it names and its feature sets) into ``DEST`` with the same layout and relative
paths, so ``ray-app --data-root DEST`` reads it as the original, and points ``DEST``'s latest
pointers at it. Exporting another version into the same ``DEST`` adds it beside the first
(the files are content addressed, so none is overwritten) and moves the pointers.

When ``DEST`` lies inside a DVC repository, the export ends with ``dvc add DEST``: git then
versions the small ``DEST.dvc`` file, and ``dvc push`` / ``dvc pull`` move the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ray_app.core.errors import RayAppError
from ray_app.core.storage import DataRoot
from ray_app.data.feature_store import (
    FEATURES,
    FEATURES_FILE,
    LATEST,
    MANIFEST,
    read_feature_manifest,
)
from ray_app.data.ingest import LATEST as RAW_LATEST
from ray_app.data.ingest import MANIFESTS, RAW, manifest_path, read_manifest
from ray_app.data.manifests import FeatureManifest


class ExportError(RayAppError):
    """An export that cannot be made; the message names the version or the folder."""


@dataclass(frozen=True)
class Export:
    """What an export copied, and the DVC file that tracks it (None outside a DVC repo)."""

    version: str
    dest: str
    files: int
    bytes: int
    feature_versions: list[str]
    dvc_file: str | None


def _check_dest(root: DataRoot, dest: Path) -> None:
    """Refuse a DEST that overlaps the live root: DVC must never own the live data."""
    live = Path(root.display()).resolve() if "://" not in root.uri else None
    if live is not None and (dest == live or live in dest.parents or dest in live.parents):
        raise ExportError(
            f"--dvc {dest}: overlaps the live data root {live}; export into a folder of its own"
        )
    if dest.exists() and any(dest.iterdir()) and not (dest / RAW / MANIFESTS).is_dir():
        raise ExportError(f"--dvc {dest}: exists and holds something else than an export")


def _feature_sets(root: DataRoot, version: str) -> list[FeatureManifest]:
    """Every complete feature set of data version ``version``, oldest first."""
    found = [read_feature_manifest(root, v) for v in root.list_dirs(FEATURES)]
    sets = [m for m in found if m is not None and m.data_version == version]
    return sorted(sets, key=lambda m: (m.created_at, m.version))


def _copy(source: DataRoot, dest: DataRoot, parts: tuple[str, ...]) -> int:
    data = source.read_bytes(*parts)
    dest.write_bytes(data, *parts)
    return len(data)


def export_version(root: DataRoot, version: str, dest: Path) -> Export:
    """Copy data version ``version`` of ``root`` and its feature sets into ``dest`` (a local
    folder), partitions first and manifests after, then run ``dvc add`` when in a DVC repo."""
    try:
        manifest = read_manifest(root, version)
    except KeyError as exc:
        raise ExportError(str(exc.args[0])) from None
    if manifest.unreadable:
        raise ExportError(
            f"data version {version} cannot be exported: the bars of "
            f"{', '.join(manifest.unreadable)} were overwritten before versions were kept"
        )
    dest = dest.expanduser().resolve()
    _check_dest(root, dest)
    out = DataRoot(str(dest))
    copied = [
        _copy(root, out, tuple(e.path.split("/"))) for e in manifest.tickers.values() if e.path
    ]
    copied.append(_copy(root, out, manifest_path(version)))
    sets = _feature_sets(root, version)
    for feature in sets:
        for ticker in feature.tickers:
            copied.append(
                _copy(root, out, (FEATURES, feature.version, f"ticker={ticker}", FEATURES_FILE))
            )
        copied.append(_copy(root, out, (FEATURES, feature.version, MANIFEST)))  # the commit point
    out.write_json({"version": version}, RAW, MANIFESTS, RAW_LATEST)
    if sets:
        out.write_json({"version": sets[-1].version}, FEATURES, LATEST)
    return Export(
        version, str(dest), len(copied), sum(copied), [s.version for s in sets], _dvc_add(dest)
    )


def _dvc_add(dest: Path) -> str | None:
    """``dvc add dest`` when ``dest`` lies in a DVC repository; the ``.dvc`` file written."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        repo_root = Repo.find_root(str(dest.parent))
    except NotDvcRepoError:
        return None
    with Repo(repo_root) as repo:
        repo.scm_context.quiet = True  # its "git add ..." hint: the command says what to do
        repo.add(str(dest))
    return f"{dest}.dvc"
