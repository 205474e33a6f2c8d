"""The offline feature store: feature sets computed with Ray Data, versioned and on Parquet.

A feature set is identified by (data version, feature specification hash). Each ticker's
rows are written by a Ray task to ``features/<version>/ticker=<T>/features.parquet``; the
set's manifest is written last, so a set without one is incomplete and is rebuilt.

A spec with cross-sectional companions or the rank label adds a second pass once every
ticker is written: Ray Data reads the columns it needs from all partitions, groups them by
date to compute each day's transforms (``ray_app.data.cross_section``), groups the results by
ticker and adds them to each partition. Readers (training, the online lookup, serving) then
find every column stored and never recompute one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from ray_app.core.errors import RayAppError
from ray_app.core.identifiers import check_version
from ray_app.core.settings import FeatureSettings, Settings
from ray_app.core.storage import DataRoot
from ray_app.data import cross_section
from ray_app.data.features import (
    LABEL,
    TARGET_DIR,
    Bars,
    check_spec,
    compute_features,
    feature_columns,
    feature_names,
    label_column,
    needs_cross_section,
    spec_hash,
)
from ray_app.data.ingest import latest_manifest, read_bar_columns, read_bars, read_manifest
from ray_app.data.manifests import (
    FeatureManifest,
    FeatureTickerEntry,
    RawManifest,
    read_manifest_file,
    write_manifest_file,
)

FEATURES = "features"
MANIFEST = "_manifest.json"
LATEST = "_latest.json"
FEATURES_FILE = "features.parquet"


class FeatureSetError(RayAppError, LookupError):
    """A data or feature set version that does not exist or cannot be built."""


def partition(version: str, ticker: str) -> tuple[str, str, str, str]:
    return (FEATURES, version, f"ticker={ticker}", FEATURES_FILE)


def feature_version(data_version: str, spec_digest: str) -> str:
    return hashlib.sha256(f"{data_version}:{spec_digest}".encode()).hexdigest()[:16]


def read_feature_manifest(root: DataRoot, version: str) -> FeatureManifest | None:
    """The manifest of feature set ``version``; None for a set without one (an interrupted
    build, not a feature set)."""
    return read_manifest_file(root, FeatureManifest, FEATURES, version, MANIFEST)


def feature_manifest(root: DataRoot, version: str | None = None) -> FeatureManifest:
    """The manifest of feature set ``version`` (default: the newest built)."""
    if version is None:
        pointer = root.read_json(FEATURES, LATEST)
        if pointer is None:
            raise FeatureSetError(
                f"no feature set under {root.display(FEATURES)}: run `ray-app features`"
            )
        version = pointer["version"]
    manifest = read_feature_manifest(root, check_version(version, "feature version"))
    if manifest is None:
        raise FeatureSetError(
            f"feature set version {version} does not exist under {root.display(FEATURES)}"
        )
    return manifest


def latest_feature_version(root: DataRoot) -> str | None:
    """The version the ``_latest`` pointer names, in one small read (serving polls it);
    None before the first build."""
    pointer = root.read_json(FEATURES, LATEST)
    return None if pointer is None else str(pointer["version"])


def _raw_manifest(root: DataRoot, data_version: str | None) -> RawManifest:
    try:
        manifest = read_manifest(root, data_version) if data_version else latest_manifest(root)
    except KeyError as exc:
        raise FeatureSetError(str(exc.args[0])) from None
    if manifest is None:
        raise FeatureSetError(
            f"no raw data under {root.display('raw')}: run `ray-app ingest` first"
        )
    return manifest


class FeatureBuildPlan(BaseModel):
    """Everything a task needs to build one feature set: where, from which raw data version,
    with which spec, and the version that names the result."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    root: DataRoot
    spec: FeatureSettings
    raw: RawManifest
    spec_hash: str
    index_ticker: str | None
    version: str

    @property
    def data_version(self) -> str:
        return self.raw.version


def _metadata(plan: FeatureBuildPlan) -> dict[str, str]:
    return {
        "ray_app.data_version": plan.data_version,
        "ray_app.feature_version": plan.version,
    }


