"""Ingestion: source -> validation -> Parquet partition per ticker -> versioned manifest.

Tickers are fetched and validated in parallel Ray tasks fed by a Ray Dataset of ticker
jobs; each task writes its own partition atomically and returns only a summary row, so the
driver's memory does not grow with the size of the universe. The driver then records a
manifest: the content hash of every stored partition, which together form the data version.
It does so under the data root's manifest lock, so concurrent ingests keep each other's
tickers. Incremental runs fetch a few stored bars again, because a split or a dividend
re-adjusts the whole stored history; a ticker whose overlap moved is refetched in full.

Partitions are content addressed (``raw/ticker=<T>/<hash16>.parquet``) and never
overwritten: a new ingest adds files beside the old ones, so every data version a manifest
records stays readable (``read_bars(root, ticker, manifest)``) until ``ray-app data gc``
removes it. Only the ``LATEST.json`` pointer moves, in one atomic write.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ray_app.core.errors import RayAppError
from ray_app.core.identifiers import InvalidIdentifierError, check_ticker, check_version
from ray_app.core.settings import IngestSettings, Settings
from ray_app.core.storage import DataRoot, combine_hashes, frame_hash
from ray_app.data.manifests import (
    RawManifest,
    RawTickerEntry,
    read_manifest_file,
    write_manifest_file,
)
from ray_app.data.sources import BAR_COLUMNS, Fetched, NoBarsError, Source, TickerError, make_source
from ray_app.data.validation import (
    ValidationReport,
    check_calendar,
    exchange_sessions,
    validate_bars,
)

RAW = "raw"
MANIFESTS = "_manifests"
LATEST = "LATEST.json"
HASH_CHARS = 16  # of a partition's content hash in its file name
MANIFEST_LOCK = "raw-manifest"
MANIFEST_LOCK_TIMEOUT_S = 120.0  # the locked section takes well under a second

OK, UNCHANGED, UP_TO_DATE, FAILED = "ok", "unchanged", "up-to-date", "failed"
REFETCHED = "refetched"


class UnrecoverableBarsError(RayAppError, LookupError):
    """A data version whose bars were overwritten before partitions were content addressed."""


def partition(ticker: str, digest: str) -> str:
    """The path below the data root of ``ticker``'s partition with content hash ``digest``:
    the same bars always land on the same file, and different bars never on one."""
    return f"{RAW}/ticker={ticker}/{digest[:HASH_CHARS]}.parquet"


def latest_manifest(root: DataRoot) -> RawManifest | None:
    """The newest raw data manifest, or None before the first ingest."""
    pointer = root.read_json(RAW, MANIFESTS, LATEST)
    if pointer is None:
        return None
    return read_manifest_file(root, RawManifest, *manifest_path(pointer["version"]))


def raw_versions(root: DataRoot) -> list[RawManifest]:
    """Every raw data version recorded under ``root``, newest first: by creation time, and
    within one second by the parent chain from the latest (each version's parent is the
    latest it extended, so the chain is the order they were recorded in)."""
    found = {
        name.removesuffix(".json"): read_manifest(root, name.removesuffix(".json"))
        for name in root.list_files(RAW, MANIFESTS)
        if name.endswith(".json") and name != LATEST
    }
    pointer = root.read_json(RAW, MANIFESTS, LATEST)
    chain: dict[str, int] = {}
    version = pointer["version"] if pointer else None
    while version in found and version not in chain:
        chain[version] = len(chain)
        version = found[version].parent
    return sorted(
        found.values(),
        key=lambda m: (-m.created_at.timestamp(), chain.get(m.version, len(chain)), m.version),
    )


def manifest_path(version: str) -> tuple[str, str, str]:
    """Path parts of data version ``version``'s manifest below the data root."""
    return (RAW, MANIFESTS, f"{check_version(version, 'data version')}.json")


def read_manifest(root: DataRoot, version: str) -> RawManifest:
    manifest = read_manifest_file(root, RawManifest, *manifest_path(version))
    if manifest is None:
        raise KeyError(f"data version {version} does not exist under {root.display(RAW)}")
    return manifest


