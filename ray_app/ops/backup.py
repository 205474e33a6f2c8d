"""Backups of a local data root (``ray-app backup DEST``) and their restore (``ray-app restore``).

A backup is a folder: ``backup.json`` (``BackupManifest``: ray-app version, time, what was
included, the sha256 of every file) beside ``root/``, a copy of the data root. A folder, not
an archive, because it can be synced to an object store or tarred as it is, and a restore
reads each file once.

What is copied, and why it is consistent while the root is in use:

- every SQLite file under the root (the embedded MLflow store ``mlflow.db``, Dagster's
  storage) through SQLite's online backup API, first: a snapshot as of one transaction,
  never a file copy that a writer is changing;
- every other file whole (the data root writes by rename, so a file is old or new, never
  half), metadata folders (``_manifests``: names starting with ``_``) before the data they
  describe and the MLflow artifacts after the store that names them, so what a copied
  manifest or run names was copied too;
- the audit trail last, under its lock, so its head and its entries agree; a change is
  audited before it is made (``audit.recorded``), so every change in the MLflow snapshot has
  its entry.

What lives outside the root is named in the manifest's ``not_included`` and printed: a
tracking server's database (back it up with ``pg_dump`` or the server's own backup) and
artifacts kept elsewhere.

A restore checks every file against the manifest before it writes anything, builds the new
root in a hidden folder beside the target, points the MLflow store's paths at the new root,
verifies the audit trail there, and only then renames it into place. A non-empty target is
refused unless forced, and then moved aside, never deleted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from ray_app import __version__
from ray_app.core.errors import RayAppError
from ray_app.core.settings import Settings
from ray_app.core.storage import LOCKS, DataRoot
from ray_app.registry import audit
from ray_app.registry.tracking import artifact_location, tracking_uri

FORMAT = 1
MANIFEST = "backup.json"
ROOT = "root"
SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_SIDECARS = ("-journal", "-wal", "-shm")
CHUNK = 1 << 20

OnFile = Callable[[str], None]


class BackupError(RayAppError):
    """A backup that cannot be made, or a backup or target that a restore refuses."""


class BackupFile(BaseModel):
    """One file of the backup: its size and sha256 as stored in the backup."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str
    bytes: int


class BackupManifest(BaseModel):
    """What a backup holds: written last, so a folder without it is no backup."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = FORMAT
    ray_app_version: str
    created_at: dt.datetime
    source_root: str  # the root's absolute path: the MLflow store's paths start with it
    mlflow_store: str | None  # the SQLite store's path below the root, when it is there
    artifacts: str | None  # the MLflow artifact folder below the root, when it is there
    audit_entries: int
    not_included: list[str]  # what lives outside the root, and how to back it up
    files: dict[str, BackupFile]  # path below root/ -> hash

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files.values())


def local_root(settings: Settings) -> Path:
    """The data root as a local folder; object stores keep their own versions."""
    if "://" in settings.data_root:
        raise BackupError(
            f"data_root {settings.data_root} is an object store: back it up with the store's "
            "versioning or replication; `ray-app backup` copies a local data root"
        )
    return Path(settings.data_root).expanduser().resolve()


def _below(root: Path, uri: str) -> str | None:
    """The path below ``root`` of a ``file:``/``sqlite:`` URI or plain path, if it is there.
    A ``file:`` URI is percent-encoded (``Path.as_uri``: a space, a bracket), so it is
    decoded; the others hold the path as it is."""
    path = unquote(urlsplit(uri).path) if uri.startswith("file:") else uri
    path = path.removeprefix("sqlite:///")
    if "://" in path:
        return None
    resolved = Path(path).expanduser().resolve()
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else None


def _outside(settings: Settings, root: Path) -> tuple[str | None, str | None, list[str]]:
    """(the MLflow store below the root, the artifacts below it, notes on what is not)."""
    store, notes = tracking_uri(settings), []
    store_below = _below(root, store) if store.startswith("sqlite:") else None
    if store_below is None:
        notes.append(
            f"MLflow's database at {store.split('@')[-1]} is not under the data root: back it "
            "up with the server's own backup (pg_dump for PostgreSQL, `sqlite3 FILE .backup` "
            "for a SQLite file elsewhere)"
        )
    artifacts = artifact_location(settings)
    artifacts_below = None if artifacts is None else _below(root, artifacts)
    if artifacts_below is None:
        notes.append(
            f"MLflow artifacts at {artifacts or 'the tracking server'} are not under the data "
            "root: back them up where they live"
        )
    return store_below, artifacts_below, notes


def _is_sqlite(path: Path) -> bool:
    with path.open("rb") as stream:
        return stream.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC


def _skipped(rel: Path, root: Path) -> bool:
    """Locks, unfinished temporary writes, and SQLite's journals (the backup API reads
    them)."""
    name = rel.name
    if rel.parts[0] == LOCKS or (name.startswith(".") and name.endswith(".tmp")):
        return True
    return any(
        name.endswith(s) and (root / rel.parent / name.removesuffix(s)).is_file()
        for s in SQLITE_SIDECARS
    )


def _order(rel: Path, sqlite: bool, artifacts: str | None) -> int:
    """Copy order (see the module docstring): stores, metadata, data, artifacts."""
    if sqlite:
        return 0
    if any(part.startswith("_") for part in rel.parts[:-1]):
        return 1
    if artifacts is not None and rel.is_relative_to(artifacts):
        return 3
    return 2


def _plan(root: Path, artifacts: str | None) -> list[tuple[Path, bool]]:
    """Every file to copy (path below the root, whether SQLite), in copy order; the audit
    trail is copied apart, under its lock."""
    audit_dir = Path(*audit.AUDIT)
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(root)
        if not _skipped(rel, root) and not rel.is_relative_to(audit_dir):
            found.append((rel, _is_sqlite(path)))
    return sorted(found, key=lambda item: _order(item[0], item[1], artifacts))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy(source: Path, target: Path, sqlite: bool) -> BackupFile:
    """Copy one file (a SQLite file as one consistent snapshot) and hash the copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if sqlite:
        with (
            _closing(sqlite3.connect(source)) as src,
            _closing(sqlite3.connect(target)) as dst,
        ):
            src.backup(dst)
    else:
        shutil.copyfile(source, target)
    return BackupFile(sha256=sha256_file(target), bytes=target.stat().st_size)