def featurize_ticker(
    ticker: str, plan: FeatureBuildPlan, index_bars: Bars | None
) -> dict[str, Any]:
    """Compute and store one ticker's features; a summary row, never an exception."""
    root = plan.root
    row: dict[str, Any] = {
        "ticker": ticker,
        "status": "failed",
        "rows": 0,
        "training_rows": 0,
        "first_date": "",
        "last_date": "",
        "reason": "",
    }
    try:
        bars = read_bar_columns(root, ticker, plan.raw)
        columns = feature_columns(bars, plan.spec, index_bars)
        dates = columns["date"].astype("datetime64[D]")
        if not len(dates):
            raise FeatureSetError(f"{ticker}: too little history for the feature windows")
        table = pa.table(columns, metadata=_metadata(plan))
        root.write_table(table, *partition(plan.version, ticker))
        row.update(
            status="ok",
            rows=len(dates),
            training_rows=int(columns["has_target"].sum()),
            first_date=str(dates[0]),
            last_date=str(dates[-1]),
        )
    except Exception as exc:  # one ticker's failure never sinks the set
        row["reason"] = (
            str(exc)
            if isinstance(exc, FeatureSetError)
            else f"{ticker}: {type(exc).__name__}: {exc}"
        )
    return row


def read_index_bars(plan: FeatureBuildPlan) -> Bars | None:
    """The index's bars the plan's market features are measured against (None: no index)."""
    index = plan.index_ticker
    return read_bar_columns(plan.root, index, plan.raw) if index else None


def _featurize_batch(batch: pd.DataFrame, plan: FeatureBuildPlan) -> pd.DataFrame:
    index_bars = read_index_bars(plan)
    return pd.DataFrame([featurize_ticker(t, plan, index_bars) for t in batch["ticker"]])


@dataclass
class FeatureBuild:
    """What one ``build_features`` call did."""

    version: str
    data_version: str
    rows: list[dict[str, Any]]
    manifest: FeatureManifest
    reused: bool

    @property
    def failed(self) -> list[str]:
        return [r["ticker"] for r in self.rows if r["status"] == "failed"]


def plan_build(settings: Settings, data_version: str | None) -> FeatureBuildPlan:
    """Everything a task needs to build the feature set of ``data_version`` (default latest)."""
    root = DataRoot(settings.data_root)
    raw = _raw_manifest(root, data_version)
    if raw.unreadable:
        raise FeatureSetError(
            f"data version {raw.version} cannot be rebuilt: the bars of "
            f"{', '.join(raw.unreadable)} were overwritten by a later ingest before ray-app "
            "kept every data version (the root was migrated from schema version 1)"
        )
    spec: FeatureSettings = settings.features
    index = spec.index_ticker if spec.index_ticker in raw.tickers else None
    try:
        check_spec(spec, index is not None)
    except ValueError as exc:
        raise FeatureSetError(f"data version {raw.version}: {exc}") from None
    digest = spec_hash(spec, index is not None)
    return FeatureBuildPlan(
        root=root,
        spec=spec,
        raw=raw,
        spec_hash=digest,
        index_ticker=index,
        version=feature_version(raw.version, digest),
    )


def stream_featurize(plan: FeatureBuildPlan) -> Iterator[dict[str, Any]]:
    """Build every ticker of ``plan`` in Ray tasks and yield each summary row as it arrives."""
    from ray_app.data.sizing import ticker_blocks

    items: list[dict[str, str | None]] = [{"ticker": t} for t in sorted(plan.raw.tickers)]
    dataset = ticker_blocks(items).map_batches(
        _featurize_batch,  # type: ignore[arg-type]  # Ray types the UDF loosely
        batch_size=None,
        batch_format="pandas",
        fn_kwargs={"plan": plan},
        num_cpus=1,
    )
    yield from dataset.iter_rows()


DAY_GROUP = "_day_group"
TICKER_GROUP = "_ticker_group"


def _cross_section_inputs(batch: pd.DataFrame, plan: FeatureBuildPlan, groups: int) -> pd.DataFrame:
    """Ray Data UDF: the stored columns the cross-sectional pass reads, of the batch's
    tickers, as one long frame, each row tagged with its day's group."""
    columns = ["date", *cross_section.inputs(plan.spec)]
    frames = [
        plan.root.read_parquet(*partition(plan.version, t), columns=columns).assign(ticker=t)
        for t in batch["ticker"]
    ]
    rows = pd.concat(frames, ignore_index=True)
    days = rows["date"].to_numpy().astype("datetime64[D]").astype("int64")
    return rows.assign(**{DAY_GROUP: days % groups})


