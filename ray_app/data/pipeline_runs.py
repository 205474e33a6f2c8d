"""The daily pipeline's record of its last run and last success, under the data root.

The pipeline is a Ray job (on Kubernetes a RayCronJob whose cluster is deleted when the job
ends), so nothing of it is left to scrape when a run is missing or failed. It records each
run's end here, and the long-lived prediction API exports the record as gauges
(``ray_app.serving.quality``): the alerts then see a failed run at once and a missing one by
the age of the last success.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel

from ray_app.core.storage import DataRoot

RECORD = ("pipeline", "last_run.json")


class RunRecord(BaseModel):
    """When the pipeline last ended, how, and when it last succeeded."""

    last_run_at: dt.datetime
    last_run_ok: bool
    failed_step: str | None = None
    last_success_at: dt.datetime | None = None


def record_run(
    root: DataRoot, ok: bool, failed_step: str | None = None, at: dt.datetime | None = None
) -> RunRecord:
    """Record that a run ended now (or ``at``), keeping the last success of earlier runs."""
    ended = at or dt.datetime.now(dt.timezone.utc)
    previous = read_run_record(root)
    record = RunRecord(
        last_run_at=ended,
        last_run_ok=ok,
        failed_step=None if ok else failed_step,
        last_success_at=ended if ok else (previous.last_success_at if previous else None),
    )
    root.write_json(record.model_dump(mode="json"), *RECORD)
    return record


def read_run_record(root: DataRoot) -> RunRecord | None:
    """The record, or None before the first run ended."""
    found = root.read_json(*RECORD)
    return None if found is None else RunRecord.model_validate(found)
