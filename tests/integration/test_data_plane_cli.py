"""The data plane through the `ray-app` command line, on a real local Ray cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ray_app.core.storage import DataRoot
from ray_app.data.feature_store import check_point_in_time, load_feature_set
from ray_app.data.ingest import latest_manifest, read_bars, read_manifest
from tests.integration.conftest import run_cli

pytestmark = pytest.mark.integration


def test_real_kaggle_bars_are_ingested_and_featurized(
    ray_address: str, kaggle_dir: Path, tmp_path: Path
) -> None:
    root = str(tmp_path / "data")
    ingest = run_cli(
        ["ingest", "--source", "csv", "--path", str(kaggle_dir), "--data-root", root],
        ray_address,
        tmp_path,
    )
    assert ingest.returncode == 0, ingest.stderr
    assert "dropped 3 row(s): high/low inconsistent" in ingest.stdout  # ARE has three such bars
    features = run_cli(["features", "--data-root", root], ray_address, tmp_path)
    assert features.returncode == 0, features.stderr
    status = run_cli(["data", "status", "--json", "--data-root", root], ray_address, tmp_path)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    raw, feature_set = report["raw"], report["features"][0]
    assert len(raw["tickers"]) == 41 and raw["last_date"] == "2017-11-10"
    assert (
        feature_set["data_version"] == raw["version"]
        and feature_set["latest"]
        and feature_set["current"]
    )
    bars = pd.read_parquet(raw["files"])
    assert len(bars) == raw["rows"] and set(bars["ticker"].astype(str)) == set(raw["tickers"])
    table = pd.read_parquet(feature_set["path"])
    assert len(table) == feature_set["rows"] and "beta_60d" in table.columns
    assert np.isfinite(
        table.drop(columns=["ticker", "date", "target_ret", "target_dir", "has_target"]).to_numpy()
    ).all()

    again = run_cli(
        [
            "ingest",
            "--source",
            "csv",
            "--path",
            str(kaggle_dir),
            "--data-root",
            root,
            "--full-refresh",
        ],
        ray_address,
        tmp_path,
    )
    assert again.returncode == 0, again.stderr
    assert f"data version {raw['version']} (unchanged)" in again.stdout


def write_bars(path: Path, n: int = 80, seed: int = 0, kaggle: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    frame = pd.DataFrame(
        {
            "Date": pd.bdate_range("2023-01-02", periods=n).strftime("%Y-%m-%d"),
            "Open": close,
            "High": close * 1.01,
            "Low": close * 0.99,
            "Close": close,
            "Volume": 1000 + seed,
        }
    )
    if kaggle:
        frame["OpenInt"] = 0
    else:
        frame.insert(5, "Adj Close", close)
    frame.to_csv(path, index=False)
    return frame


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "bars"
    folder.mkdir()
    write_bars(folder / "GOOD.csv")
    write_bars(folder / "kag.us.txt", seed=1, kaggle=True)
    (folder / "EMPTY.csv").write_bytes(b"")
    write_bars(folder / "NOCOLS.csv").drop(columns=["High", "Low"]).to_csv(
        folder / "NOCOLS.csv", index=False
    )
    text = (folder / "GOOD.csv").read_text().splitlines()
    (folder / "NONNUM.csv").write_text(
        "\n".join([*text[:5], text[5].replace(text[5].split(",")[4], "abc"), *text[6:]])
    )
    (folder / "DUPS.csv").write_text("\n".join([*text, text[-1]]))
    cells = text[7].split(",")
    cells[2], cells[3] = cells[3], cells[2]  # high and low swapped
    (folder / "HILO.csv").write_text("\n".join([*text[:7], ",".join(cells), *text[8:]]))
    (folder / "NANS.csv").write_text(
        "\n".join([*text[:9], text[9].replace(text[9].split(",")[1], ""), *text[10:]])
    )
    (folder / "LATIN.csv").write_bytes(
        "\n".join(text).replace("Volume", "Volum\xe9").encode("latin-1")
    )
    return folder


def summary(stdout: str) -> dict[str, str]:
    """ticker -> the whole table line, from the CLI's summary table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) > 3 and cells[0].isupper():
            rows[cells[0]] = line
    return rows


