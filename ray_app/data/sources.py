"""Where daily bars come from: Yahoo Finance, a local folder of files, or the bundled sample.

Every source returns the same frame, one row per trading day, with the columns of
``BAR_COLUMNS``: ``date`` is the exchange's calendar date as a naive midnight timestamp, so
the result never depends on the ``TZ`` of the machine. Sources only fetch and reshape;
checking the bars is ``validation``'s job.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from ray_app.core.errors import RayAppError
from ray_app.core.settings import IngestSettings, YahooSettings

BAR_COLUMNS = ["date", "open", "high", "low", "close", "adj_close", "volume"]
PRICE_COLUMNS = ["open", "high", "low", "close", "adj_close"]
EXCHANGE_TZ = "America/New_York"

# Header names seen in the wild -> our bar fields (matched case-insensitively).
COLUMN_ALIASES = {
    "date": "date",
    "datetime": "date",
    "timestamp": "date",
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "adj close": "adj_close",
    "adj_close": "adj_close",
    "adjclose": "adj_close",
    "volume": "volume",
}


class TickerError(RayAppError):
    """A ticker that cannot be ingested, for a reason that retrying will not change."""


class NoBarsError(TickerError):
    """The source answered, repeatedly, with no bars for the range asked."""


class TransientError(Exception):
    """A failure worth retrying: rate limits, timeouts, empty answers."""


class _NoBarsYet(TransientError):
    """An empty answer: retried, since Yahoo sometimes answers empty under load."""


@dataclass(frozen=True)
class Fetched:
    """Bars as a source delivered them, plus how it read them (for the summary)."""

    bars: pd.DataFrame
    layout: str
    origin: str


class Source(Protocol):
    name: str

    def list_tickers(self) -> list[str]:
        """Every ticker the source can deliver without being told (empty: must be told)."""
        ...

    def fetch(self, ticker: str, start: dt.date | None, end: dt.date | None) -> Fetched:
        """Bars of ``ticker`` between ``start`` and ``end`` inclusive; raises TickerError."""
        ...


def normalise_columns(raw: pd.DataFrame, origin: str, column_map: dict[str, str]) -> pd.DataFrame:
    """Rename known headers to bar fields, coerce types, and fail on missing columns.

    Other columns (OpenInt, Dividends, ...) are dropped; non-numeric cells become NaN so
    that validation can report them row by row instead of failing the whole file.
    """
    mapping = {k.lower(): v for k, v in column_map.items()}
    found: dict[str, pd.Series] = {}
    for col in raw.columns:
        key = str(col).strip().lower()
        target = mapping.get(key) or COLUMN_ALIASES.get(key)
        if target and target not in found:
            found[target] = raw[col]
    missing = [c for c in BAR_COLUMNS if c not in found and c != "adj_close"]
    if missing:
        raise TickerError(f"{origin}: missing column(s) {', '.join(missing)}")
    columns = {"date": _exchange_dates(found["date"]).to_numpy()}
    for col in BAR_COLUMNS[1:]:
        values = found.get(col, found["close"])  # no adj_close: the close is unadjusted
        if values.dtype.kind not in "fi":
            values = pd.to_numeric(values, errors="coerce")
        columns[col] = values.to_numpy(dtype="float64", na_value=np.nan)
    return pd.DataFrame(columns)  # built once: per-column assignment cost more than parsing


def _exchange_dates(values: pd.Series) -> pd.Series:
    """Exchange calendar dates as naive midnights; unparseable values become NaT."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert(EXCHANGE_TZ).dt.tz_localize(None).dt.normalize()
    if values.dtype.kind == "M":
        return values.dt.normalize().astype("datetime64[ns]")
    iso = _iso_days(values.to_numpy())
    if iso is not None:
        return pd.Series(iso.astype("datetime64[ns]"), index=values.index, name=values.name)
    parsed = pd.to_datetime(
        values.astype("string").str.slice(0, 10), format="%Y-%m-%d", errors="coerce"
    )
    return parsed.astype("datetime64[ns]")


_DIGITS = np.array([0, 1, 2, 3, 5, 6, 8, 9])
_NS_RANGE = (np.datetime64("1678-01-01", "D"), np.datetime64("2261-12-31", "D"))


