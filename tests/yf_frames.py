"""Frames shaped exactly as ``yfinance.download`` 1.x returns them, for injecting in place of
Yahoo's servers (unreachable from CI).

``yf.download("AAPL", ignore_tz=False, multi_level_index=True, auto_adjust=False)`` answers
with MultiIndex columns named ("Price", "Ticker"), prices sorted by name, and a DatetimeIndex
named "Date" at midnight in the exchange's time zone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd


def yfinance_frame(
    ticker: str, start: str, periods: int, seed: int = 0, actions: bool = False
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    index = pd.bdate_range(start, periods=periods, tz="America/New_York", name="Date")
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, periods)))
    open_ = close * np.exp(rng.normal(0, 0.005, periods))
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, periods))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, periods))
    prices = {
        "Adj Close": close * 0.98,
        "Close": close,
        "High": high,
        "Low": low,
        "Open": open_,
        "Volume": rng.integers(1_000_000, 5_000_000, periods).astype("int64"),
    }
    if actions:
        prices.update({"Dividends": np.zeros(periods), "Stock Splits": np.zeros(periods)})
    frame = pd.DataFrame(prices, index=index)
    frame.columns = pd.MultiIndex.from_product([list(prices), [ticker]], names=["Price", "Ticker"])
    return frame.sort_index(axis=1, level=0)


def empty_frame(ticker: str) -> pd.DataFrame:
    """What yfinance returns when Yahoo answered nothing (it logs the error, raises nothing)."""
    columns = pd.MultiIndex.from_product(
        [["Adj Close", "Close", "High", "Low", "Open", "Volume"], [ticker]],
        names=["Price", "Ticker"],
    )
    return pd.DataFrame(
        columns=columns, index=pd.DatetimeIndex([], name="Date", tz="America/New_York")
    )


@dataclass
class FakeDownloader:
    """Stands in for ``yfinance.download``: a script of answers per ticker, then the frame.

    ``script[ticker]`` lists what the first calls do: "ratelimit" raises YFRateLimitError,
    "empty" returns an empty frame, "timeout" raises TimeoutError; after the script, the
    ticker's frame is returned (or empty when ``frames`` has none). Calls are counted in a
    file ("TICKER start" lines) so that they survive Ray workers.
    """

    frames: dict[str, pd.DataFrame]
    script: dict[str, list[str]] = field(default_factory=dict)
    calls_file: str = ""

    def _count(self, ticker: str, start: str | None) -> int:
        with open(self.calls_file, "a+") as fh:
            fh.seek(0)
            n = sum(1 for line in fh if line.split()[0] == ticker)
            fh.write(f"{ticker} {start}\n")
        return n

    def __call__(self, ticker: str, **kwargs: Any) -> pd.DataFrame:
        from yfinance.exceptions import YFRateLimitError

        assert kwargs["auto_adjust"] is not None and kwargs["actions"] is not None
        attempt = self._count(ticker, kwargs.get("start"))
        steps = self.script.get(ticker, [])
        step = steps[attempt] if attempt < len(steps) else "frame"
        if step == "ratelimit":
            raise YFRateLimitError()
        if step == "timeout":
            raise TimeoutError("read timed out")
        frame = self.frames.get(ticker)
        if step == "empty" or frame is None:
            return empty_frame(ticker)
        start, end = kwargs.get("start"), kwargs.get("end")
        local = frame.index.tz_localize(None)
        keep = np.ones(len(frame), dtype=bool)
        if start:
            keep &= local >= pd.Timestamp(start)
        if end:
            keep &= local < pd.Timestamp(end)
        return frame[keep]
