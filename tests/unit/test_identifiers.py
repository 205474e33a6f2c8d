"""Tickers and versions become paths under the data root: one rule each, applied at every
entry (settings, environment, ``--tickers @file``, sources), and a data root that refuses
any path that resolves outside it. Bad values are one clear line, exit 2, nothing written."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ray_app.core.identifiers import InvalidIdentifierError, check_ticker, check_version
from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot, PathEscapeError
from ray_app.data.ingest import TickerJob, ingest_ticker
from ray_app.data.sources import SampleSource
from ray_app.ops.cluster import STATE_FILE, ClusterState

ESCAPE = "A/../../../ESCAPED"


@pytest.mark.parametrize("good", ["AAPL", " msft ", "BRK-B", "BF.B", "7203.T"])
def test_tickers_are_normalised(good: str) -> None:
    assert check_ticker(good) == good.strip().upper()


@pytest.mark.parametrize("bad", [ESCAPE, "..", "-X", "", "[/bogus]", "A B", "X" * 17, "A\\B"])
def test_tickers_that_could_be_paths_or_markup_are_refused(bad: str) -> None:
    with pytest.raises(InvalidIdentifierError, match="is not a ticker"):
        check_ticker(bad)


@pytest.mark.parametrize("bad", ["../../x", "3F2A9C0D1E4B5A67", "3f2a9c0d1e4b5a6", "latest"])
def test_versions_must_have_the_hash_form(bad: str) -> None:
    assert check_version("3f2a9c0d1e4b5a67") == "3f2a9c0d1e4b5a67"
    with pytest.raises(InvalidIdentifierError, match="is not a version"):
        check_version(bad, "data version")


@pytest.mark.parametrize("parts", [("raw", f"ticker={ESCAPE}", "bars.parquet"), ("..",), ("/etc",)])
def test_the_data_root_refuses_paths_outside_it(tmp_path: Path, parts: tuple[str, ...]) -> None:
    root = DataRoot(str(tmp_path / "data"))
    with pytest.raises(PathEscapeError, match="outside the data root"):
        root.write_parquet(pd.DataFrame({"x": [1]}), *parts, metadata={})
    assert sorted(p.name for p in tmp_path.rglob("*")) == []


@pytest.mark.parametrize("form", ["path", "file URI"])
def test_a_symlink_inside_the_data_root_that_leads_out_is_refused(
    tmp_path: Path, form: str
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    data = tmp_path / "data"
    (data / "raw").mkdir(parents=True)
    (data / "raw" / "ticker=AAPL").symlink_to(outside, target_is_directory=True)
    (data / "features").symlink_to(data / "raw")  # a link that stays inside is fine
    root = DataRoot(str(data) if form == "path" else f"file://{data}")
    with pytest.raises(PathEscapeError) as refused:
        root.write_parquet(
            pd.DataFrame({"x": [1]}), "raw", "ticker=AAPL", "bars.parquet", metadata={}
        )
    assert str(refused.value) == (
        f"refused a path outside the data root {root.uri}: 'raw/ticker=AAPL/bars.parquet' "
        f"resolves to {outside / 'bars.parquet'}"
    )
    assert list(outside.iterdir()) == []
    root.write_parquet(pd.DataFrame({"x": [1]}), "features", "f.parquet", metadata={})
    assert (data / "raw" / "f.parquet").is_file()


def test_a_source_ticker_that_cannot_name_a_folder_fails_alone(tmp_path: Path) -> None:
    settings = Settings(data_root=str(tmp_path / "data"), ingest={"source": "sample"})
    root = DataRoot(settings.data_root)
    row = ingest_ticker(TickerJob(ESCAPE, None, None), SampleSource(), settings.ingest, root)
    assert row["status"] == "failed" and "is not a ticker" in row["reason"]
    assert not (tmp_path / "ESCAPED").exists() and not list(tmp_path.rglob("*.parquet"))


def cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``ray-app`` from a plain environment: these fail before any Ray is needed."""
    plain = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAY_APP_"))}
    return subprocess.run(
        [sys.executable, "-m", "ray_app", *args],
        cwd=cwd,
        env={**plain, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("extra", "env", "named"),
    [
        (["--tickers", "@tickers.txt"], {}, "'[/BOGUS]' is not a ticker"),
        ([], {"RAY_APP_INGEST__TICKERS": f'["{ESCAPE}"]'}, f"'{ESCAPE}' is not a ticker"),
        (["--config", "bad.yaml"], {}, f"'{ESCAPE}' is not a ticker"),
        (["--tickers", ESCAPE], {}, f"--tickers {ESCAPE}: no such file"),
    ],
    ids=["file with markup", "environment", "yaml", "path-like value"],
)
def test_bad_tickers_are_one_line_and_write_nothing(
    tmp_path: Path, extra: list[str], env: dict[str, str], named: str
) -> None:
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    (work / "tickers.txt").write_text("AAPL\n[/bogus]\n")
    (work / "bad.yaml").write_text(f'ingest:\n  tickers: ["{ESCAPE}"]\n')
    before = sorted(tmp_path.rglob("*"))
    result = cli(["ingest", "--source", "sample", "--data-root", "data", *extra], work, **env)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(tmp_path.rglob("*")) == before


def test_file_names_with_markup_are_printed_as_they_are(tmp_path: Path) -> None:
    """A data root and a destination named with Rich markup, printed after the backup ran."""
    root = tmp_path / "data[/bogus]"
    DataRoot(str(root)).write_parquet(pd.DataFrame({"x": [1]}), "raw", "a.parquet", metadata={})
    result = cli(["backup", "out[/bogus]", "--data-root", str(root)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "backup out[/bogus]" in result.stdout and str(root) in result.stdout
    assert (tmp_path / "out[" / "bogus]" / "backup.json").is_file()


def test_a_dead_head_is_named_in_plain_words(tmp_path: Path) -> None:
    """`cluster status` of a recorded head that is gone: its session folder, named with
    markup, printed as it is, and the colour is not printed as tags."""
    session = tmp_path / "ray" / "session_[/bogus]"
    head = ClusterState(
        gcs_address="127.0.0.1:6380",
        dashboard_url="http://127.0.0.1:8265",
        token_path=str(tmp_path / "auth_token"),
        haproxy=False,
        started_at=1.0,
        session_dir=str(session),
        node_id="f9e67d2d",
        gcs_pid=4_194_000,  # processes that do not run, or not since 1 s after the epoch
        raylet_pid=4_194_001,
        pids={"4194000": 1.0, "4194001": 1.0},
    )
    (tmp_path / STATE_FILE).write_text(json.dumps(dataclasses.asdict(head)))
    result = cli(["cluster", "status"], tmp_path, RAY_APP_CLUSTER__STATE_DIR=str(tmp_path))
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[0] == (
        f"the head at 127.0.0.1:6380 is dead (its GCS is gone); 0 leftover process(es) of "
        f"{session}:"
    )


def test_a_bad_data_version_is_one_line(tmp_path: Path) -> None:
    result = cli(["features", "--data-version", "../../x", "--data-root", "data"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "data version '../../x' is not a version" in result.stderr
    assert not (tmp_path / "data").exists()
