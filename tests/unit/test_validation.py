"""Validation: each kind of bad bar is dropped and reported, or fails its ticker."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ray_app.core.settings import IngestSettings
from ray_app.data.sources import TickerError
from ray_app.data.validation import validate_bars


def bars(n: int = 6, start: str = "2024-01-02") -> pd.DataFrame:
    dates = pd.bdate_range(start, periods=n)
    close = np.linspace(100, 105, n)
    return pd.DataFrame(
        {
            "date": dates.astype("datetime64[ns]"),
            "open": close - 0.5,
            "high": close + 1,
            "low": close - 1,
            "close": close,
            "adj_close": close,
            "volume": np.full(n, 1e6),
        }
    )


BROKEN = {
    "missing or non-numeric values": lambda b: b.assign(close=b["close"].where(b.index != 2)),
    "price <= 0": lambda b: b.assign(open=b["open"].where(b.index != 2, 0.0)),
    "negative volume": lambda b: b.assign(volume=b["volume"].where(b.index != 2, -5.0)),
    "high/low inconsistent with open/close": lambda b: b.assign(
        high=b["high"].where(b.index != 2, 50.0)
    ),
    "duplicate date": lambda b: b.assign(date=b["date"].where(b.index != 2, b["date"][1])),
    "unparseable date": lambda b: b.assign(date=b["date"].where(b.index != 2)),
}


@pytest.mark.parametrize("reason", list(BROKEN))
def test_bad_rows_are_dropped_and_reported(reason: str) -> None:
    clean, report = validate_bars("T", BROKEN[reason](bars()), IngestSettings())
    assert len(clean) == 5
    assert report.dropped == {reason: 1}
    assert any(reason in w for w in report.warnings())


@pytest.mark.parametrize("reason", list(BROKEN))
def test_bad_rows_fail_the_ticker_when_configured(reason: str) -> None:
    with pytest.raises(TickerError, match=reason.split(" ")[0]):
        validate_bars("T", BROKEN[reason](bars()), IngestSettings(bad_rows="fail"))


def test_high_below_low_is_invalid() -> None:
    broken = bars()
    broken.loc[3, ["high", "low"]] = [90.0, 110.0]
    _, report = validate_bars("T", broken, IngestSettings())
    assert report.dropped == {"high/low inconsistent with open/close": 1}


def test_weekend_rows_are_dropped() -> None:
    broken = bars()
    broken.loc[3, "date"] = pd.Timestamp("2024-01-06")  # a Saturday
    clean, report = validate_bars("T", broken, IngestSettings())
    assert report.dropped == {"weekend date": 1}
    assert (clean["date"].dt.day_of_week < 5).all()


def test_output_is_sorted_and_unique() -> None:
    shuffled = bars(10).sample(frac=1, random_state=1)
    clean, _ = validate_bars("T", shuffled, IngestSettings())
    assert clean["date"].is_monotonic_increasing and clean["date"].is_unique


def test_gaps_against_the_exchange_calendar_are_reported() -> None:
    full = bars(10, "2024-03-25")  # includes Good Friday 2024-03-29, a NYSE holiday
    clean, report = validate_bars("T", full, IngestSettings())
    assert report.missing_sessions == 0  # the holiday is not a gap, bdate_range just has it
    gappy = clean[~clean["date"].isin(pd.to_datetime(["2024-04-02", "2024-04-03"]))]
    _, report = validate_bars("T", gappy, IngestSettings())
    assert report.missing_sessions == 2


def test_implausible_jumps_are_flagged_not_dropped() -> None:
    jumpy = bars()
    jumpy.loc[4:, ["open", "high", "low", "close", "adj_close"]] *= 3
    clean, report = validate_bars("T", jumpy, IngestSettings())
    assert len(clean) == 6
    assert report.jumps == [jumpy["date"][4].date().isoformat()]


def test_no_valid_rows_left_fails() -> None:
    with pytest.raises(TickerError, match="no valid bars left"):
        validate_bars("T", bars().assign(close=np.nan), IngestSettings())


def test_bars_on_exchange_holidays_are_reported() -> None:
    week = bars(5, "2024-03-25")  # Mon 25 .. Fri 29 March 2024; the 29th is Good Friday
    _, report = validate_bars("T", week, IngestSettings())
    assert report.off_calendar == 1
    assert "1 bar(s) on exchange holidays" in report.warnings()