def _day_transforms(rows: pd.DataFrame, spec: FeatureSettings, groups: int) -> pd.DataFrame:
    """Ray Data UDF over every row of some days: their transforms, each row tagged with its
    ticker's group."""
    out = cross_section.cross_section(rows, spec)
    return out.assign(**{TICKER_GROUP: [zlib.crc32(t.encode()) % groups for t in out["ticker"]]})


def write_cross_section(rows: pd.DataFrame, plan: FeatureBuildPlan) -> dict[str, Any]:
    """Add one ticker's cross-sectional rows to its stored partition; a summary row
    (``ticker``, ``reason``: empty when written), never an exception."""
    ticker = str(rows["ticker"].iloc[0])
    parts = partition(plan.version, ticker)
    try:
        stored = plan.root.read_parquet(*parts)
        added = rows.drop(columns="ticker")
        # Ray Data hands Arrow-backed columns: store NumPy ones, as the per-ticker pass does.
        added = added.astype({c: "float64" for c in added.columns if c != "date"})
        added["date"] = added["date"].astype(stored["date"].dtype)
        merged = stored.merge(added, on="date", how="inner", validate="1:1")
        if not len(merged) == len(added) == len(stored):
            raise FeatureSetError(
                f"{len(added)} cross-sectional rows for {len(stored)} stored, {len(merged)} paired"
            )
        plan.root.write_parquet(merged, *parts, metadata=_metadata(plan))
        reason = ""
    except Exception as exc:  # one ticker's failure never sinks the set
        reason = f"{ticker}: cross-sectional pass: {type(exc).__name__}: {exc}"
    return {"ticker": ticker, "reason": reason}


def _write_tickers(rows: pd.DataFrame, plan: FeatureBuildPlan) -> pd.DataFrame:
    """Ray Data UDF over every row of some tickers: ``write_cross_section`` for each."""
    rows = rows.drop(columns=TICKER_GROUP)
    return pd.DataFrame(
        [write_cross_section(one, plan) for _, one in rows.groupby("ticker", sort=True)]
    )


def stream_cross_section(plan: FeatureBuildPlan, tickers: list[str]) -> Iterator[dict[str, Any]]:
    """The pass over each day's tickers, once ``tickers`` are built: Ray Data groups the rows
    by day to compute the day's transforms, then by ticker to write them. Yields each
    ticker's summary row (``write_cross_section``).

    The groups are coarse (days, or tickers, hashed into as many groups as the per-ticker
    pass has tasks), since Ray Data calls a UDF per group and thousands of one-day calls
    cost far more than the transforms.
    """
    from ray_app.data.sizing import blocks_for, ticker_blocks

    items: list[dict[str, str | None]] = [{"ticker": t} for t in tickers]
    groups = blocks_for(len(items))
    dataset = (
        ticker_blocks(items)
        .map_batches(
            _cross_section_inputs,  # type: ignore[arg-type]  # Ray types the UDF loosely
            batch_size=None,
            batch_format="pandas",
            fn_kwargs={"plan": plan, "groups": groups},
            num_cpus=1,
        )
        .groupby(DAY_GROUP, num_partitions=groups)
        .map_groups(
            _day_transforms,  # type: ignore[arg-type]
            batch_format="pandas",
            fn_kwargs={"spec": plan.spec, "groups": groups},
        )
        .groupby(TICKER_GROUP, num_partitions=groups)
        .map_groups(
            _write_tickers,  # type: ignore[arg-type]
            batch_format="pandas",
            fn_kwargs={"plan": plan},
        )
    )
    yield from dataset.iter_rows()


