"""The data plane's Python API on the shared Ray cluster: incremental runs, Yahoo, Redis."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import pytest
import redis

import tests.yf_frames
from ray_app.core.settings import FeatureSettings, Settings, YahooSettings
from ray_app.core.storage import DataRoot
from ray_app.data.catalog import data_status
from ray_app.data.cross_section import cross_section
from ray_app.data.feature_store import build_features, check_point_in_time, load_feature_set
from ray_app.data.features import RANK_TARGET, TARGET, cross_sectional_names
from ray_app.data.ingest import run_ingest
from ray_app.data.online import OfflineFeatureLookup, open_lookup
from ray_app.data.sources import YahooSource
from tests.yf_frames import FakeDownloader, yfinance_frame

pytestmark = pytest.mark.integration

# Ray workers cannot import the tests package: ship the fake by value.
cloudpickle.register_pickle_by_value(tests.yf_frames)


def sample_settings(root: Path, **ingest: object) -> Settings:
    return Settings(data_root=str(root), ingest={"source": "sample", **ingest})


def test_incremental_runs_fetch_only_new_bars_and_match_a_full_run(
    ray_address: str, tmp_path: Path
) -> None:
    first = run_ingest(sample_settings(tmp_path / "inc", end=dt.date(2012, 12, 31)))
    assert {r["status"] for r in first.rows} == {"ok"}
    assert first.manifest and first.manifest.last_date == dt.date(2012, 12, 31)
    second = run_ingest(sample_settings(tmp_path / "inc"))
    by_ticker = {r["ticker"]: r for r in second.rows}
    assert by_ticker["AAPL"]["new_rows"] == 41  # the sessions 2013-01-02 .. 2013-03-01
    assert by_ticker["AAPL"]["rows"] == 3270
    full = run_ingest(sample_settings(tmp_path / "full"))
    assert second.version == full.version and second.changed
    third = run_ingest(sample_settings(tmp_path / "inc"))
    assert {r["status"] for r in third.rows} == {"up-to-date"} and not third.changed
    assert third.version == full.version


def test_feature_sets_are_versioned_by_data_and_spec(ray_address: str, tmp_path: Path) -> None:
    settings = sample_settings(tmp_path / "fs")
    run_ingest(settings)
    built = build_features(settings)
    assert not built.reused and not built.failed
    assert build_features(settings).reused
    assert built.manifest.data_version == run_ingest(settings).version
    changed = settings.model_copy(deep=True)
    changed.features.rsi_window = 10
    other = build_features(changed)
    assert other.version != built.version and other.data_version == built.data_version
    frame, manifest = load_feature_set(DataRoot(settings.data_root), built.version)
    assert frame["has_target"].all() and frame["date"].is_monotonic_increasing
    assert manifest.index_ticker is None  # the sample has no SPY
    meta = DataRoot(settings.data_root).read_metadata(
        "features", built.version, "ticker=IBM", "features.parquet"
    )
    assert meta["ray_app.data_version"] == built.data_version


def test_the_cross_sectional_pass_on_ray_stores_what_the_day_makes(
    ray_address: str, tmp_path: Path
) -> None:
    """Companions and the rank label through Ray Data's two group-bys: equal to the last bit
    to the same transforms over the stored rows, point in time, and reused on a rerun."""
    spec = FeatureSettings(
        alpha_features=True, cross_sectional=["kbar_body", "ret_5d"], label="next_return_csrank"
    )
    settings = sample_settings(tmp_path / "cs").model_copy(update={"features": spec})
    run_ingest(settings)
    built = build_features(settings)
    assert not built.failed and built.manifest.target == RANK_TARGET
    root = DataRoot(settings.data_root)
    frame, manifest = load_feature_set(root, built.version, training=False)
    assert manifest.columns[-4:] == cross_sectional_names(spec)
    again = cross_section(frame[["ticker", "date", "kbar_body", "ret_5d", TARGET]], spec)
    for column in [*cross_sectional_names(spec), RANK_TARGET]:
        np.testing.assert_array_equal(frame[column].to_numpy(), again[column].to_numpy())
    checks = check_point_in_time(root, built.version, sorted(manifest.tickers))
    assert [c.mismatched for c in checks] == [0] * 5
    assert build_features(settings).reused


def test_yahoo_source_on_ray_retries_and_reports(ray_address: str, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    fake = FakeDownloader(
        frames={
            t: yfinance_frame(t, "2024-01-02", 60, seed=i) for i, t in enumerate(["AAA", "BBB"])
        },
        script={"AAA": ["ratelimit", "ratelimit"], "CCC": ["empty"] * 9},
        calls_file=str(calls),
    )
    yahoo = YahooSettings(
        backoff_initial_s=0.01, backoff_max_s=0.05, max_attempts=3, max_concurrency=2
    )
    settings = Settings(
        data_root=str(tmp_path / "y"),
        ingest={"source": "yahoo", "tickers": ["AAA", "BBB", "CCC"], "yahoo": yahoo},
    )
    result = run_ingest(settings, source=YahooSource(yahoo, fake))
    rows = {r["ticker"]: r for r in result.rows}
    assert rows["AAA"]["status"] == rows["BBB"]["status"] == "ok"
    assert rows["AAA"]["rows"] == 60 and rows["AAA"]["layout"] == "yfinance"
    assert (
        rows["CCC"]["status"] == "failed"
        and "Yahoo failed after 3 attempts" in rows["CCC"]["reason"]
    )
    assert result.failed == ["CCC"]
    assert (
        sorted(line.split()[0] for line in calls.read_text().splitlines())
        == ["AAA"] * 3 + ["BBB"] + ["CCC"] * 3
    )
    assert result.manifest is not None and sorted(result.manifest.tickers) == ["AAA", "BBB"]

    calls.unlink()
    fake.frames = {
        t: yfinance_frame(t, "2024-01-02", 65, seed=i) for i, t in enumerate(["AAA", "BBB"])
    }
    fake.script = {}
    settings.ingest.tickers = ["AAA", "BBB"]
    daily = run_ingest(settings, source=YahooSource(yahoo, fake))
    asked = {line.split()[1] for line in calls.read_text().splitlines()}
    overlap = pd.bdate_range("2024-01-02", periods=60)[-settings.ingest.overlap_days]
    assert asked == {
        overlap.date().isoformat()
    }  # the stored tail again, to check it, then new bars
    assert {r["new_rows"] for r in daily.rows} == {5} and daily.changed

    # The next runs find nothing new: not a failure, whatever the calendar says.
    calls.unlink()
    last_bar = dt.date.fromisoformat(daily.rows[0]["last_date"])  # a Monday
    settings.ingest.end = last_bar
    quiet = run_ingest(settings, source=YahooSource(yahoo, fake))
    assert {r["status"] for r in quiet.rows} == {"up-to-date"} and not calls.exists()
    settings.ingest.end = last_bar + dt.timedelta(days=5)  # sessions, but no bars published
    empty = run_ingest(settings, source=YahooSource(yahoo, fake))
    assert {r["status"] for r in empty.rows} == {"up-to-date"} and not empty.failed
    assert empty.version == daily.version


def test_redis_online_store_answers_like_the_offline_store(
    ray_address: str, tmp_path: Path
) -> None:
    settings = sample_settings(tmp_path / "online")
    run_ingest(settings)
    built = build_features(settings)
    client = redis.Redis.from_url(settings.online.redis_url)
    client.ping()
    keys = f"ray_app:features:{built.version}:*"
    try:
        settings.online.backend = "redis"
        settings.online.redis_days = 300
        online = open_lookup(settings)
        offline = OfflineFeatureLookup(DataRoot(settings.data_root))
        tickers = ["AAPL", "IBM", "MSFT"]
        for as_of in (None, dt.date(2013, 2, 10), dt.date(2012, 12, 25), dt.date(2005, 6, 1)):
            assert online.get_online_features(tickers, as_of) == offline.get_online_features(
                tickers, as_of
            )
        row = online.get_online_features(["IBM"], dt.date(2012, 12, 25))["IBM"]
        assert row.date == dt.date(2012, 12, 24)  # Christmas: the newest row before it
        assert client.zcard(f"ray_app:features:{built.version}:IBM") == 300
    finally:
        for key in client.scan_iter(keys):
            client.delete(key)


def test_ingested_partitions_are_a_pandas_dataset(ray_address: str, tmp_path: Path) -> None:
    settings = sample_settings(tmp_path / "pd", tickers=["IBM", "MSFT"])
    result = run_ingest(settings)
    frame = pd.read_parquet(data_status(settings)["raw"]["files"])
    assert len(frame) == result.manifest.rows if result.manifest else False
    assert sorted(frame["ticker"].astype(str).unique()) == ["IBM", "MSFT"]