def entry_path(manifest: RawManifest, ticker: str) -> str:
    """Where ``ticker``'s bars of ``manifest`` are stored; UnrecoverableBarsError for bars that
    a later ingest overwrote before this ray-app kept every version (a migrated root)."""
    path = manifest.tickers[ticker].path
    if path is None:
        raise UnrecoverableBarsError(
            f"data version {manifest.version} cannot be read: the bars of {ticker} were "
            "overwritten by a later ingest before ray-app kept every data version (the root "
            "was migrated from schema version 1); use a version `ray-app data status` lists "
            "as readable"
        )
    return path


def read_bars(root: DataRoot, ticker: str, manifest: RawManifest | None = None) -> pd.DataFrame:
    """The bars of ``ticker`` in data version ``manifest`` (default: the latest)."""
    return root.read_parquet(*_bars_file(root, ticker, manifest), columns=BAR_COLUMNS)


def read_bar_columns(
    root: DataRoot, ticker: str, manifest: RawManifest | None = None
) -> dict[str, np.ndarray]:
    """``read_bars`` as NumPy arrays by column, for the feature pass (no frame to build)."""
    return root.read_columns(*_bars_file(root, ticker, manifest), columns=BAR_COLUMNS)


def _bars_file(root: DataRoot, ticker: str, manifest: RawManifest | None) -> list[str]:
    """Path parts of ``ticker``'s partition in ``manifest`` (default: the latest version)."""
    manifest = manifest or latest_manifest(root)
    if manifest is None or ticker not in manifest.tickers:
        version = manifest.version if manifest else "(none ingested)"
        raise KeyError(f"{ticker} is not in data version {version}")
    return entry_path(manifest, ticker).split("/")


@dataclass(frozen=True)
class TickerJob:
    """One ticker to ingest; ``since`` is the first date not yet stored (incremental runs),
    ``base`` the partition of the latest data version the new bars extend or replace."""

    ticker: str
    since: dt.date | None
    base: StoredPartition | None


@dataclass(frozen=True)
class StoredPartition:
    """A partition a manifest records: its file below the root and its content hash."""

    path: str
    hash: str


def ingest_ticker(
    job: TickerJob, source: Source, cfg: IngestSettings, root: DataRoot
) -> dict[str, Any]:
    """Fetch, validate, merge and store one ticker; a summary row, never an exception."""
    row: dict[str, Any] = {
        "ticker": job.ticker,
        "status": FAILED,
        "rows": 0,
        "new_rows": 0,
        "first_date": "",
        "last_date": "",
        "reason": "",
        "hash": "",
        "path": "",
        "layout": "",
        "warnings": "",
    }
    try:
        row.update(_ingest(job, source, cfg, root))
    except TickerError as exc:
        row["reason"] = str(exc)
    except Exception as exc:  # a bug or an unexpected answer must not sink the other tickers
        row["reason"] = f"{job.ticker}: unexpected {type(exc).__name__}: {exc}"
    return row


def _ingest(job: TickerJob, source: Source, cfg: IngestSettings, root: DataRoot) -> dict[str, Any]:
    try:  # a source may list a name (a csv file's) that cannot name a partition folder
        check_ticker(job.ticker)
    except InvalidIdentifierError as exc:
        raise TickerError(str(exc)) from None
    if job.since is None or job.base is None:
        return _ingest_full(job.ticker, job.base, source, cfg, root)
    return _ingest_incremental(job.ticker, job.since, job.base, source, cfg, root)


def _ingest_incremental(
    ticker: str,
    since: dt.date,
    base: StoredPartition,
    source: Source,
    cfg: IngestSettings,
    root: DataRoot,
) -> dict[str, Any]:
    """Append the bars after the stored ones, refetching the overlap to check the stored tail.

    The source is asked from ``overlap_days`` stored bars back: when it now adjusts them
    differently (a split or a dividend since the last run), the whole history is refetched.
    """
    if not _sessions_between(cfg, since, cfg.end):
        return _stored_summary(root, base, UP_TO_DATE)  # weekend, holiday, same day
    stored = root.read_parquet(*base.path.split("/"), columns=BAR_COLUMNS)
    overlap = stored.tail(cfg.overlap_days)
    first = overlap["date"].iloc[0].date() if len(overlap) else since
    try:
        fetched: Fetched = source.fetch(ticker, max(filter(None, [cfg.start, first])), cfg.end)
    except NoBarsError:
        return _stored_summary(root, base, UP_TO_DATE)  # today's bar not published yet
    if fetched.bars.empty:
        return _stored_summary(root, base, UP_TO_DATE, fetched.layout)
    fresh, report = validate_bars(ticker, fetched.bars, cfg)
    drift = adjustment_drift(overlap, fresh)
    if drift is not None and drift.size > cfg.overlap_tolerance:
        return _refetch(ticker, base, source, cfg, root, drift)
    new = fresh[fresh["date"] > stored["date"].iloc[-1]]
    if new.empty:
        return _stored_summary(root, base, UP_TO_DATE, fetched.layout)
    bars = pd.concat([stored, new], ignore_index=True)
    check_calendar(bars.iloc[len(stored) - 1 :], cfg, report)  # across the seam too
    return _store(root, ticker, base, bars, source, fetched.layout, report, len(new))


