"""Ingest without Ray: the manifest's read-modify-write and one ticker's incremental run."""

from __future__ import annotations

import datetime as dt
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot, frame_hash
from ray_app.data import ingest
from ray_app.data.ingest import (
    ingest_ticker,
    latest_manifest,
    plan_jobs,
    read_bar_columns,
    read_bars,
    record_manifest,
)
from ray_app.data.manifests import RawManifest
from ray_app.data.sources import PRICE_COLUMNS, Fetched, SampleSource, TickerError, clip_range


def summary_row(root: DataRoot, ticker: str) -> dict[str, Any]:
    """A summary row as an ingest task returns it for a newly stored ticker, whose three bars
    it stores as that task does."""
    bars = history(3)
    digest = frame_hash(bars)
    root.write_parquet(bars, *ingest.partition(ticker, digest).split("/"), metadata={})
    return {
        "ticker": ticker,
        "status": "ok",
        "rows": 3,
        "first_date": "2024-01-02",
        "last_date": "2024-01-04",
        "hash": digest,
        "path": ingest.partition(ticker, digest),
    }


def test_interleaved_manifest_writers_keep_both_tickers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ingests' manifest writes, the second one starting between the first's read and
    write. Without the lock the second writes IBM's manifest at once and the first then
    overwrites it with AAPL's, from a stale read: IBM is lost. With it, the second waits."""
    root = DataRoot(str(tmp_path))
    other = threading.Thread(
        target=record_manifest, args=(root, SampleSource(), [summary_row(root, "IBM")])
    )

    def read_then_let_the_other_writer_in(where: DataRoot) -> dict[str, Any] | None:
        previous = latest_manifest(where)
        if other.ident is None:
            other.start()
            other.join(timeout=1)  # unlocked, it has written by now; locked, it waits for us
        return previous

    monkeypatch.setattr(ingest, "latest_manifest", read_then_let_the_other_writer_in)
    record_manifest(root, SampleSource(), [summary_row(root, "AAPL")])
    other.join()
    manifest = latest_manifest(root)
    assert manifest is not None and sorted(manifest.tickers) == ["AAPL", "IBM"]
    assert manifest.parent is not None  # the second write extended the first


