"""The serving feature table: every ticker's feature rows, in the ingress replica's memory.

Daily features are small (rows x columns x 8 bytes: 500 tickers x 10 years x 40 columns is
about 400 MB; the bundled sample is under 2 MB), so the ingress reads the feature set once and
answers "the last ``rows`` rows on or before ``as_of``" with a binary search. That costs
microseconds, against a network hop for a lookup deployment or a Redis round trip, and it lets
bad tickers and dates be refused before any model is called.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.online import NoFeaturesError, OfflineFeatureLookup, UnknownTickerError

VOLATILITY = "vol_20d"


@dataclass(frozen=True)
class Window:
    """One ticker's input: its last rows up to ``feature_date`` (oldest first); ``index`` is
    the position of ``feature_date`` among the ticker's rows."""

    ticker: str
    feature_date: dt.date
    rows: np.ndarray
    volatility: float | None
    index: int


class FeatureTable:
    """Per ticker, dates (``datetime64[D]``, ascending) and the matching feature matrix."""

    def __init__(
        self,
        feature_version: str,
        columns: list[str],
        frames: dict[str, tuple[np.ndarray, np.ndarray]],
    ) -> None:
        if not frames:
            raise ValueError(f"feature set {feature_version} has no tickers")
        self.feature_version = feature_version
        self.columns = columns
        self.frames = frames
        self.first_date: dt.date = min(d[0] for d, _ in frames.values()).astype(dt.date)
        self.last_date: dt.date = max(d[-1] for d, _ in frames.values()).astype(dt.date)
        self._vol = columns.index(VOLATILITY) if VOLATILITY in columns else None

    @classmethod
    def load(cls, settings: Settings, version: str | None = None) -> FeatureTable:
        """Feature set ``version`` (default the newest) read in full from the offline store."""
        lookup = OfflineFeatureLookup(DataRoot(settings.data_root), version)
        frames = {ticker: lookup.frame(ticker) for ticker in lookup.tickers}
        return cls(lookup.feature_version, lookup.columns, frames)

    @property
    def tickers(self) -> list[str]:
        return sorted(self.frames)

    @property
    def dates(self) -> dict[str, np.ndarray]:
        """Per ticker, its rows' dates: what a persisted table of predictions is checked
        against (``read_served_scores``)."""
        return {ticker: days for ticker, (days, _) in self.frames.items()}

    def unknown(self, tickers: list[str]) -> list[str]:
        return [t for t in tickers if t not in self.frames]

    def window(self, ticker: str, as_of: dt.date | None, rows: int) -> Window:
        """The last ``rows`` rows of ``ticker`` dated on or before ``as_of`` (default: the
        newest); refuses a ticker it does not hold and a date with too little history."""
        if ticker not in self.frames:
            raise UnknownTickerError(
                f"unknown ticker {ticker}: not in feature set {self.feature_version}"
            )
        dates, values = self.frames[ticker]
        end = (
            len(dates)
            if as_of is None
            else int(np.searchsorted(dates, np.datetime64(as_of, "D"), "right"))
        )
        if end < rows:
            need = "a feature row" if rows == 1 else f"{rows} feature rows"
            first = (
                f"the first date with enough is {dates[rows - 1].astype(dt.date)}"
                if len(dates) >= rows
                else f"it has {len(dates)} in all"
            )
            raise NoFeaturesError(f"{ticker}: the model needs {need} on or before {as_of}; {first}")
        block = values[end - rows : end]
        vol = None if self._vol is None else float(block[-1, self._vol])
        usable = vol is not None and np.isfinite(vol) and vol > 0
        date = dates[end - 1].astype(dt.date)
        return Window(ticker, date, block, vol if usable else None, end - 1)