def test_bad_input_is_reported_per_ticker_and_never_sinks_the_rest(
    ray_address: str, messy_folder: Path, tmp_path: Path
) -> None:
    root = str(tmp_path / "data")
    args = ["ingest", "--source", "csv", "--path", str(messy_folder), "--data-root", root]
    result = run_cli(
        [*args, "--tickers", "GOOD,KAG,EMPTY,NOCOLS,NONNUM,DUPS,HILO,NANS,LATIN,UNKNOWN"],
        ray_address,
        tmp_path,
    )
    assert result.returncode == 1
    rows = summary(result.stdout)
    for ticker in ("GOOD", "KAG"):
        assert " ok " in rows[ticker]
    expected = {
        "EMPTY": "EMPTY.csv: file is empty",
        "NOCOLS": "NOCOLS.csv: missing column(s) high, low",
        "LATIN": "LATIN.csv: not UTF-8 text",
        "UNKNOWN": "unknown ticker UNKNOWN: no file",
        "NONNUM": "dropped 1 row(s): missing or non-numeric",
        "NANS": "dropped 1 row(s): missing or non-numeric",
        "DUPS": "dropped 1 row(s): duplicate date",
        "HILO": "dropped 1 row(s): high/low inconsistent",
    }
    for ticker, reason in expected.items():
        assert reason in rows[ticker], (ticker, rows[ticker])
    assert "4 of 10 ticker(s) failed" in result.stderr
    stored = json.loads(
        run_cli(["data", "status", "--json", "--data-root", root], ray_address, tmp_path).stdout
    )
    assert stored["raw"]["tickers"] == ["DUPS", "GOOD", "HILO", "KAG", "NANS", "NONNUM"]

    strict = run_cli(
        [
            *args,
            "--tickers",
            "NONNUM,HILO",
            "--bad-rows",
            "fail",
            "--full-refresh",
            "--allow-partial",
        ],
        ray_address,
        tmp_path,
    )
    assert strict.returncode == 0, strict.stderr
    assert "bad_rows=fail" in summary(strict.stdout)["HILO"]


def test_a_broken_refresh_never_loses_stored_bars(
    ray_address: str, messy_folder: Path, tmp_path: Path
) -> None:
    root = str(tmp_path / "data")
    args = [
        "ingest",
        "--source",
        "csv",
        "--path",
        str(messy_folder),
        "--data-root",
        root,
        "--tickers",
        "GOOD",
    ]
    assert run_cli(args, ray_address, tmp_path).returncode == 0
    before = latest_manifest(DataRoot(root))
    (messy_folder / "GOOD.csv").write_bytes(b"")
    broken = run_cli([*args, "--full-refresh"], ray_address, tmp_path)
    assert broken.returncode == 1 and "GOOD.csv: file is empty" in broken.stdout
    assert latest_manifest(DataRoot(root)) == before
    assert len(read_bars(DataRoot(root), "GOOD")) == 80


def test_two_ingests_at_once_keep_both_tickers(ray_address: str, tmp_path: Path) -> None:
    root = str(tmp_path / "data")

    def ingest(ticker: str) -> subprocess.CompletedProcess[str]:
        args = ["ingest", "--source", "sample", "--tickers", ticker, "--data-root", root]
        return run_cli(args, ray_address, tmp_path)

    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(ingest, ["AAPL", "IBM"]))
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    latest = latest_manifest(DataRoot(root))
    assert latest is not None and sorted(latest.tickers) == ["AAPL", "IBM"]
    assert latest.parent is not None
    parent = read_manifest(DataRoot(root), latest.parent)  # the run that recorded first
    assert len(parent.tickers) == 1 and parent.parent is None


