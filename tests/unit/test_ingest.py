"""Ingest without Ray: the manifest's read-modify-write and one ticker's incremental run."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from ray_app.core.storage import DataRoot
from ray_app.data import ingest
from ray_app.data.ingest import latest_manifest, record_manifest
from ray_app.data.sources import SampleSource


def summary_row(ticker: str) -> dict[str, Any]:
    """A summary row as an ingest task returns it for a newly stored ticker."""
    return {
        "ticker": ticker,
        "status": "ok",
        "rows": 3,
        "first_date": "2024-01-02",
        "last_date": "2024-01-04",
        "hash": f"hash-of-{ticker}",
    }


def test_interleaved_manifest_writers_keep_both_tickers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ingests' manifest writes, the second one starting between the first's read and
    write. Without the lock the second writes IBM's manifest at once and the first then
    overwrites it with AAPL's, from a stale read: IBM is lost. With it, the second waits."""
    root = DataRoot(str(tmp_path))
    other = threading.Thread(
        target=record_manifest, args=(root, SampleSource(), [summary_row("IBM")])
    )

    def read_then_let_the_other_writer_in(where: DataRoot) -> dict[str, Any] | None:
        previous = latest_manifest(where)
        if other.ident is None:
            other.start()
            other.join(timeout=1)  # unlocked, it has written by now; locked, it waits for us
        return previous

    monkeypatch.setattr(ingest, "latest_manifest", read_then_let_the_other_writer_in)
    record_manifest(root, SampleSource(), [summary_row("AAPL")])
    other.join()
    manifest = latest_manifest(root)
    assert manifest is not None and sorted(manifest["tickers"]) == ["AAPL", "IBM"]
    assert manifest["parent"] is not None  # the second write extended the first
