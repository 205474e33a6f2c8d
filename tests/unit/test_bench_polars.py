"""bench/polars_path.py, the Polars twin of the data path, against the project's own functions.

The benchmark compares the Ray path with Polars only as long as Polars does the same work:
these tests run the project's pandas loop (no Ray) and the Polars path on a tiny universe
with bad rows and an odd header in it, and require the same raw bars and the same features,
so that neither side can drift from the other silently.
"""

from __future__ import annotations

import importlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.ingest import latest_manifest, read_bars
from ray_app.data.sources import CsvSource

BENCH = Path(__file__).resolve().parents[2] / "bench"
TICKERS = 4


@pytest.fixture(scope="module")
def modules() -> Iterator[tuple[ModuleType, ModuleType]]:
    """``bench_data`` and ``polars_path``, imported from bench/ as the scripts import them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCH))
        yield importlib.import_module("bench_data"), importlib.import_module("polars_path")


def spoil(folder: Path) -> int:
    """Break rows of SYN0001's file in every way validation knows (returns how many of its
    rows must go), and give SYN0002's file another header: lower case, no adjusted close,
    an extra column, another column order."""
    path = folder / "SYN0001.csv"
    bars = pd.read_csv(path, dtype=str)
    bars.loc[150, "Close"] = "abc"  # non-numeric
    bars.loc[160, "Volume"] = None  # missing
    bars.loc[170, "Date"] = "not a date"
    bars.loc[180, "Low"] = str(float(bars.loc[180, "High"]) * 1.01)  # low above high
    bars.loc[190, "Open"] = "0"  # price <= 0
    bars.loc[200, "Volume"] = "-5"  # negative volume
    bars.loc[220, "Close"] = "n/a"  # invalid, and the first of a duplicated date
    later = bars.loc[[210, 220]].assign(Close=bars.loc[[211, 221], "Close"].to_numpy())
    weekend = bars.loc[[230]].assign(Date="2023-06-03")  # a Saturday
    bars.loc[[300, 301]] = bars.loc[[301, 300]].to_numpy()  # out of order: sorting fixes it
    pd.concat([bars, later, weekend]).to_csv(path, index=False)
    other = pd.read_csv(folder / "SYN0002.csv", dtype=str).drop(columns="Adj Close")
    other.columns = [c.lower() for c in other.columns]
    other.assign(OpenInt="0")[["close", "volume", "date", "OpenInt", "open", "low", "high"]].to_csv(
        folder / "SYN0002.csv", index=False
    )
    return 7 + 2 + 1  # the broken rows, the two later duplicates, the weekend


@pytest.fixture(scope="module")
def built(
    modules: tuple[ModuleType, ModuleType], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, DataRoot, Path, int]:
    """(CSV folder, the project's root, Polars' root, rows spoiled) of 4 tickers x 2 years."""
    bench, polars_path = modules
    out = tmp_path_factory.mktemp("bench")
    folder = bench.write_universe(TICKERS, 2, 7, out)
    spoiled = spoil(folder)
    settings = bench.settings_for(bench.fresh_root(out / "project"), folder, 2)
    assert bench.pandas_ingest(settings, CsvSource(folder)) == []
    assert bench.pandas_features(settings) == []
    raw, features = polars_path.run(folder, out / "polars", Settings())
    assert raw.failed == features.failed == {}
    return folder, DataRoot(settings.data_root), out / "polars", spoiled


def test_polars_path_equals_the_projects_functions(
    modules: tuple[ModuleType, ModuleType], built: tuple[Path, DataRoot, Path, int]
) -> None:
    bench, _ = modules
    folder, root, polars_root, spoiled = built
    problems, worst = bench.compare_polars(root, polars_root, TICKERS)
    assert problems == []
    assert 0 <= worst < bench.RTOL
    # The spoiled rows were there to drop, on both sides.
    lines = len(pd.read_csv(folder / "SYN0001.csv"))
    manifest = latest_manifest(root)
    assert manifest is not None
    assert manifest.tickers["SYN0001"].rows == lines - spoiled
    stored = read_bars(root, "SYN0002", manifest)
    assert (stored["adj_close"] == stored["close"]).all()


def test_the_comparison_finds_a_difference(
    modules: tuple[ModuleType, ModuleType],
    built: tuple[Path, DataRoot, Path, int],
    tmp_path: Path,
) -> None:
    """One feature value moved by 1e-6 relative, one row gone: each is reported."""
    bench, polars_path = modules
    _, root, polars_root, _ = built
    copy = tmp_path / "polars"
    for kind in (polars_path.RAW, polars_path.FEATURES):
        (copy / kind).mkdir(parents=True)
        for path in (polars_root / kind).glob("*.parquet"):
            (copy / kind / path.name).write_bytes(path.read_bytes())
    moved = pd.read_parquet(copy / polars_path.FEATURES / "SYN0001.parquet")
    moved.loc[10, "beta_60d"] *= 1 + 1e-6
    moved.to_parquet(copy / polars_path.FEATURES / "SYN0001.parquet", index=False)
    shorter = pd.read_parquet(copy / polars_path.RAW / "SYN0003.parquet").iloc[1:]
    shorter.to_parquet(copy / polars_path.RAW / "SYN0003.parquet", index=False)
    problems, _ = bench.compare_polars(root, copy, TICKERS)
    assert len(problems) == 2
    assert problems[0].startswith("SYN0003: raw bars differ")
    assert problems[1].startswith("SYN0001: features differ: beta_60d: max abs diff")


def test_feature_difference_requires_missing_values_in_the_same_places(
    modules: tuple[ModuleType, ModuleType],
) -> None:
    bench, _ = modules
    ours = pd.DataFrame({"date": pd.to_datetime(["2024-01-02", "2024-01-03"]), "x": [1.0, np.nan]})
    assert bench.feature_difference(ours, ours.copy()) == ("", 0.0)
    theirs = ours.assign(x=[1.0, 2.0])
    assert bench.feature_difference(ours, theirs)[0] == "x: missing values differ"
    assert bench.feature_difference(ours, ours[["x", "date"]])[0].startswith("columns")


def test_the_script_reports_its_threads_and_stages(
    modules: tuple[ModuleType, ModuleType], built: tuple[Path, DataRoot, Path, int], tmp_path: Path
) -> None:
    """The command the benchmark runs: one process with the thread count asked for, even when
    started without POLARS_MAX_THREADS (it starts itself again with it)."""
    _, polars_path = modules
    folder = built[0]
    done = subprocess.run(
        polars_path.command(1, folder, tmp_path / "root"),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["threads"] == 1
    assert report["failed"] == {}
    assert report["rows"] == sum(
        len(pd.read_parquet(p)) for p in (built[2] / polars_path.RAW).glob("*.parquet")
    )
    assert report["ingest_s"] > 0 and report["features_s"] > 0
    assert report["rss_peak_mb"] >= report["rss_start_mb"] > 0