def history(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """``n`` daily bars from 2024-01-02, as a source returns them."""
    close = 50 * np.exp(np.cumsum(np.random.default_rng(seed).normal(0, 0.01, n)))
    return pd.DataFrame(
        {
            "date": pd.bdate_range("2024-01-02", periods=n),
            "open": close,
            "high": close * 1.01,
            "low": close * 0.99,
            "close": close,
            "adj_close": close,
            "volume": 1000.0,
        }
    )


def adjusted(bars: pd.DataFrame, factor: float) -> pd.DataFrame:
    """``bars`` as a source shows them after a split or dividend: every price times ``factor``."""
    out = bars.copy()
    out[PRICE_COLUMNS] *= factor
    return out


@dataclass
class Revising:
    """A source whose history can be re-adjusted between two runs, as Yahoo's is."""

    bars: dict[str, pd.DataFrame]
    failing: set[str] = field(default_factory=set)
    asked: list[tuple[str, dt.date | None]] = field(default_factory=list)
    name: str = "revising"

    def list_tickers(self) -> list[str]:
        return sorted(self.bars)

    def fetch(self, ticker: str, start: dt.date | None, end: dt.date | None) -> Fetched:
        self.asked.append((ticker, start))
        if ticker in self.failing and start is None:
            raise TickerError(f"{ticker}: the source is down")
        return Fetched(clip_range(self.bars[ticker], start, end), "memory", "memory")


def ingest_locally(
    root: Path, source: Revising, end: dt.date, **ingest_settings: Any
) -> tuple[dict[str, dict[str, Any]], RawManifest]:
    """What run_ingest does, without Ray: every planned ticker, then the manifest."""
    settings = Settings(data_root=str(root), ingest={"end": end, **ingest_settings})
    where = DataRoot(settings.data_root)
    jobs = plan_jobs(settings, source, where, full_refresh=False)
    rows = [ingest_ticker(job, source, settings.ingest, where) for job in jobs]
    manifest, _ = record_manifest(where, source, rows)
    assert manifest is not None
    return {r["ticker"]: r for r in rows}, manifest


DAY_ONE = dt.date(2024, 2, 12)  # the 30th of the 40 bars
DAY_TWO = dt.date(2024, 2, 26)  # the last


@pytest.mark.parametrize("factor", [0.5, 0.995], ids=["2:1 split", "0.5% dividend"])
def test_a_re_adjusted_history_is_refetched_into_a_new_version(
    tmp_path: Path, factor: float
) -> None:
    source = Revising({"AAA": history(seed=1), "BBB": history(seed=2), "CCC": history(30, 3)})
    _, before = ingest_locally(tmp_path, source, DAY_ONE)
    stored_bbb = read_bars(DataRoot(str(tmp_path)), "BBB")
    source.bars["AAA"] = adjusted(source.bars["AAA"], factor)
    rows, after = ingest_locally(tmp_path, source, DAY_TWO)

    aaa = rows["AAA"]
    assert aaa["status"] == "refetched" and aaa["rows"] == 40
    note = rf"history re-adjusted \(adj_close x{factor:.4f} on 2024-02-\d\d\): refetched"
    assert re.match(note, aaa["warnings"]), aaa["warnings"]  # a date of the overlap
    pd.testing.assert_frame_equal(read_bars(DataRoot(str(tmp_path)), "AAA"), source.bars["AAA"])
    assert rows["BBB"]["status"] == "ok" and rows["BBB"]["new_rows"] == 10
    pd.testing.assert_frame_equal(read_bars(DataRoot(str(tmp_path)), "BBB")[:30], stored_bbb)
    assert rows["CCC"]["status"] == "up-to-date"
    assert after.tickers["CCC"] == before.tickers["CCC"]
    assert after.version != before.version and after.parent == before.version


def test_the_overlap_is_asked_again_and_small_differences_are_kept(tmp_path: Path) -> None:
    source = Revising({"AAA": history()})
    ingest_locally(tmp_path, source, DAY_ONE)
    stored = read_bars(DataRoot(str(tmp_path)), "AAA")
    source.bars["AAA"] = adjusted(source.bars["AAA"], 1 + 1e-6)  # float noise, not a dividend
    source.asked.clear()
    rows, _ = ingest_locally(tmp_path, source, DAY_TWO, overlap_days=3)
    assert source.asked == [("AAA", dt.date(2024, 2, 8))]  # three stored bars back
    assert rows["AAA"]["status"] == "ok" and rows["AAA"]["new_rows"] == 10
    pd.testing.assert_frame_equal(read_bars(DataRoot(str(tmp_path)), "AAA")[:30], stored)


def test_without_overlap_only_new_bars_are_asked(tmp_path: Path) -> None:
    source = Revising({"AAA": history()})
    ingest_locally(tmp_path, source, DAY_ONE)
    source.bars["AAA"] = adjusted(source.bars["AAA"], 0.5)
    source.asked.clear()
    rows, _ = ingest_locally(tmp_path, source, DAY_TWO, overlap_days=0)
    assert source.asked == [("AAA", DAY_ONE + dt.timedelta(days=1))]
    assert (
        rows["AAA"]["status"] == "ok" and "1 implausible one-day move(s)" in rows["AAA"]["warnings"]
    )


def test_a_failed_refetch_keeps_the_stored_bars_and_the_other_tickers(tmp_path: Path) -> None:
    source = Revising({"AAA": history(seed=1), "BBB": history(seed=2)})
    _, before = ingest_locally(tmp_path, source, DAY_ONE)
    source.bars["AAA"] = adjusted(source.bars["AAA"], 0.5)
    source.failing.add("AAA")
    rows, after = ingest_locally(tmp_path, source, DAY_TWO)
    assert rows["AAA"]["status"] == "failed" and rows["AAA"]["reason"] == "AAA: the source is down"
    assert after.tickers["AAA"] == before.tickers["AAA"]
    assert len(read_bars(DataRoot(str(tmp_path)), "AAA")) == 30
    assert rows["BBB"]["status"] == "ok"


def test_every_version_stays_readable_after_later_ingests(tmp_path: Path) -> None:
    """Partitions are content addressed and never overwritten: the first version's bars read
    back as they were after a refetch and an append changed both tickers."""
    root = DataRoot(str(tmp_path))
    source = Revising({"AAA": history(seed=1), "BBB": history(seed=2)})
    _, first = ingest_locally(tmp_path, source, DAY_ONE)
    stored = {t: read_bars(root, t) for t in first.tickers}
    files = {p: p.read_bytes() for p in tmp_path.glob("raw/ticker=*/*.parquet")}
    source.bars["AAA"] = adjusted(source.bars["AAA"], 0.5)
    _, second = ingest_locally(tmp_path, source, DAY_TWO)

    assert {p: p.read_bytes() for p in files} == files  # not one byte rewritten
    for ticker, bars in stored.items():
        pd.testing.assert_frame_equal(read_bars(root, ticker, first), bars)
        arrays = read_bar_columns(root, ticker, first)  # what the feature pass reads
        pd.testing.assert_frame_equal(pd.DataFrame(arrays), bars)
        assert len(read_bars(root, ticker, second)) == 40
        assert first.tickers[ticker].path == ingest.partition(ticker, first.tickers[ticker].hash)
    assert len(list(tmp_path.glob("raw/ticker=*/*.parquet"))) == 4
    assert latest_manifest(root) == second


def test_an_ingest_whose_partition_vanished_keeps_the_previous_entry(tmp_path: Path) -> None:
    """A ``data gc`` between a task's write and the manifest removed the file as unreferenced:
    the ticker fails with the reason, and the new version never points at a missing file."""
    root = DataRoot(str(tmp_path))
    source = Revising({"AAA": history(seed=1), "BBB": history(seed=2)})
    _, before = ingest_locally(tmp_path, source, DAY_ONE)
    settings = Settings(data_root=str(tmp_path), ingest={"end": DAY_TWO})
    jobs = plan_jobs(settings, source, root, full_refresh=False)
    rows = [ingest_ticker(job, source, settings.ingest, root) for job in jobs]
    root.delete(*rows[0]["path"].split("/"))
    after, _ = record_manifest(root, source, rows)
    assert (
        rows[0]["status"] == "failed"
        and "was removed (by `ray-app data gc`)" in (rows[0]["reason"])
    )
    assert after is not None and after.tickers["AAA"] == before.tickers["AAA"]
    assert after.tickers["BBB"].rows == 40