def _ingest_full(
    ticker: str, base: StoredPartition | None, source: Source, cfg: IngestSettings, root: DataRoot
) -> dict[str, Any]:
    """Fetch and store the whole history; ``unchanged`` when it equals ``base``'s bars."""
    fetched = source.fetch(ticker, cfg.start, cfg.end)
    if fetched.bars.empty:
        span = f"{cfg.start or 'the first bar'} to {cfg.end or 'today'}"
        raise TickerError(f"{ticker}: no bars from {span}")
    bars, report = validate_bars(ticker, fetched.bars, cfg)
    return _store(root, ticker, base, bars, source, fetched.layout, report, len(bars))


@dataclass(frozen=True)
class Drift:
    """How far the source moved a stored bar's adjusted close: ``ratio`` = now / stored."""

    ratio: float
    date: dt.date

    @property
    def size(self) -> float:
        return abs(self.ratio - 1.0)


def adjustment_drift(stored: pd.DataFrame, fetched: pd.DataFrame) -> Drift | None:
    """The largest change of the adjusted close between stored and refetched bars of a date.

    A split or a dividend re-adjusts every earlier adjusted close (splits also the raw
    prices of sources that adjust them), so comparing ``adj_close`` on the overlap catches
    both. None when the two share no date.
    """
    both = stored[["date", "adj_close"]].merge(
        fetched[["date", "adj_close"]], on="date", suffixes=("_stored", "")
    )
    if both.empty:
        return None
    ratios = both["adj_close"] / both["adj_close_stored"]
    worst = int((ratios - 1.0).abs().to_numpy().argmax())
    return Drift(float(ratios.iloc[worst]), both["date"].iloc[worst].date())


def _refetch(
    ticker: str,
    base: StoredPartition,
    source: Source,
    cfg: IngestSettings,
    root: DataRoot,
    drift: Drift,
) -> dict[str, Any]:
    """The full history again: the stored one no longer matches the source's adjustment."""
    row = _ingest_full(ticker, base, source, cfg, root)
    note = f"history re-adjusted (adj_close x{drift.ratio:.4f} on {drift.date}): refetched"
    return {
        **row,
        "status": REFETCHED if row["status"] == OK else row["status"],
        "warnings": "; ".join(filter(None, [note, row["warnings"]])),
    }


def _store(
    root: DataRoot,
    ticker: str,
    base: StoredPartition | None,
    bars: pd.DataFrame,
    source: Source,
    layout: str,
    report: ValidationReport,
    new_rows: int,
) -> dict[str, Any]:
    """Write ``bars`` to their content-addressed partition unless it exists (a file there holds
    these very bars: never rewrite it); ``unchanged`` when they are ``base``'s bars."""
    digest = frame_hash(bars)
    status = UNCHANGED if base is not None and base.hash == digest else OK
    path = partition(ticker, digest)
    if not root.exists(*path.split("/")):
        metadata = {"ray_app.hash": digest, "ray_app.source": source.name}
        root.write_parquet(bars, *path.split("/"), metadata=metadata)
    return {
        **_summary(bars, status, digest, layout),
        "path": path,
        "new_rows": new_rows if status == OK else 0,
        "warnings": "; ".join(report.warnings()),
    }


def _sessions_between(cfg: IngestSettings, first: dt.date, last: dt.date | None) -> bool:
    """Whether the exchange had a session from ``first`` to ``last`` (default today)."""
    sessions = exchange_sessions(cfg.exchange)
    end = pd.Timestamp(last or dt.date.today())
    return bool(((sessions >= pd.Timestamp(first)) & (sessions <= end)).any())


