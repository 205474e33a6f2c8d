"""Storage: atomic writes, stable content hashes, readable datasets, locks."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from ray_app.core.storage import DataRoot, LockBusyError, combine_hashes, frame_hash


def frame(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame({"date": pd.date_range("2024-01-01", periods=n), "x": range(n)})


def test_parquet_roundtrip_with_metadata(tmp_path: Path) -> None:
    root = DataRoot(str(tmp_path))
    root.write_parquet(frame(), "raw", "ticker=A", "bars.parquet", metadata={"ray_app.hash": "h"})
    pd.testing.assert_frame_equal(root.read_parquet("raw", "ticker=A", "bars.parquet"), frame())
    assert root.read_metadata("raw", "ticker=A", "bars.parquet")["ray_app.hash"] == "h"
    assert pd.read_parquet(tmp_path / "raw")["ticker"].astype(str).tolist() == ["A"] * 3


def test_a_crash_mid_write_keeps_the_old_file(tmp_path: Path) -> None:
    root = DataRoot(str(tmp_path))
    root.write_parquet(frame(3), "p.parquet", metadata={})

    def crash(_path: str) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        root._commit(root.path("p.parquet"), crash)
    pd.testing.assert_frame_equal(root.read_parquet("p.parquet"), frame(3))
    assert [p.name for p in tmp_path.iterdir()] == ["p.parquet"]


def test_json_is_replaced_atomically(tmp_path: Path) -> None:
    root = DataRoot(str(tmp_path))
    assert root.read_json("m.json") is None
    root.write_json({"a": 1}, "m.json")
    root.write_json({"a": 2}, "m.json")
    assert root.read_json("m.json") == {"a": 2}
    assert len(list(tmp_path.iterdir())) == 1


def test_hashes_are_stable_and_sensitive() -> None:
    assert frame_hash(frame()) == frame_hash(frame())
    changed = frame()
    changed.loc[1, "x"] = 99
    assert frame_hash(changed) != frame_hash(frame())
    assert combine_hashes({"a": "1", "b": "2"}) == combine_hashes({"b": "2", "a": "1"})


def test_uri_roots_are_supported(tmp_path: Path) -> None:
    root = DataRoot(f"file://{tmp_path}")
    root.write_json({"ok": True}, "x", "m.json")
    assert (tmp_path / "x" / "m.json").exists()
    assert root.display("x") == f"{tmp_path}/x"  # local URIs display as plain paths


# Holds the lock "demo" of the root in argv[1] until a line arrives on stdin.
HOLD = """
import sys
from ray_app.core.storage import DataRoot
with DataRoot(sys.argv[1]).lock("demo", 0):
    print("held", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the root's lock "demo"; it lets go on a line on its stdin."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    yield proc
    proc.kill()
    proc.wait()


def test_a_held_lock_is_refused_naming_root_and_holder(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    waited: list[str] = []
    with (
        pytest.raises(LockBusyError) as busy,
        DataRoot(str(tmp_path)).lock("demo", 0, waited.append),
    ):
        pass
    assert str(busy.value).startswith(f"data root {tmp_path} is busy: its demo lock is held by ")
    assert f"pid {holder.pid} on " in str(busy.value) and "gave up after 0 s" in str(busy.value)
    assert waited and f"pid {holder.pid}" in waited[0]


def test_a_waiting_writer_runs_once_the_holder_lets_go(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    def release(_holder: str) -> None:
        assert holder.stdin is not None
        holder.stdin.write("done\n")
        holder.stdin.flush()

    with DataRoot(str(tmp_path)).lock("demo", 60, release):
        assert holder.wait(timeout=60) == 0
    assert sorted(p.name for p in (tmp_path / "_locks").iterdir()) == ["demo.lock"]


def test_a_dead_holder_leaves_the_lock_free(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    holder.kill()
    holder.wait()
    with DataRoot(str(tmp_path)).lock("demo", 0):
        assert f"pid {holder.pid}" not in DataRoot(str(tmp_path)).lock_holder("demo")


def test_remote_roots_run_unlocked_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    root = DataRoot("mock:///bucket/lake")
    with caplog.at_level(logging.WARNING), root.lock("demo", 0):
        root.write_json({"ok": True}, "m.json")
    assert "no lock 'demo' on a remote data root" in caplog.text