def _iso_days(values: np.ndarray) -> np.ndarray | None:
    """``values`` as days when every one starts with a valid ``YYYY-MM-DD`` (what files hold),
    else None, and ``_exchange_dates`` parses them one by one with pandas instead.

    NumPy reads this one shape in a tenth of pandas' time. Only exactly that shape is taken
    (ASCII digits, dashes at 4 and 7), on which both give the same day; anything else, such
    as a missing cell or an impossible date, leaves it to pandas, which makes it NaT.
    """
    try:
        head = values.astype("S10")  # the first ten characters, as the slow path slices
    except (UnicodeEncodeError, ValueError, TypeError):
        return None
    if not len(head):
        return None
    chars = head.view(np.uint8).reshape(len(head), 10)
    digits = chars[:, _DIGITS]
    if not (((digits >= 48) & (digits <= 57)).all() and (chars[:, [4, 7]] == 45).all()):
        return None
    try:
        days = head.astype("datetime64[D]")
    except ValueError:  # a month or day out of range
        return None
    if len(days) and (days.min() < _NS_RANGE[0] or days.max() > _NS_RANGE[1]):
        return None  # beyond nanosecond timestamps: pandas says how
    return days


def clip_range(bars: pd.DataFrame, start: dt.date | None, end: dt.date | None) -> pd.DataFrame:
    """Rows with ``start <= date <= end`` (unparseable dates are kept for validation)."""
    keep = pd.Series(True, index=bars.index)
    if start is not None:
        keep &= ~(bars["date"] < pd.Timestamp(start))
    if end is not None:
        keep &= ~(bars["date"] > pd.Timestamp(end))
    return bars[keep].reset_index(drop=True)


@dataclass
class CsvSource:
    """A folder of per-ticker CSV, TXT or Parquet files; the layout is detected per file."""

    folder: Path
    column_map: dict[str, str] = field(default_factory=dict)
    name: str = "csv"

    def _files(self) -> dict[str, Path]:
        """Ticker -> file; with several files for a ticker, the first suffix in _SUFFIXES."""
        if not self.folder.is_dir():
            raise TickerError(f"--path {self.folder} is not a folder")
        found: dict[str, tuple[int, Path]] = {}
        for path in self.folder.iterdir():
            ticker, rank = _ticker_of(path)
            if ticker and path.is_file() and (ticker not in found or rank < found[ticker][0]):
                found[ticker] = (rank, path)
        return {ticker: path for ticker, (_, path) in found.items()}

    def list_tickers(self) -> list[str]:
        return sorted(self._files())

    def _file(self, ticker: str) -> Path | None:
        """The ticker's file: by its usual names first (cheap), else by listing the folder."""
        for suffix in _SUFFIXES:
            for stem in dict.fromkeys([ticker, ticker.lower()]):
                if (self.folder / f"{stem}{suffix}").is_file():
                    return self.folder / f"{stem}{suffix}"
        return self._files().get(ticker)

    def fetch(self, ticker: str, start: dt.date | None, end: dt.date | None) -> Fetched:
        path = self._file(ticker)
        if path is None:
            raise TickerError(f"unknown ticker {ticker}: no file for it in {self.folder}")
        raw, layout = _read_file(path)
        bars = normalise_columns(raw, path.name, self.column_map)
        return Fetched(clip_range(bars, start, end), layout, str(path))


_SUFFIXES = (".us.txt", ".csv", ".txt", ".parquet")


def _ticker_of(path: Path) -> tuple[str | None, int]:
    """(ticker, rank of its suffix in _SUFFIXES) of a data file, or (None, -1)."""
    name = path.name.lower()
    for rank, suffix in enumerate(_SUFFIXES):
        if name.endswith(suffix) and not name.startswith("."):
            return path.name[: -len(suffix)].upper(), rank
    return None, -1