def test_a_second_pipeline_on_a_busy_root_is_one_line(ray_address: str, tmp_path: Path) -> None:
    root = tmp_path / "data"
    with DataRoot(str(root)).lock("pipeline", 0):  # a first pipeline, as far as the CLI can tell
        second = run_cli(
            ["pipeline", "--data-root", str(root)],
            ray_address,
            tmp_path,
            env={"RAY_APP_PIPELINE__LOCK_TIMEOUT_S": "0"},
        )
    assert second.returncode == 2, second.stderr
    busy = f"error: data root {root} is busy: its pipeline lock is held by pid {os.getpid()} on "
    assert busy in second.stderr and "Traceback" not in second.stderr


def test_a_re_adjusted_history_is_refetched(ray_address: str, tmp_path: Path) -> None:
    folder = tmp_path / "bars"
    folder.mkdir()
    write_bars(folder / "SPLIT.csv", seed=3)
    write_bars(folder / "STEADY.csv", seed=4)
    root = str(tmp_path / "data")
    args = ["ingest", "--source", "csv", "--path", str(folder), "--data-root", root]
    first = run_cli([*args, "--end", "2023-03-31"], ray_address, tmp_path)
    assert first.returncode == 0, first.stderr
    before = latest_manifest(DataRoot(root))
    split = pd.read_csv(folder / "SPLIT.csv")
    split[["Open", "High", "Low", "Close", "Adj Close"]] *= 0.5  # the source after a 2:1 split
    split.to_csv(folder / "SPLIT.csv", index=False)

    second = run_cli(args, ray_address, tmp_path)
    assert second.returncode == 0, second.stderr
    rows = summary(second.stdout)
    assert (
        " refetched " in rows["SPLIT"] and "history re-adjusted (adj_close x0.5000" in rows["SPLIT"]
    )
    assert " ok " in rows["STEADY"]
    after = latest_manifest(DataRoot(root))
    assert before and after and after.parent == before.version
    assert after.tickers["SPLIT"].rows == 80
    stored = read_bars(DataRoot(root), "SPLIT")
    assert np.allclose(stored["adj_close"], split["Adj Close"])


def test_a_date_range_without_bars_is_named(
    ray_address: str, messy_folder: Path, tmp_path: Path
) -> None:
    result = run_cli(
        [
            "ingest",
            "--source",
            "csv",
            "--path",
            str(messy_folder),
            "--tickers",
            "GOOD",
            "--start",
            "2030-01-01",
            "--data-root",
            str(tmp_path / "d"),
        ],
        ray_address,
        tmp_path,
    )
    assert result.returncode == 1
    assert "GOOD: no bars from 2030-01-01 to today" in result.stdout


def test_bad_options_are_one_line_errors(ray_address: str, tmp_path: Path) -> None:
    unknown = run_cli(["ingest", "--source", "bloomberg"], ray_address, tmp_path)
    assert unknown.returncode == 2 and "'bloomberg' is not one of" in unknown.stderr
    config = tmp_path / "bad.yaml"
    config.write_text("ingest:\n  sauce: csv\n")
    typo = run_cli(["ingest", "--config", str(config)], ray_address, tmp_path)
    assert (
        typo.returncode == 2
        and "ingest.sauce: unknown key" in typo.stderr
        and "Traceback" not in typo.stderr
    )
    missing = run_cli(["features", "--data-root", str(tmp_path / "empty")], ray_address, tmp_path)
    assert missing.returncode == 2 and "run `ray-app ingest` first" in missing.stderr
    empty = ["features", "--data-root", str(tmp_path / "empty"), "--data-version"]
    version = run_cli([*empty, "0123456789abcdef"], ray_address, tmp_path)
    assert version.returncode == 2
    assert "data version 0123456789abcdef does not exist" in version.stderr
    malformed = run_cli([*empty, "abc"], ray_address, tmp_path)
    assert malformed.returncode == 2 and "data version 'abc' is not a version" in malformed.stderr