def _summary(bars: pd.DataFrame, status: str, digest: str, layout: str) -> dict[str, Any]:
    return {
        "status": status,
        "rows": len(bars),
        "hash": digest,
        "layout": layout,
        "first_date": bars["date"].iloc[0].date().isoformat(),
        "last_date": bars["date"].iloc[-1].date().isoformat(),
    }


def _stored_summary(
    root: DataRoot, base: StoredPartition, status: str, layout: str = ""
) -> dict[str, Any]:
    bars = root.read_parquet(*base.path.split("/"), columns=["date"])
    return {**_summary(bars, status, base.hash, layout), "path": base.path}


@dataclass
class IngestResult:
    """What one ingest run did: per-ticker rows and the data version it left behind."""

    rows: list[dict[str, Any]]
    manifest: RawManifest | None
    changed: bool = False
    failed: list[str] = field(default_factory=list)

    @property
    def version(self) -> str | None:
        return self.manifest.version if self.manifest else None


def plan_jobs(
    settings: Settings, source: Source, root: DataRoot, full_refresh: bool
) -> list[TickerJob]:
    """One job per requested ticker, starting after the last stored bar unless refreshing."""
    tickers = settings.ingest.tickers or source.list_tickers()
    if not tickers:
        raise TickerError(f"--source {source.name} needs --tickers (it cannot list its tickers)")
    latest = latest_manifest(root)
    stored = latest.tickers if latest else {}
    jobs = []
    for ticker in dict.fromkeys(tickers):
        entry = stored.get(ticker)
        if entry is None or entry.path is None:  # nothing readable to extend: fetch it all
            jobs.append(TickerJob(ticker, None, None))
            continue
        since = None if full_refresh else entry.last_date + dt.timedelta(days=1)
        jobs.append(TickerJob(ticker, since, StoredPartition(entry.path, entry.hash)))
    return jobs


def _ingest_batch(
    batch: pd.DataFrame, source: Source, cfg: IngestSettings, root: DataRoot
) -> pd.DataFrame:
    columns = [batch[c].tolist() for c in ("ticker", "since", "path", "hash")]
    rows = [ingest_ticker(_job(*item), source, cfg, root) for item in zip(*columns, strict=True)]
    return pd.DataFrame(rows)


def _item(job: TickerJob) -> dict[str, str | None]:
    """``job`` as a row of the Ray Dataset of jobs (strings: Arrow keeps them as they are)."""
    return {
        "ticker": job.ticker,
        "since": job.since.isoformat() if job.since else None,
        "path": job.base.path if job.base else None,
        "hash": job.base.hash if job.base else None,
    }


def _job(ticker: str, since: Any, path: Any, digest: Any) -> TickerJob:
    """The job a row of the Dataset of jobs (``_item``) stands for (a missing value may come
    back as None or NaN)."""
    day = dt.date.fromisoformat(since) if isinstance(since, str) else None
    base = StoredPartition(path, digest) if isinstance(path, str) else None
    return TickerJob(ticker, day, base)


def stream_ingest(
    jobs: list[TickerJob], source: Source, settings: Settings, root: DataRoot
) -> Iterator[dict[str, Any]]:
    """Run ``jobs`` as Ray tasks and yield each summary row as it arrives.

    Ray Data retries a task whose worker died; failures inside a task are summary rows.
    Yahoo jobs run one ticker per task, at most ``max_concurrency`` at a time cluster-wide.
    """
    from ray_app.data.sizing import ticker_blocks

    cfg = settings.ingest
    items = [_item(j) for j in jobs]
    cap = cfg.yahoo.max_concurrency if source.name == "yahoo" else None
    # Yahoo: one ticker per task, so the capped tasks wait on the network side by side.
    dataset = ticker_blocks(items, len(items) if cap is not None else None)
    dataset = dataset.map_batches(
        _ingest_batch,  # type: ignore[arg-type]  # Ray types the UDF loosely
        batch_size=None if cap is None else 1,
        batch_format="pandas",
        fn_kwargs={"source": source, "cfg": cfg, "root": root},
        concurrency=cap,
        num_cpus=1 if cap is None else 0.25,
    )
    yield from dataset.iter_rows()


