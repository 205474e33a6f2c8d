"""Storage: atomic writes, stable content hashes, readable datasets."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ray_app.core.storage import DataRoot, combine_hashes, frame_hash


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