@contextmanager
def _closing(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A connection closed on exit (sqlite3's own context manager only commits)."""
    try:
        yield connection
    finally:
        connection.close()


def _staging(final: Path, purpose: str) -> Path:
    """A hidden folder beside ``final``, on its filesystem, so that a rename moves it."""
    return final.parent / f".{final.name}.{purpose}-{uuid.uuid4().hex[:12]}"


def _empty(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def backup(settings: Settings, dest: Path, on_file: OnFile | None = None) -> BackupManifest:
    """Copy the data root to the new folder ``dest`` and return what was written.

    ``dest`` is built as a hidden folder beside it and renamed into place once complete, so
    a backup that failed or was interrupted never looks like one.
    """
    root = local_root(settings)
    dest = dest.expanduser().resolve()
    if not root.is_dir():
        raise BackupError(f"data root {root} does not exist: nothing to back up")
    if not _empty(dest):
        raise BackupError(f"backup destination {dest} exists and is not empty: name a new folder")
    if dest.is_relative_to(root):
        raise BackupError(f"backup destination {dest} is inside the data root {root}")
    store, artifacts, notes = _outside(settings, root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging(dest, "partial")
    try:
        files = {}
        for rel, sqlite in _plan(root, artifacts):
            files[rel.as_posix()] = _copy(root / rel, staging / ROOT / rel, sqlite)
            if on_file:
                on_file(rel.as_posix())
        copied, entries = _copy_audit(settings, root, staging / ROOT, on_file)
        files |= copied
        manifest = BackupManifest(
            ray_app_version=__version__,
            created_at=dt.datetime.now(dt.timezone.utc),
            source_root=str(root),
            mlflow_store=store,
            artifacts=artifacts,
            audit_entries=entries,
            not_included=notes,
            files=dict(sorted(files.items())),
        )
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
        if dest.exists():
            dest.rmdir()
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _copy_audit(
    settings: Settings, root: Path, target: Path, on_file: OnFile | None
) -> tuple[dict[str, BackupFile], int]:
    """The audit trail's files under its lock (head and entries agree), and its entry count."""
    folder = Path(*audit.AUDIT)
    with DataRoot(str(root)).lock(audit.LOCK, timeout_s=60):
        copied = {}
        for path in sorted((root / folder).glob("*.json")):
            rel = folder / path.name
            copied[rel.as_posix()] = _copy(path, target / rel, sqlite=False)
            if on_file:
                on_file(rel.as_posix())
    return copied, sum(1 for name in copied if not name.endswith(f"/{audit.HEAD}"))


def read_manifest(source: Path) -> BackupManifest:
    """The manifest of the backup folder ``source``; BackupError when there is none."""
    path = source / MANIFEST
    if not path.is_file():
        raise BackupError(f"{source} is not a ray-app backup: it has no {MANIFEST}")
    try:
        manifest = BackupManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        raise BackupError(
            f"{path} is damaged or not a ray-app backup manifest: {exc.errors()[0]['msg']}"
        ) from None
    if manifest.format != FORMAT:
        raise BackupError(
            f"{path} has backup format {manifest.format}; this ray-app {__version__} reads "
            f"format {FORMAT}: restore it with the ray-app that wrote it "
            f"({manifest.ray_app_version})"
        )
    return manifest


def verify_backup(source: Path, manifest: BackupManifest) -> None:
    """Every file the manifest names is there with its hash, and there is no other."""
    base = source / ROOT
    present = {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()}
    problems = [f"{name}: missing" for name in sorted(manifest.files.keys() - present)]
    problems += [f"{name}: not in {MANIFEST}" for name in sorted(present - manifest.files.keys())]
    problems += [
        f"{name}: sha256 does not match"
        for name, entry in manifest.files.items()
        if name in present and sha256_file(base / name) != entry.sha256
    ]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BackupError(
            f"backup {source} was changed or damaged, nothing restored: {problems[0]}{more}"
        )


def restore(
    settings: Settings, source: Path, force: bool = False, on_file: OnFile | None = None
) -> tuple[BackupManifest, Path | None]:
    """Restore the backup ``source`` as the data root; returns its manifest and, with
    ``force`` over a non-empty root, where that root was moved."""
    target = local_root(settings)
    source = source.expanduser().resolve()
    manifest = read_manifest(source)
    verify_backup(source, manifest)
    if not _empty(target) and not force:
        raise BackupError(
            f"data root {target} is not empty: restore into an empty folder, or pass --force "
            "to move the current root aside (it is kept, not deleted)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging(target, "restoring")
    try:
        for name, entry in manifest.files.items():
            copied = _copy(source / ROOT / name, staging / name, sqlite=False)
            if copied.sha256 != entry.sha256:
                raise BackupError(f"backup {source} changed while it was restored: {name}")
            if on_file:
                on_file(name)
        if manifest.mlflow_store is not None:
            repoint_store(staging / manifest.mlflow_store, Path(manifest.source_root), target)
        _check_audit(settings, staging)
        aside = _place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest, aside


def repoint_store(database: Path, old: Path, new: Path) -> int:
    """Point every path of the SQLite store ``database`` that lies under ``old`` (plain or
    ``file://``) at the same place under ``new``, and return how many values changed.

    MLflow records absolute artifact paths (experiments, runs, logged models, model
    versions); every text column is rewritten, not a list of MLflow's columns, so a
    new MLflow table is not missed.
    """
    if old == new:
        return 0
    changed = 0
    pairs = [(old.as_uri(), new.as_uri()), (str(old), str(new))]
    with _closing(sqlite3.connect(database)) as db, db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            columns = [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]
            for column, (was, now) in ((c, p) for c in columns for p in pairs):
                changed += db.execute(
                    f'UPDATE "{table}" SET "{column}" = ? || substr("{column}", ?) '
                    f'WHERE typeof("{column}") = \'text\' AND ("{column}" = ? '
                    f'OR substr("{column}", 1, ?) = ?)',
                    (now, len(was) + 1, was, len(was) + 1, f"{was}/"),
                ).rowcount
    return changed


def _check_audit(settings: Settings, staging: Path) -> None:
    report = audit.verify(settings.model_copy(update={"data_root": str(staging)}))
    if not report.intact:
        raise BackupError(
            f"the restored audit trail does not verify, nothing restored: {report.problems[0]}"
        )


def _place(staging: Path, target: Path) -> Path | None:
    """Rename ``staging`` to ``target``; a non-empty target is first moved aside (returned)."""
    aside = None
    if target.exists() and not _empty(target):
        aside = _staging(target, f"before-restore-{dt.datetime.now():%Y%m%dT%H%M%S}")
        target.rename(aside)
    elif target.exists():
        target.rmdir()
    os.replace(staging, target)
    return aside
