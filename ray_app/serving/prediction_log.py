"""The prediction log's writer inside each ingress replica: batches, off the request path.

A request hands over one ``LoggedRequest`` per variant that answered it (``record``: an append
to a list, no I/O, no await). A background task writes the buffer as Parquet files under the
data root (``ray_app.data.predictions``) every ``flush_s`` seconds, or sooner once
``flush_rows`` rows wait, in a thread, so the event loop keeps answering meanwhile. The
buffer holds at most ``max_rows`` rows: past that, a request's rows are dropped and counted
(``ray_app_prediction_log_dropped_total{reason="full"}``), and a flush that fails drops its
rows the same way (``reason="write_error"``); a request never waits for the log. Serve calls
``Ingress.__del__`` on a graceful shutdown, which flushes what is left; a crash loses at most
one flush interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Protocol

from ray_app.core.storage import DataRoot
from ray_app.data.predictions import LoggedRequest, to_table, write_predictions
from ray_app.serving.args import PredictionLogSpec

logger = logging.getLogger("ray.serve")


class LogMetrics(Protocol):
    def log_written(self, rows: int) -> None: ...

    def log_dropped(self, rows: int, reason: str) -> None: ...


class PredictionLog:
    """One replica's buffer of logged predictions and the task that flushes it."""

    def __init__(
        self, root: DataRoot, spec: PredictionLogSpec, metrics: LogMetrics, writer: str = ""
    ) -> None:
        self.root = root
        self.spec = spec
        self.metrics = metrics
        self.writer = writer or uuid.uuid4().hex[:12]  # distinct files per replica
        self.written = 0
        self.dropped = 0
        self._buffer: list[LoggedRequest] = []
        self._rows = 0
        self._seq = 0
        self._due = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def record(self, logged: LoggedRequest) -> None:
        """Keep ``logged`` for the next flush, or drop and count it when the buffer is full."""
        rows = len(logged)
        if self._rows + rows > self.spec.max_rows:
            self.dropped += rows
            self.metrics.log_dropped(rows, "full")
            return
        self._buffer.append(logged)
        self._rows += rows
        if self._rows >= self.spec.flush_rows:
            self._due.set()

    def status(self) -> dict[str, int]:
        return {"buffered": self._rows, "written": self.written, "dropped": self.dropped}

    def start(self) -> None:
        """Start the flushing task (again, if it ended); call from the replica's event loop."""
        if self._task is None or self._task.done():
            self._closing = False
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):  # the interval is up: flush anyway
                await asyncio.wait_for(self._due.wait(), self.spec.flush_s)
            self._due.clear()
            await self.flush()

    async def flush(self) -> int:
        """Write what the buffer holds now; returns the rows written."""
        batch, self._buffer, rows = self._buffer, [], self._rows
        self._rows = 0
        if not batch:
            return 0
        self._seq += 1
        name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{self.writer}-{self._seq:06d}"
        try:
            await asyncio.to_thread(self._write, batch, name)
        except Exception as exc:
            self.dropped += rows
            self.metrics.log_dropped(rows, "write_error")
            logger.warning("prediction log: %d row(s) not written: %s", rows, repr(exc))
            return 0
        self.written += rows
        self.metrics.log_written(rows)
        return rows

    def _write(self, batch: list[LoggedRequest], name: str) -> None:
        """In a thread: spreading the requests into an Arrow table is per-row Python work
        that, on the event loop, held up requests at high concurrency (bench_serve's (d))."""
        write_predictions(self.root, to_table(batch), name)

    async def close(self) -> None:
        """Stop the task after a last flush (a graceful shutdown loses nothing)."""
        self._closing = True
        self._due.set()
        if self._task is not None:
            await self._task
        await self.flush()