def add_cross_section(plan: FeatureBuildPlan, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` after the cross-sectional pass over the tickers built: one it could not write
    is failed, since its partition lacks the columns (the day's transforms were computed with
    it all the same: a failed write is an I/O error, not a change of universe)."""
    built = [r["ticker"] for r in rows if r["status"] == "ok"]
    if not built:
        return rows
    reasons = {r["ticker"]: r["reason"] for r in stream_cross_section(plan, built)}
    out = []
    for row in rows:
        reason = reasons.get(row["ticker"], f"{row['ticker']}: no cross-sectional rows")
        if row["status"] == "ok" and reason:
            row = {**row, "status": "failed", "reason": reason}
        out.append(row)
    return out


def record_feature_set(plan: FeatureBuildPlan, rows: list[dict[str, Any]]) -> FeatureManifest:
    """Write the set's manifest (the commit point) and point ``_latest`` at it."""
    ok = {r["ticker"]: r for r in rows if r["status"] == "ok"}
    if not ok:
        reasons = "; ".join(r["reason"] for r in rows[:3])
        raise FeatureSetError(f"no ticker could be featurized: {reasons}")
    tickers = {
        t: FeatureTickerEntry(
            rows=int(r["rows"]),
            training_rows=int(r["training_rows"]),
            first_date=dt.date.fromisoformat(r["first_date"]),
            last_date=dt.date.fromisoformat(r["last_date"]),
        )
        for t, r in ok.items()
    }
    manifest = FeatureManifest(
        version=plan.version,
        data_version=plan.data_version,
        spec_hash=plan.spec_hash,
        spec=plan.spec,
        index_ticker=plan.index_ticker,
        columns=feature_names(plan.spec, plan.index_ticker is not None),
        target=label_column(plan.spec),
        target_direction=TARGET_DIR,
        path=plan.root.display(FEATURES, plan.version),
        created_at=dt.datetime.now(dt.timezone.utc).replace(microsecond=0),
        tickers=tickers,
        failed={r["ticker"]: r["reason"] for r in rows if r["status"] != "ok"},
        rows=sum(e.rows for e in tickers.values()),
        first_date=min(e.first_date for e in tickers.values()),
        last_date=max(e.last_date for e in tickers.values()),
    )
    write_manifest_file(plan.root, manifest, FEATURES, plan.version, MANIFEST)
    _point_latest(plan)
    return manifest


def _point_latest(plan: FeatureBuildPlan) -> None:
    """Point ``_latest`` at the plan's set, unless it is of an older data version than the
    latest: serving follows the pointer, and rebuilding an old version (``features
    --data-version OLD``) must not roll what is served back to old data."""
    latest = latest_manifest(plan.root)
    if latest is None or latest.version == plan.data_version:
        plan.root.write_json({"version": plan.version}, FEATURES, LATEST)


def build_features(
    settings: Settings,
    *,
    data_version: str | None = None,
    force: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> FeatureBuild:
    """The feature set of ``data_version`` (default latest), built unless it already exists."""
    plan = plan_build(settings, data_version)
    existing = read_feature_manifest(plan.root, plan.version)
    if existing and not force:
        _point_latest(plan)
        return FeatureBuild(plan.version, plan.data_version, [], existing, reused=True)
    rows = []
    for row in stream_featurize(plan):
        rows.append(row)
        if on_row:
            on_row(row)
    rows.sort(key=lambda r: r["ticker"])
    if needs_cross_section(plan.spec):
        rows = add_cross_section(plan, rows)
    manifest = record_feature_set(plan, rows)
    return FeatureBuild(plan.version, plan.data_version, rows, manifest, reused=False)


def load_feature_set(
    root: DataRoot,
    version: str | None = None,
    *,
    training: bool = True,
    tickers: list[str] | None = None,
    since: dt.date | None = None,
) -> tuple[pd.DataFrame, FeatureManifest]:
    """A feature set as one frame sorted by (date, ticker), with its manifest.

    ``training=True`` keeps only rows whose target is known (never the newest day). The set's
    label column (``manifest.target``) is copied to ``label``, the column models fit;
    ``target_ret`` stays the realised next-day return. ``since`` keeps the rows of that day
    and later (the daily drift needs the newest rows, not twenty years of them).
    """
    filters = None if since is None else [("date", ">=", pd.Timestamp(since))]
    manifest = feature_manifest(root, version)
    wanted = sorted(tickers or manifest.tickers)
    unknown = [t for t in wanted if t not in manifest.tickers]
    if unknown:
        raise FeatureSetError(
            f"ticker(s) {', '.join(unknown)} not in feature set {manifest.version}"
        )
    frames = []
    for ticker in wanted:
        frame = root.read_parquet(*partition(manifest.version, ticker), filters=filters)
        frame.insert(0, "ticker", ticker)
        frames.append(frame)
    data = pd.concat(frames, ignore_index=True)
    data[LABEL] = data[manifest.target]
    if training:
        data = data[data["has_target"]]
    return data.sort_values(["date", "ticker"], kind="stable").reset_index(drop=True), manifest


@dataclass(frozen=True)
class PointInTimeCheck:
    """One ticker's stored rows against the same rows rebuilt from bars cut at ``cut``."""

    ticker: str
    cut: str
    rows: int
    mismatched: int


def pit_sample(manifest: FeatureManifest, size: int) -> list[str]:
    """``size`` tickers of a feature set, the same ones for the same version on any node."""

    def rank(ticker: str) -> str:
        return hashlib.sha256(f"{manifest.version}:{ticker}".encode()).hexdigest()

    return sorted(sorted(manifest.tickers, key=rank)[:size])


def _stored_companion_inputs(root: DataRoot, manifest: FeatureManifest) -> pd.DataFrame:
    """``ticker``, ``date`` and the columns with companions, of every ticker of the set."""
    columns = ["date", *manifest.spec.cross_sectional]
    return pd.concat(
        [
            root.read_parquet(*partition(manifest.version, t), columns=columns).assign(ticker=t)
            for t in sorted(manifest.tickers)
        ],
        ignore_index=True,
    )


def _cut_companions(
    universe: pd.DataFrame, names: list[str], rebuilt: pd.DataFrame
) -> pd.DataFrame:
    """``rebuilt`` (one ticker's rows from bars cut at t) with its cross-sectional companions,
    computed with the other tickers' stored rows up to t: the day's universe as it stood."""
    ticker, cut = rebuilt["ticker"].iloc[0], rebuilt["date"].max()
    others = universe[(universe["ticker"] != ticker) & (universe["date"] <= cut)]
    rows = pd.concat([rebuilt[["ticker", "date", *names]], others], ignore_index=True)
    added = cross_section.companions(rows, names)[rows["ticker"] == ticker]
    return pd.concat([rebuilt, added.set_axis(rebuilt.index)], axis=1)


def check_point_in_time(root: DataRoot, version: str, tickers: list[str]) -> list[PointInTimeCheck]:
    """Rebuild each ticker's features from its bars (and the index's) up to a day t, the
    middle of its history, and count the stored rows up to t that differ.

    Features are point in time, so cutting the history at t must leave every earlier row as
    stored: a mismatch is look-ahead, or a feature set that no longer matches its bars. The
    cross-sectional companions are recomputed from the rebuilt rows and the other tickers'
    stored rows up to t (reading those columns of every ticker once), so they are checked the
    same way.
    """
    manifest = feature_manifest(root, version)
    raw = _raw_manifest(root, manifest.data_version)
    index = manifest.index_ticker
    index_bars = read_bars(root, index, raw) if index else None
    names = manifest.spec.cross_sectional
    universe = _stored_companion_inputs(root, manifest) if names else None
    checks = []
    for ticker in tickers:
        stored = root.read_parquet(*partition(version, ticker))
        cut = stored["date"].iloc[len(stored) // 2]
        bars = read_bars(root, ticker, raw)
        cut_index = None if index_bars is None else index_bars[index_bars["date"] <= cut]
        rebuilt = compute_features(ticker, bars[bars["date"] <= cut], manifest.spec, cut_index)
        if universe is not None and not rebuilt.empty:
            rebuilt = _cut_companions(universe, names, rebuilt)
        expected = stored[stored["date"] <= cut]
        columns = manifest.columns
        if len(rebuilt) != len(expected):  # rows cannot be paired: none is verified
            mismatched = max(len(rebuilt), len(expected))
        else:
            a = rebuilt[columns].to_numpy(dtype=float)
            b = expected[columns].to_numpy(dtype=float)
            same = (a == b) | (np.isnan(a) & np.isnan(b))
            mismatched = int((~same.all(axis=1)).sum())
        checks.append(PointInTimeCheck(ticker, cut.date().isoformat(), len(expected), mismatched))
    return checks
