"""The pipeline's run record: what the failed- and missing-run alerts read."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from ray_app.core.storage import DataRoot
from ray_app.data.pipeline_runs import read_run_record, record_run


def test_a_failed_run_keeps_the_last_success(tmp_path: Path) -> None:
    root = DataRoot(str(tmp_path))
    assert read_run_record(root) is None
    monday = dt.datetime(2026, 11, 30, 22, tzinfo=dt.timezone.utc)
    first = record_run(root, ok=True, at=monday)
    assert first.last_success_at == monday and first.failed_step is None
    tuesday = monday + dt.timedelta(days=1)
    second = record_run(root, ok=False, failed_step="model_release", at=tuesday)
    assert read_run_record(root) == second
    assert not second.last_run_ok and second.failed_step == "model_release"
    assert second.last_success_at == monday and second.last_run_at == tuesday
