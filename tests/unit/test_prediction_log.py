"""The prediction log: what a request records, how the writer batches, bounds and flushes,
and that the files read back with exactly the agreed schema (pandas and the reader)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from ray_app.core.storage import DataRoot
from ray_app.data.predictions import COLUMNS, LoggedRequest, client_hash, read_predictions
from ray_app.serving.args import PredictionLogSpec, ShadowSpec
from ray_app.serving.prediction_log import PredictionLog
from tests.unit.test_serve_service import FakeVariant, Linear, ask, make, run, settle

DAY = dt.date(2012, 1, 11)


class Counts:
    def __init__(self) -> None:
        self.written = 0
        self.dropped: dict[str, int] = {}

    def log_written(self, rows: int) -> None:
        self.written += rows

    def log_dropped(self, rows: int, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + rows


def logged(request_id: str, tickers: list[str], ts: dt.datetime | None = None) -> LoggedRequest:
    moment = ts or dt.datetime(2026, 1, 5, 14, tzinfo=dt.timezone.utc)
    return LoggedRequest(
        request_id,
        int(moment.timestamp() * 1e6),
        client_hash("client-7"),
        "champion",
        "served",
        "tiny",
        3,
        tickers,
        [DAY] * len(tickers),
        [0.01 * (i + 1) for i in range(len(tickers))],
        "precomputed",
    )


def test_rows_read_back_with_the_schema_partitioned_by_request_day(tmp_path: Path) -> None:
    root, counts = DataRoot(str(tmp_path)), Counts()
    log = PredictionLog(root, PredictionLogSpec(), counts, writer="w1")
    late = dt.datetime(2026, 1, 5, 23, 59, 59, tzinfo=dt.timezone.utc)
    log.record(logged("r1", ["AAPL", "MSFT"], late))
    log.record(logged("r2", ["IBM"], late + dt.timedelta(seconds=2)))  # the next UTC day
    assert run(log.flush()) == 3 and counts.written == 3
    frame = read_predictions(root)
    assert tuple(frame.columns) == COLUMNS and len(frame) == 3
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == [
        "day=2026-01-05",
        "day=2026-01-06",
    ]
    row = frame.sort_values("ticker").iloc[0]
    assert (row["ticker"], row["model_version"], row["feature_date"]) == ("AAPL", "3", DAY)
    assert row["client"] == client_hash("client-7") != "client-7" and len(row["client"]) == 16
    assert str(frame["ts"].dtype) == "datetime64[us, UTC]"
    assert len(read_predictions(root, start=dt.date(2026, 1, 6))) == 1
    assert len(pd.read_parquet(tmp_path / "predictions")) == 3  # plain pandas reads it too
    empty = read_predictions(DataRoot(str(tmp_path / "nothing")))
    assert tuple(empty.columns) == COLUMNS and empty.empty
    dates = read_predictions(root, columns=["feature_date"])  # what the daily A/B step reads
    assert list(dates.columns) == ["feature_date"] and list(dates["feature_date"]) == [DAY] * 3
    nothing = read_predictions(DataRoot(str(tmp_path / "nothing")), columns=["feature_date"])
    assert list(nothing.columns) == ["feature_date"] and nothing.empty


def test_two_replicas_write_files_of_their_own(tmp_path: Path) -> None:
    root = DataRoot(str(tmp_path))
    logs = [PredictionLog(root, PredictionLogSpec(), Counts()) for _ in range(2)]
    for i, log in enumerate(logs):
        log.record(logged(f"r{i}", ["AAPL"]))
        run(log.flush())
    assert len(list((tmp_path / "predictions").rglob("*.parquet"))) == 2
    assert sorted(read_predictions(root)["request_id"]) == ["r0", "r1"]


def test_a_full_buffer_drops_and_counts_and_a_failed_write_too(tmp_path: Path) -> None:
    counts = Counts()
    log = PredictionLog(DataRoot(str(tmp_path)), PredictionLogSpec(max_rows=3), counts)
    log.record(logged("r1", ["AAPL", "MSFT"]))
    log.record(logged("r2", ["IBM", "GOOG"]))  # 4 > 3: dropped at once
    assert counts.dropped == {"full": 2} and log.status()["buffered"] == 2
    (tmp_path / "predictions").write_text("a file where a folder must be")
    assert run(log.flush()) == 0
    assert counts.dropped == {"full": 2, "write_error": 2} and log.status()["dropped"] == 4


def test_the_task_flushes_on_rows_and_on_close(tmp_path: Path) -> None:
    root, counts = DataRoot(str(tmp_path)), Counts()
    spec = PredictionLogSpec(flush_s=60.0, flush_rows=2)

    async def scenario() -> tuple[int, int]:
        log = PredictionLog(root, spec, counts)
        log.start()
        log.record(logged("r1", ["AAPL", "MSFT"]))  # reaches flush_rows
        for _ in range(100):
            await asyncio.sleep(0.02)
            if counts.written:
                break
        early = counts.written
        log.record(logged("r2", ["IBM"]))  # below flush_rows: written on close
        await log.close()
        return early, counts.written

    assert run(scenario()) == (2, 3)


class Recorded:
    def __init__(self) -> None:
        self.rows: list[LoggedRequest] = []

    def record(self, logged: LoggedRequest) -> None:
        self.rows.append(logged)

    def status(self) -> dict[str, int]:
        return {"buffered": len(self.rows), "written": 0, "dropped": 0}


@pytest.mark.parametrize("precompute", [True, False])
def test_a_request_records_its_answer_and_the_shadows(precompute: bool) -> None:
    variants = {
        "champion": FakeVariant("champion", Linear(1)),
        "challenger": FakeVariant("challenger", Linear(2)),
    }
    service, _ = make(
        variants, shadow=ShadowSpec(variant="challenger", fraction=1.0), precompute=precompute
    )
    service.log = recorded = Recorded()

    async def scenario() -> list[float]:
        await settle(service)
        answer = await service.predict(ask(["AAPL", "MSFT"], "2012-01-06"), "client-1", "req-1")
        await asyncio.gather(*service._pending)
        return [p.predicted_return for p in answer.response.predictions]

    preds = run(scenario())
    served, shadow = recorded.rows
    assert (served.role, served.variant, served.model_version, served.request_id) == (
        "served",
        "champion",
        1,
        "req-1",
    )
    assert list(served.preds) == preds and served.client == client_hash("client-1")
    assert served.feature_dates == [dt.date(2012, 1, 6)] * 2
    assert (shadow.role, shadow.variant, shadow.model_version) == ("shadow", "challenger", 2)
    assert served.sources == ("precomputed" if precompute else ["live", "live"])
    assert shadow.sources == ("precomputed" if precompute else "live")
    service.config = service.config.model_copy(update={"prediction_log": False})  # type: ignore[union-attr]
    run(service.predict(ask(["IBM"], "2012-01-06"), None, "req-2"))
    assert len(recorded.rows) == 2
