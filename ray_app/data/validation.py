"""Checks every bar before it is stored: a bad row is dropped and reported, or fails its
ticker, by configuration, and never passes silently.

Hard rules (rows that break them are invalid): parseable date, numeric and present OHLCV,
prices > 0, volume >= 0, ``low <= min(open, close) <= max(open, close) <= high``, no weekend
dates, one row per date. Soft findings (reported, rows kept): missing exchange sessions
between the first and last date, and implausible one-day moves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd

from ray_app.core.settings import IngestSettings
from ray_app.data.sources import BAR_COLUMNS, PRICE_COLUMNS, TickerError

# Relative slack for the OHLC ordering: adjusted prices carry rounding in the last digit.
OHLC_TOLERANCE = 1e-6


@dataclass
class ValidationReport:
    """What validation found for one ticker."""

    dropped: dict[str, int] = field(default_factory=dict)
    missing_sessions: int = 0
    off_calendar: int = 0
    jumps: list[str] = field(default_factory=list)

    def warnings(self) -> list[str]:
        """Readable findings for the ingest summary."""
        notes = [f"dropped {n} row(s): {why}" for why, n in self.dropped.items()]
        if self.missing_sessions:
            notes.append(f"{self.missing_sessions} exchange session(s) missing")
        if self.off_calendar:
            notes.append(f"{self.off_calendar} bar(s) on exchange holidays")
        if self.jumps:
            shown = ", ".join(self.jumps[:3]) + (" ..." if len(self.jumps) > 3 else "")
            notes.append(f"{len(self.jumps)} implausible one-day move(s): {shown}")
        return notes


def _row_problems(bars: pd.DataFrame) -> dict[str, np.ndarray]:
    """Masks of invalid rows, by reason, in the order they are reported.

    In NumPy rather than pandas: every ticker of every ingest passes here, and seven pandas
    expressions over a few thousand rows cost ten times their arithmetic. A missing price
    fails its own rule only: ``fmin``/``fmax`` skip it in the open/close body, and
    comparisons with NaN are false.
    """
    col = {c: bars[c].to_numpy(dtype="float64", na_value=np.nan) for c in BAR_COLUMNS[1:]}
    dates = bars["date"].to_numpy(dtype="datetime64[ns]")
    body_low, body_high = np.fmin(col["open"], col["close"]), np.fmax(col["open"], col["close"])
    slack = OHLC_TOLERANCE * np.abs(col["high"])
    no_date = np.isnat(dates)
    # 1970-01-01 was a Thursday (Monday = 0); NaT's integer is masked out.
    weekday = (dates.astype("datetime64[D]").astype("int64") + 3) % 7
    with np.errstate(invalid="ignore"):
        return {
            "unparseable date": no_date,
            "missing or non-numeric values": np.isnan(np.column_stack(list(col.values()))).any(
                axis=1
            ),
            "price <= 0": (np.column_stack([col[c] for c in PRICE_COLUMNS]) <= 0).any(axis=1),
            "negative volume": col["volume"] < 0,
            "high/low inconsistent with open/close": (col["low"] > body_low + slack)
            | (body_high > col["high"] + slack)
            | (col["low"] > col["high"]),
            "weekend date": ~no_date & (weekday >= 5),
            "duplicate date": bars["date"].duplicated(keep="first").to_numpy() & ~no_date,
        }


@lru_cache(maxsize=4)
def exchange_sessions(exchange: str) -> pd.DatetimeIndex:
    """All sessions of ``exchange`` that exchange_calendars knows (cached per process)."""
    import exchange_calendars as xcals

    calendar = xcals.get_calendar(exchange, start="1960-01-04")
    return pd.DatetimeIndex(calendar.sessions.tz_localize(None).astype("datetime64[ns]"))


def calendar_findings(dates: pd.Series, exchange: str) -> tuple[int, int]:
    """(sessions between the first and last date with no bar, weekday bars on no session)."""
    if dates.empty:
        return 0, 0
    sessions = exchange_sessions(exchange).to_numpy()
    days = dates.to_numpy(dtype="datetime64[ns]")
    window = sessions[
        np.searchsorted(sessions, days[0]) : np.searchsorted(sessions, days[-1], "right")
    ]
    known = days[days >= sessions[0]]  # the calendar does not reach further back
    # Both sides are sorted and without repeats: membership is a binary search, not a hash.
    return int((~_members(window, days)).sum()), int((~_members(known, sessions)).sum())


def _members(values: np.ndarray, sorted_pool: np.ndarray) -> np.ndarray:
    """Whether each of ``values`` is in ``sorted_pool`` (sorted ascending, not empty)."""
    at = np.searchsorted(sorted_pool, values).clip(max=len(sorted_pool) - 1)
    return np.asarray(sorted_pool[at] == values)


def check_calendar(bars: pd.DataFrame, cfg: IngestSettings, report: ValidationReport) -> None:
    """Fill the report's soft findings for ``bars`` (sorted, valid)."""
    report.missing_sessions, report.off_calendar = calendar_findings(bars["date"], cfg.exchange)
    report.jumps = jump_dates(bars, cfg.max_daily_move)


def jump_dates(bars: pd.DataFrame, limit: float) -> list[str]:
    """Dates whose adjusted close moved more than ``limit`` in log terms from the day before."""
    log_close = np.log(bars["adj_close"].to_numpy())
    jumped = np.abs(np.diff(log_close)) > limit  # NaN (a missing close) is no jump
    return [str(day) for day in bars["date"].to_numpy()[1:][jumped].astype("datetime64[D]")]


def validate_bars(
    ticker: str, bars: pd.DataFrame, cfg: IngestSettings
) -> tuple[pd.DataFrame, ValidationReport]:
    """The valid bars of ``ticker`` sorted by date, and what was found on the way.

    Raises TickerError when ``cfg.bad_rows == "fail"`` and any row is invalid, or when no
    valid row remains.
    """
    report = ValidationReport()
    invalid = np.zeros(len(bars), dtype=bool)
    for reason, mask in _row_problems(bars).items():
        fresh = mask & ~invalid
        if fresh.any():
            report.dropped[reason] = int(fresh.sum())
            invalid |= fresh
    if report.dropped and cfg.bad_rows == "fail":
        found = "; ".join(f"{n} row(s) with {why}" for why, n in report.dropped.items())
        raise TickerError(f"{ticker}: invalid bars ({found}) and bad_rows=fail")
    clean = bars[~invalid] if invalid.any() else bars
    if not clean["date"].is_monotonic_increasing:  # files are mostly in order already
        clean = clean.sort_values("date", kind="stable")
    clean = clean.reset_index(drop=True)
    if clean.empty:
        why = ", ".join(report.dropped) or "no bars"
        raise TickerError(f"{ticker}: no valid bars left ({why})")
    check_calendar(clean, cfg, report)
    return clean, report
