"""The typed manifests of the data root: what a raw data version and a feature set hold.

Every manifest carries ``schema_version``. Readers accept only the current one: a manifest
without it (written before versions existed) or with an older one names ``ray-app migrate``,
which upgrades the data root in place (``ray_app.data.migrate``); a newer one names an
upgrade of ray-app. So no reader ever guesses at a format it was not written for.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ray_app.core.errors import RayAppError
from ray_app.core.settings import FeatureSettings
from ray_app.core.storage import DataRoot

SCHEMA_VERSION = 2
MIGRATE = "ray-app migrate"


class ManifestFormatError(RayAppError):
    """A manifest this ray-app cannot read: an older or newer format, or a damaged file."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RawTickerEntry(_Record):
    """One ticker's stored partition in a raw data version.

    ``path`` is the partition's file below the data root (``raw/ticker=<T>/<hash16>.parquet``,
    never overwritten), relative so that a copy of the root (``ray-app data export``) reads
    as the original does. It is None for bars that a later ingest overwrote before ray-app
    kept every version (schema version 1, migrated): listed, but not readable.
    """

    rows: int
    first_date: dt.date
    last_date: dt.date
    hash: str
    source: str
    path: str | None


class RawManifest(_Record):
    """A raw data version: the content hash of every stored partition, and its parent."""

    schema_version: int = SCHEMA_VERSION
    version: str
    content_hash: str
    parent: str | None
    source: str
    created_at: dt.datetime
    tickers: dict[str, RawTickerEntry]
    rows: int
    first_date: dt.date
    last_date: dt.date

    @property
    def unreadable(self) -> list[str]:
        """Tickers whose bars are gone (overwritten before versions were kept)."""
        return sorted(t for t, e in self.tickers.items() if e.path is None)


class FeatureTickerEntry(_Record):
    """One ticker's rows in a feature set (``training_rows``: those with a known target)."""

    rows: int
    training_rows: int
    first_date: dt.date
    last_date: dt.date


class FeatureManifest(_Record):
    """A feature set: the data version and spec it was built from, its columns and tickers."""

    schema_version: int = SCHEMA_VERSION
    version: str
    data_version: str
    spec_hash: str
    spec: FeatureSettings
    index_ticker: str | None
    columns: list[str]
    target: str
    target_direction: str
    path: str
    created_at: dt.datetime
    tickers: dict[str, FeatureTickerEntry]
    failed: dict[str, str]
    rows: int
    first_date: dt.date
    last_date: dt.date


Manifest = TypeVar("Manifest", bound=_Record)


def check_schema_version(payload: dict[str, Any], where: str, root: DataRoot) -> None:
    """ManifestFormatError unless ``payload`` is of the current schema version."""
    found = payload.get("schema_version")
    if found == SCHEMA_VERSION:
        return
    if isinstance(found, int) and found > SCHEMA_VERSION:
        raise ManifestFormatError(
            f"{where} has schema version {found}, newer than this ray-app reads "
            f"({SCHEMA_VERSION}): upgrade ray-app"
        )
    written = "no schema version" if found is None else f"schema version {found!r}"
    raise ManifestFormatError(
        f"{where} has {written} (an older format; this ray-app reads {SCHEMA_VERSION}): "
        f"run `{MIGRATE} --data-root {root.uri}` to upgrade the data root"
    )


def parse_manifest(model: type[Manifest], payload: dict[str, Any], where: str) -> Manifest:
    """``payload`` as ``model``; ManifestFormatError naming the file and the bad fields."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        fields = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in exc.errors()[:3]
        )
        raise ManifestFormatError(f"{where} is not a valid manifest: {fields}") from None


def read_manifest_file(root: DataRoot, model: type[Manifest], *parts: str) -> Manifest | None:
    """The manifest at ``parts`` below ``root`` (None when there is none), of the current
    schema version."""
    payload = root.read_json(*parts)
    if payload is None:
        return None
    where = root.display(*parts)
    check_schema_version(payload, where, root)
    return parse_manifest(model, payload, where)


def write_manifest_file(
    root: DataRoot, manifest: RawManifest | FeatureManifest, *parts: str
) -> None:
    """Write ``manifest`` atomically, in the JSON form its readers parse."""
    root.write_json(manifest.model_dump(mode="json"), *parts)