def unversion(root: Path) -> list[Path]:
    """Strip ``schema_version`` from every manifest: the root as older code left it."""
    manifests = [*root.glob("raw/_manifests/[!L]*.json"), *root.glob("features/*/_manifest.json")]
    for path in manifests:
        payload = json.loads(path.read_text())
        del payload["schema_version"]
        path.write_text(json.dumps(payload, indent=2, sort_keys=True))
    return manifests


def test_an_old_data_root_is_refused_until_migrated(ray_address: str, tmp_path: Path) -> None:
    root = tmp_path / "data"
    for stage in (["ingest", "--source", "sample", "--tickers", "AAPL,IBM"], ["features"]):
        built = run_cli([*stage, "--data-root", str(root)], ray_address, tmp_path)
        assert built.returncode == 0, built.stderr
    manifests = unversion(root)
    assert len(manifests) == 2

    refused = run_cli(["features", "--data-root", str(root)], ray_address, tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "no schema version (an older format; this ray-app reads 2)" in refused.stderr
    assert f"run `ray-app migrate --data-root {root}`" in refused.stderr

    migrated = run_cli(["migrate", "--data-root", str(root)], ray_address, tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert "2 manifest(s) upgraded to schema version 2, 0 already current" in migrated.stdout
    upgraded = {p: p.read_text() for p in manifests}
    reused = run_cli(["features", "--data-root", str(root)], ray_address, tmp_path)
    assert reused.returncode == 0, reused.stderr
    assert "is up to date" in reused.stdout  # the migrated feature manifest was read as built

    again = run_cli(["migrate", "--data-root", str(root)], ray_address, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "nothing changed" in again.stdout
    assert {p: p.read_text() for p in manifests} == upgraded


def test_an_old_data_version_rebuilds_exactly_its_feature_set(
    ray_address: str, kaggle_dir: Path, tmp_path: Path
) -> None:
    """Ingest up to a day, build features, ingest the days after it (the partitions of every
    ticker change), delete the old feature set and rebuild it with --data-version: the same
    feature version and the same frame, to the last bit; the point-in-time check of the old
    set reads the old bars."""
    root = str(tmp_path / "data")
    ingest = ["ingest", "--source", "csv", "--path", str(kaggle_dir), "--data-root", root]
    ingest += ["--tickers", "AIG,CSX,CME", "--start", "2015-01-01"]
    assert run_cli([*ingest, "--end", "2017-06-30"], ray_address, tmp_path).returncode == 0
    old = latest_manifest(DataRoot(root))
    built = run_cli(["features", "--data-root", root], ray_address, tmp_path)
    assert built.returncode == 0, built.stderr
    first, manifest = load_feature_set(DataRoot(root), training=False)

    later = run_cli(ingest, ray_address, tmp_path)  # up to the last bar, 2017-11-10
    assert later.returncode == 0, later.stderr
    new = latest_manifest(DataRoot(root))
    assert old and new and new.version != old.version and new.last_date.isoformat() > "2017-11"
    shutil.rmtree(Path(root) / "features" / manifest.version)

    rebuilt = run_cli(
        ["features", "--data-root", root, "--data-version", old.version], ray_address, tmp_path
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"feature set {manifest.version}: " in " ".join(rebuilt.stdout.split())
    again, again_manifest = load_feature_set(DataRoot(root), manifest.version, training=False)
    assert again_manifest.data_version == old.version and again["date"].max() < pd.Timestamp(
        "2017-07-01"
    )
    pd.testing.assert_frame_equal(again, first)
    audit = check_point_in_time(DataRoot(root), manifest.version, sorted(manifest.tickers))
    assert [c.mismatched for c in audit] == [0, 0, 0]
