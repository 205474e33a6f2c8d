"""The pipeline's run loop without Ray: one run at a time per data root."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot, LockBusyError
from ray_app.data.pipeline_runs import read_run_record
from ray_app.ops.pipeline import SKIPPED, PlannedStep, run_pipeline


def same_inputs(_settings: Settings, _ctx: dict[str, Any]) -> str:
    return "same inputs"


def test_a_second_pipeline_on_the_root_is_refused_naming_the_first(tmp_path: Path) -> None:
    settings = Settings(data_root=str(tmp_path), pipeline={"lock_timeout_s": 0})
    refused: list[LockBusyError] = []

    def start_another(s: Settings, _ctx: dict[str, Any]) -> tuple[str, dict[str, str]]:
        try:
            run_pipeline(s, [PlannedStep("inner", start_another, None)])
        except LockBusyError as exc:
            refused.append(exc)
        return "", {}

    run = run_pipeline(settings, [PlannedStep("outer", start_another, None)])
    assert not run.failed and len(refused) == 1
    message = str(refused[0])
    assert message.startswith(f"data root {tmp_path} is busy: its pipeline lock is held by ")
    assert f"pid {os.getpid()} on " in message and "\n" not in message


def test_a_second_pipeline_waits_for_the_first_then_reads_its_state(tmp_path: Path) -> None:
    settings = Settings(data_root=str(tmp_path))
    started, may_finish = threading.Event(), threading.Event()

    def slow(_s: Settings, _ctx: dict[str, Any]) -> tuple[str, dict[str, str]]:
        started.set()
        assert may_finish.wait(60)
        return "done", {}

    def must_not_run(_s: Settings, _ctx: dict[str, Any]) -> tuple[str, dict[str, str]]:
        raise AssertionError("the second run should find the first's fingerprint")

    first = threading.Thread(
        target=run_pipeline, args=(settings, [PlannedStep("step", slow, same_inputs)])
    )
    first.start()
    assert started.wait(60)
    waited: list[str] = []

    def let_the_first_finish(holder: str) -> None:
        waited.append(holder)
        may_finish.set()

    second = run_pipeline(
        settings, [PlannedStep("step", must_not_run, same_inputs)], on_wait=let_the_first_finish
    )
    first.join()
    assert [s.status for s in second.steps] == [SKIPPED]
    assert len(waited) == 1 and f"pid {os.getpid()}" in waited[0]


def test_every_run_records_its_end_and_the_last_success(tmp_path: Path) -> None:
    """What the failed- and missing-run alerts read (exported by the prediction API)."""
    settings = Settings(data_root=str(tmp_path))

    def ok(_s: Settings, _ctx: dict[str, Any]) -> tuple[str, dict[str, str]]:
        return "", {}

    def broken(_s: Settings, _ctx: dict[str, Any]) -> tuple[str, dict[str, str]]:
        raise RuntimeError("no bars")

    run_pipeline(settings, [PlannedStep("ingest", ok, None)])
    first = read_run_record(DataRoot(str(tmp_path)))
    assert first is not None and first.last_run_ok and first.last_success_at == first.last_run_at
    run = run_pipeline(
        settings, [PlannedStep("ingest", ok, None), PlannedStep("train", broken, None)]
    )
    assert run.failed
    second = read_run_record(DataRoot(str(tmp_path)))
    assert second is not None and not second.last_run_ok and second.failed_step == "train"
    assert second.last_success_at == first.last_run_at < second.last_run_at
