"""Sources: file layouts detected per file, Yahoo frames reshaped, bad files named."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ray_app.core.settings import IngestSettings, YahooSettings
from ray_app.data.sources import (
    BAR_COLUMNS,
    CsvSource,
    SampleSource,
    TickerError,
    YahooSource,
    make_source,
)
from tests.yf_frames import FakeDownloader, yfinance_frame

YAHOO_CSV = (
    "Date,Open,High,Low,Close,Adj Close,Volume\n"
    "2024-01-02,10,11,9,10.5,10.4,1000\n"
    "2024-01-03,10.5,12,10,11.5,11.4,1500\n"
)
KAGGLE_TXT = (
    "Date,Open,High,Low,Close,Volume,OpenInt\n"
    "2024-01-02,10,11,9,10.5,1000,0\n"
    "2024-01-03,10.5,12,10,11.5,1500,0\n"
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "AAA.csv").write_text(YAHOO_CSV)
    (tmp_path / "bbb.us.txt").write_text(KAGGLE_TXT)
    return tmp_path


def test_layouts_are_detected_per_file(folder: Path) -> None:
    source = CsvSource(folder)
    assert source.list_tickers() == ["AAA", "BBB"]
    yahoo, kaggle = source.fetch("AAA", None, None), source.fetch("BBB", None, None)
    assert (yahoo.layout, kaggle.layout) == ("yahoo-csv", "kaggle")
    assert list(yahoo.bars.columns) == BAR_COLUMNS
    assert yahoo.bars["adj_close"].tolist() == [10.4, 11.4]
    assert kaggle.bars["adj_close"].tolist() == kaggle.bars["close"].tolist()
    assert str(kaggle.bars["date"].dtype) == "datetime64[ns]"


def test_column_map_covers_other_layouts(tmp_path: Path) -> None:
    (tmp_path / "CCC.csv").write_text("day,o,h,l,c,vol\n2024-01-02,10,11,9,10.5,1000\n")
    mapping = {"day": "date", "o": "open", "h": "high", "l": "low", "c": "close", "vol": "volume"}
    fetched = CsvSource(tmp_path, mapping).fetch("CCC", None, None)
    assert fetched.layout == "mapped"
    assert fetched.bars.iloc[0]["high"] == 11


def test_parquet_files_are_read(tmp_path: Path) -> None:
    frame = pd.read_csv(pd.io.common.StringIO(YAHOO_CSV))
    frame.to_parquet(tmp_path / "DDD.parquet")
    assert len(CsvSource(tmp_path).fetch("DDD", None, None).bars) == 2


def test_range_is_inclusive(folder: Path) -> None:
    bars = CsvSource(folder).fetch("AAA", dt.date(2024, 1, 3), dt.date(2024, 1, 3)).bars
    assert bars["date"].dt.date.tolist() == [dt.date(2024, 1, 3)]


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("EMPTY.csv", b"", "file is empty (0 bytes)"),
        ("NOCOL.csv", b"Date,Open,Close\n2024-01-02,1,2\n", "missing column(s) high, low, volume"),
        (
            "LATIN.csv",
            "Date,Open,High,Low,Close,Volume\n2024-01-02,1,2,1,2,3 \xe9\n".encode("latin-1"),
            "not UTF-8 text",
        ),
    ],
)
def test_bad_files_are_named_with_the_reason(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    (tmp_path / name).write_bytes(content)
    ticker = name.split(".")[0]
    with pytest.raises(TickerError) as info:
        CsvSource(tmp_path).fetch(ticker, None, None)
    assert name in str(info.value) and reason in str(info.value)


def test_unknown_ticker_is_named(folder: Path) -> None:
    with pytest.raises(TickerError, match="unknown ticker ZZZ"):
        CsvSource(folder).fetch("ZZZ", None, None)


def test_non_numeric_cells_become_nan_for_validation(tmp_path: Path) -> None:
    (tmp_path / "EEE.csv").write_text(YAHOO_CSV.replace("10.5,10.4", "n/a,10.4"))
    bars = CsvSource(tmp_path).fetch("EEE", None, None).bars
    assert bars["close"].isna().tolist() == [True, False]


def test_csv_source_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(TickerError, match="--source csv needs --path"):
        make_source(IngestSettings(source="csv"))
    with pytest.raises(TickerError, match="is not a folder"):
        make_source(IngestSettings(source="csv", path=tmp_path / "missing"))


def test_sample_source_ships_real_bars() -> None:
    source = SampleSource()
    assert source.list_tickers() == ["AAPL", "FB", "GOOG", "IBM", "MSFT"]
    bars = source.fetch("IBM", dt.date(2010, 1, 1), dt.date(2010, 12, 31)).bars
    assert 240 < len(bars) < 260
    assert (bars["adj_close"] != bars["close"]).any()


def test_dates_do_not_depend_on_the_machine_time_zone(folder: Path) -> None:
    """Yahoo's tz-aware midnights and CSV dates map to the same calendar day under any TZ."""
    code = (
        "import sys; sys.path.insert(0, '.')\n"
        "from pathlib import Path\n"
        "from ray_app.core.settings import YahooSettings\n"
        "from ray_app.data.sources import CsvSource, YahooSource\n"
        "from tests.yf_frames import FakeDownloader, yfinance_frame\n"
        f"csv = CsvSource(Path({str(folder)!r})).fetch('AAA', None, None).bars\n"
        "frames = {'X': yfinance_frame('X', '2024-03-01', 20)}\n"
        "fake = FakeDownloader(frames, calls_file=sys.argv[1])\n"
        "yahoo = YahooSource(YahooSettings(), fake).fetch('X', None, None).bars\n"
        "print(csv['date'].tolist(), yahoo['date'].tolist())\n"
    )
    outputs = set()
    for tz in ("UTC", "Asia/Tokyo", "America/Los_Angeles"):
        result = subprocess.run(
            [sys.executable, "-c", code, str(folder / f"calls-{tz.replace('/', '-')}")],
            env={**os.environ, "TZ": tz},
            capture_output=True,
            text=True,
            cwd=Path(__file__).parents[2],
        )
        assert result.returncode == 0, result.stderr
        outputs.add(result.stdout)
    assert len(outputs) == 1