def _read_file(path: Path) -> tuple[pd.DataFrame, str]:
    if path.stat().st_size == 0:
        raise TickerError(f"{path.name}: file is empty (0 bytes)")
    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path), "parquet"
    try:
        raw = pd.read_csv(path, encoding="utf-8", encoding_errors="strict")
    except UnicodeDecodeError as exc:
        raise TickerError(
            f"{path.name}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise TickerError(f"{path.name}: not a readable CSV file ({exc})") from None
    header = {str(c).strip().lower() for c in raw.columns}
    if "openint" in header:
        layout = "kaggle"
    elif {"date", "open", "high", "low", "close", "volume"} <= header:
        layout = "yahoo-csv"
    else:
        layout = "mapped"
    return raw, layout


@dataclass
class SampleSource:
    """Real daily bars bundled in ``bokeh-sampledata`` (AAPL, FB, GOOG, IBM, MSFT; to 2013).

    This is what makes a fresh clone work offline; the data is read from the installed
    package, never copied into the repository.
    """

    name: str = "sample"

    @staticmethod
    def _all() -> pd.DataFrame:
        from bokeh_sampledata import stocks

        return stocks.data

    def list_tickers(self) -> list[str]:
        return sorted(self._all()["ticker"].unique().tolist())

    def fetch(self, ticker: str, start: dt.date | None, end: dt.date | None) -> Fetched:
        data = self._all()
        rows = data[data["ticker"] == ticker]
        if rows.empty:
            raise TickerError(
                f"unknown ticker {ticker}: the sample has {', '.join(self.list_tickers())}"
            )
        bars = normalise_columns(rows.drop(columns="ticker"), f"sample:{ticker}", {})
        return Fetched(clip_range(bars, start, end), "bokeh-sampledata", "bokeh_sampledata.stocks")


Downloader = Callable[..., pd.DataFrame]


def _yf_download(*args: Any, **kwargs: Any) -> pd.DataFrame:
    import yfinance as yf

    return yf.download(*args, **kwargs)


def _retryable_exceptions() -> tuple[type[BaseException], ...]:
    from yfinance.exceptions import YFRateLimitError

    return (TransientError, YFRateLimitError, TimeoutError, ConnectionError)


@dataclass
class YahooSource:
    """Yahoo Finance through yfinance, with backoff on rate limits, timeouts and empty answers.

    ``download`` defaults to ``yfinance.download``; tests hand in a function that returns
    frames shaped as yfinance returns them (MultiIndex columns, tz-aware index).
    """

    settings: YahooSettings
    download: Downloader = _yf_download
    name: str = "yahoo"

    def list_tickers(self) -> list[str]:
        return []

    def fetch(self, ticker: str, start: dt.date | None, end: dt.date | None) -> Fetched:
        cfg = self.settings
        retrying = Retrying(
            retry=retry_if_exception_type(_retryable_exceptions()),
            wait=wait_random_exponential(multiplier=cfg.backoff_initial_s, max=cfg.backoff_max_s),
            stop=stop_after_attempt(cfg.max_attempts),
        )
        try:
            frame = retrying(self._fetch_once, ticker, start, end)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            error = NoBarsError if isinstance(cause, _NoBarsYet) else TickerError
            raise error(
                f"{ticker}: Yahoo failed after {cfg.max_attempts} attempts: {cause}"
            ) from None
        return Fetched(frame, "yfinance", "yahoo")

    def _fetch_once(self, ticker: str, start: dt.date | None, end: dt.date | None) -> pd.DataFrame:
        raw = self.download(
            ticker,
            start=start.isoformat() if start else None,
            # yfinance's end is exclusive; ours is inclusive.
            end=(end + dt.timedelta(days=1)).isoformat() if end else None,
            interval="1d",
            auto_adjust=self.settings.auto_adjust,
            actions=self.settings.actions,
            ignore_tz=False,
            multi_level_index=True,
            progress=False,
            threads=False,
            timeout=self.settings.timeout_s,
        )
        if raw is None or raw.empty or raw.isna().all().all():
            raise _NoBarsYet("Yahoo returned no bars")
        if isinstance(raw.columns, pd.MultiIndex):
            level = "Ticker" if "Ticker" in raw.columns.names else 1
            if ticker not in raw.columns.get_level_values(level):
                raise TickerError(f"{ticker}: Yahoo answered without this ticker")
            raw = pd.DataFrame(raw.xs(ticker, axis=1, level=level))
        frame = raw.dropna(how="all").rename_axis("date").reset_index()
        return normalise_columns(frame, f"yahoo:{ticker}", {})


def make_source(settings: IngestSettings, download: Downloader | None = None) -> Source:
    """The source named in ``settings``, ready to be shipped to Ray workers."""
    if settings.source == "csv":
        if settings.path is None:
            raise TickerError("--source csv needs --path DIR (a folder of per-ticker files)")
        if not settings.path.is_dir():
            raise TickerError(f"--path {settings.path} is not a folder")
        return CsvSource(settings.path.resolve(), dict(settings.column_map))
    if settings.source == "yahoo":
        return YahooSource(settings.yahoo, download or _yf_download)
    return SampleSource()