def record_manifest(
    root: DataRoot, source: Source, rows: list[dict[str, Any]]
) -> tuple[RawManifest | None, bool]:
    """Write the manifest of what is stored now; (manifest, whether the version changed).

    The latest manifest is read, extended and written back under the root's manifest lock,
    so that concurrent ingests of other tickers keep each other's entries.
    """
    with root.lock(MANIFEST_LOCK, MANIFEST_LOCK_TIMEOUT_S):
        _fail_missing_partitions(root, rows)
        return _extend_manifest(root, source, rows)


def _fail_missing_partitions(root: DataRoot, rows: list[dict[str, Any]]) -> None:
    """Turn into failures (in place, so the run reports them) the rows whose partition is gone.

    A ``ray-app data gc`` that ran between a task's write and this manifest found the file
    referenced by no manifest and removed it (or an old version's file this run reused):
    recording it would point the new version at nothing. The ticker keeps its previous entry;
    ingesting again stores it anew.
    """
    for row in rows:
        if row["status"] != FAILED and not root.exists(*row["path"].split("/")):
            row.update(
                status=FAILED,
                reason=f"{row['ticker']}: its partition {row['path']} was removed (by "
                "`ray-app data gc`) while this ingest ran; ingest again",
            )


def _extend_manifest(
    root: DataRoot, source: Source, rows: list[dict[str, Any]]
) -> tuple[RawManifest | None, bool]:
    previous = latest_manifest(root)
    entries = dict(previous.tickers if previous else {})
    for row in rows:
        if row["status"] in (OK, UNCHANGED, REFETCHED) or (
            row["status"] == UP_TO_DATE and row["ticker"] not in entries
        ):
            entries[row["ticker"]] = RawTickerEntry(
                rows=int(row["rows"]),
                first_date=dt.date.fromisoformat(row["first_date"]),
                last_date=dt.date.fromisoformat(row["last_date"]),
                hash=row["hash"],
                source=source.name,
                path=row["path"],
            )
    if not entries:
        return previous, False
    content_hash = combine_hashes({t: e.hash for t, e in entries.items()})
    version = content_hash[:16]
    if previous and previous.version == version:
        return previous, False
    manifest = RawManifest(
        version=version,
        content_hash=content_hash,
        parent=previous.version if previous else None,
        source=source.name,
        created_at=dt.datetime.now(dt.timezone.utc).replace(microsecond=0),
        tickers=entries,
        rows=sum(e.rows for e in entries.values()),
        first_date=min(e.first_date for e in entries.values()),
        last_date=max(e.last_date for e in entries.values()),
    )
    write_manifest_file(root, manifest, *manifest_path(version))
    root.write_json({"version": version}, RAW, MANIFESTS, LATEST)
    return manifest, True


def run_ingest(
    settings: Settings,
    *,
    full_refresh: bool = False,
    source: Source | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> IngestResult:
    """Ingest the configured tickers on the connected Ray cluster and record the manifest."""
    source = source or make_source(settings.ingest)
    root = DataRoot(settings.data_root)
    jobs = plan_jobs(settings, source, root, full_refresh)
    rows = []
    for row in stream_ingest(jobs, source, settings, root):
        rows.append(row)
        if on_row:
            on_row(row)
    rows.sort(key=lambda r: r["ticker"])
    manifest, changed = record_manifest(root, source, rows)
    failed = [r["ticker"] for r in rows if r["status"] == FAILED]
    return IngestResult(rows, manifest, changed, failed)


@dataclass(frozen=True)
class StoredBarsAudit:
    """One stored partition checked again against the validation rules."""

    ticker: str
    invalid_rows: dict[str, int]
    missing_sessions: int
    off_calendar: int


def audit_stored_bars(root: DataRoot, cfg: IngestSettings) -> list[StoredBarsAudit]:
    """Every partition of the latest manifest run through ``validate_bars`` again.

    Ingest drops invalid rows before it stores, so any ``invalid_rows`` here means a bad
    partition was kept; calendar gaps are findings, reported and kept.
    """
    manifest = latest_manifest(root)
    audits = []
    for ticker in sorted(manifest.tickers if manifest else []):
        bars = read_bars(root, ticker, manifest)
        try:
            _, report = validate_bars(ticker, bars, cfg.model_copy(update={"bad_rows": "drop"}))
        except TickerError as exc:  # no valid row left at all
            report = ValidationReport(dropped={str(exc): len(bars)})
        audits.append(
            StoredBarsAudit(ticker, report.dropped, report.missing_sessions, report.off_calendar)
        )
    return audits