def fast_yahoo(**overrides: float) -> YahooSettings:
    return YahooSettings(backoff_initial_s=0.001, backoff_max_s=0.01, max_attempts=3, **overrides)


def test_yahoo_frame_is_reshaped_to_bars(tmp_path: Path) -> None:
    fake = FakeDownloader(
        {"AAPL": yfinance_frame("AAPL", "2024-03-01", 30, actions=True)},
        calls_file=str(tmp_path / "calls"),
    )
    bars = (
        YahooSource(fast_yahoo(), fake).fetch("AAPL", dt.date(2024, 3, 4), dt.date(2024, 3, 8)).bars
    )
    assert list(bars.columns) == BAR_COLUMNS
    assert bars["date"].dt.date.tolist() == [dt.date(2024, 3, d) for d in range(4, 9)]
    assert bars["date"].dt.hour.eq(0).all()


def test_yahoo_retries_rate_limits_and_timeouts(tmp_path: Path) -> None:
    fake = FakeDownloader(
        {"AAPL": yfinance_frame("AAPL", "2024-03-01", 10)},
        {"AAPL": ["ratelimit", "timeout"]},
        calls_file=str(tmp_path / "calls"),
    )
    bars = YahooSource(fast_yahoo(), fake).fetch("AAPL", None, None).bars
    assert len(bars) == 10
    assert (tmp_path / "calls").read_text().splitlines() == ["AAPL None"] * 3


def test_yahoo_empty_answers_are_retried_then_fail_the_ticker(tmp_path: Path) -> None:
    fake = FakeDownloader({}, calls_file=str(tmp_path / "calls"))
    with pytest.raises(TickerError, match="failed after 3 attempts: Yahoo returned no bars"):
        YahooSource(fast_yahoo(), fake).fetch("NOPE", None, None)
    assert len((tmp_path / "calls").read_text().splitlines()) == 3


def test_yahoo_all_nan_answer_is_an_error(tmp_path: Path) -> None:
    frame = yfinance_frame("AAPL", "2024-03-01", 5).astype("float64")
    frame.loc[:, :] = float("nan")
    fake = FakeDownloader({"AAPL": frame}, calls_file=str(tmp_path / "calls"))
    with pytest.raises(TickerError, match="no bars"):
        YahooSource(fast_yahoo(), fake).fetch("AAPL", None, None)


def test_listing_and_lookup_agree_on_odd_names(tmp_path: Path) -> None:
    (tmp_path / "Aapl.csv").write_text(YAHOO_CSV)
    (tmp_path / "msft.csv").write_text(YAHOO_CSV)
    (tmp_path / "msft.us.txt").write_text(KAGGLE_TXT.replace("10.5,1000", "10.6,1000"))
    source = CsvSource(tmp_path)
    assert source.list_tickers() == ["AAPL", "MSFT"]
    assert len(source.fetch("AAPL", None, None).bars) == 2
    assert source.fetch("MSFT", None, None).layout == "kaggle"  # .us.txt ranks first, both ways
