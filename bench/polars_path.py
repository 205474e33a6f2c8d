"""The work of bench_data.py's two paths, written in Polars: one process, ``--threads`` threads.

This is what a user with one machine would pick instead of the Ray path. For each ticker's
Yahoo CSV it reads and normalises the file as ``CsvSource`` does, drops the rows that break
``validation``'s hard rules, sorts by date (one row per date) and writes the bars to
``raw/<TICKER>.parquet``; then it computes the feature spec's columns and the target as
``compute_features`` does and writes them to ``features/<TICKER>.parquet``. The spec is
``FeatureSettings``' defaults, read from the same ``Settings`` object the project uses (no
Alpha-style set, no cross-sectional companions: they are off by default). Not done here: the
soft findings of validation (calendar gaps, jumps), content hashes, manifests and data
versions, the lineage the project's paths record on top of the same work.

Execution is Polars' own, on its thread pool, whose size ``POLARS_MAX_THREADS`` fixes when
polars is imported: one process, no process-level parallelism. Each stage runs ``CHUNK``
tickers as one lazy query: the per-ticker inputs are concatenated (Polars reads them in
parallel), every order-dependent expression (diff, shift, rolling, ewm) runs
``.over("ticker")``, and the result is split by ticker to write one file each. On 100
tickers x 20 years (2 cores, load average 1.3) the features took 0.91 s with 1 thread and
0.64 s with 2; one query per ticker took 1.37 s and 1.07 s (a query of some thirty window
expressions is planned once per chunk instead of once per ticker), and the streaming engine,
the default since Polars 2.0, 1.09 s and 0.86 s (``--engine streaming``), so the in-memory
engine runs the queries.

Run: ``.venv/bin/python bench/polars_path.py --threads 2 --csv DIR --out ROOT [--warmup DIR]``.
It prints one JSON line: seconds of the ingest and features stages, rows ingested, failed
tickers, the thread pool's size, and the process's RSS before the work and at its peak.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from ray_app.core.settings import FeatureSettings, IngestSettings, Settings
from ray_app.data.features import TARGET, TARGET_DIR, ticker_feature_names
from ray_app.data.sources import BAR_COLUMNS, COLUMN_ALIASES, PRICE_COLUMNS
from ray_app.data.validation import OHLC_TOLERANCE

RAW, FEATURES = "raw", "features"
TICKER = "ticker"
CHUNK = 64  # tickers per query: the plan's cost is shared, memory stays bounded
Engine = Literal["in-memory", "streaming"]
ENGINE: Engine = "in-memory"  # see the module docstring
COMPRESSION: Literal["snappy"] = "snappy"  # the codec pyarrow writes the project's partitions with


# --- ingest: read, normalise, validate -------------------------------------------------------


def header_map(path: Path, column_map: dict[str, str]) -> dict[str, str]:
    """File column -> bar field of a plain comma-separated header, as ``normalise_columns``
    maps them (case-insensitive aliases, the first column wins a field); ValueError when a
    required field has no column."""
    with path.open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\r\n").split(",")
    mapping = {k.lower(): v for k, v in column_map.items()}
    renamed: dict[str, str] = {}
    for col in header:
        key = col.strip().strip('"').lower()
        target = mapping.get(key) or COLUMN_ALIASES.get(key)
        if target and target not in renamed.values():
            renamed[col] = target
    missing = [c for c in BAR_COLUMNS if c not in renamed.values() and c != "adj_close"]
    if missing:
        raise ValueError(f"{path.name}: missing column(s) {', '.join(missing)}")
    return renamed


def read_bars_csv(path: Path, column_map: dict[str, str]) -> pl.LazyFrame:
    """The file's bars with ``BAR_COLUMNS``: prices and volume Float64, ``date`` a naive
    Datetime(ns) midnight, as ``CsvSource.fetch`` returns them.

    Unparseable numbers become null (``ignore_errors``), as ``pd.to_numeric(errors="coerce")``
    makes them NaN; unparseable dates become null, as ``pd.to_datetime(errors="coerce")``
    makes them NaT. Validation then drops those rows either way.
    """
    renamed = header_map(path, column_map)
    source = {v: k for k, v in renamed.items()}
    types = {col: pl.Float64 for col, field_ in renamed.items() if field_ != "date"}
    frame = pl.scan_csv(
        path, schema_overrides={source["date"]: pl.String, **types}, ignore_errors=True
    )
    close = pl.col(source["close"])
    return frame.select(
        pl.col(source["date"])
        .str.slice(0, 10)
        .str.to_date("%Y-%m-%d", strict=False)
        .cast(pl.Datetime("ns"))
        .alias("date"),
        *[pl.col(source[c]).alias(c) for c in ("open", "high", "low", "close")],
        (pl.col(source["adj_close"]) if "adj_close" in source else close).alias("adj_close"),
        pl.col(source["volume"]).alias("volume"),
    )


def invalid_row() -> pl.Expr:
    """True for a row that breaks one of ``validation``'s hard rules.

    Missing means null or NaN: an unparseable cell is null, but a "NaN" cell parses as a float
    NaN (pandas has NaN for both). Comparisons with NaN differ too (Polars orders NaN above
    every number), which cannot matter here because a row with a NaN is already invalid.
    ``duplicate date`` looks at every row, valid or not, as ``duplicated(keep="first")`` does:
    a valid row whose date an invalid row had first is dropped too.
    """
    prices = [pl.col(c) for c in PRICE_COLUMNS]
    values = [pl.col(c) for c in BAR_COLUMNS[1:]]
    body_low = pl.min_horizontal("open", "close")
    body_high = pl.max_horizontal("open", "close")
    slack = OHLC_TOLERANCE * pl.col("high").abs()
    date = pl.col("date")
    return pl.any_horizontal(
        date.is_null(),
        *[v.is_null() | v.is_nan() for v in values],
        *[p <= 0 for p in prices],
        pl.col("volume") < 0,
        pl.col("low") > body_low + slack,
        body_high > pl.col("high") + slack,
        pl.col("low") > pl.col("high"),
        date.dt.weekday() >= 6,  # ISO weekdays: Saturday is 6 (pandas' day_of_week 5)
        ~date.is_first_distinct() & date.is_not_null(),
    ).fill_null(True)


def clean_bars(bars: pl.LazyFrame, cfg: IngestSettings) -> pl.LazyFrame:
    """Valid bars within ``cfg``'s dates, sorted by date (stable), as ``validate_bars``
    leaves them after ``clip_range``."""
    if cfg.start is not None:
        bars = bars.filter(~(pl.col("date") < pl.lit(cfg.start).cast(pl.Datetime("ns"))))
    if cfg.end is not None:
        bars = bars.filter(~(pl.col("date") > pl.lit(cfg.end).cast(pl.Datetime("ns"))))
    return bars.filter(~invalid_row()).sort("date", maintain_order=True)


def ticker_key(ticker: str) -> pl.Expr:
    """The ``ticker`` column of a ticker's rows in a frame of several: categorical, since
    ``over`` groups integer-coded keys faster than strings (0.6x the time of the features)."""
    return pl.lit(ticker).cast(pl.Categorical).alias(TICKER)


# --- features -------------------------------------------------------------------------------
# Every order-dependent operation runs within one ticker's rows (``.over(TICKER)``); the rows
# of each ticker are in date order, as the as-of join and validation leave them.


def diff(x: pl.Expr, n: int = 1) -> pl.Expr:
    return x.diff(n).over(TICKER)


def shift(x: pl.Expr, n: int) -> pl.Expr:
    return x.shift(n).over(TICKER)


def rolling_mean(x: pl.Expr, window: int) -> pl.Expr:
    return x.rolling_mean(window, min_samples=window).over(TICKER)


def rolling_var(x: pl.Expr, window: int) -> pl.Expr:
    return x.rolling_var(window, min_samples=window).over(TICKER)


def rolling_std(x: pl.Expr, window: int) -> pl.Expr:
    """``x.rolling(window, min_periods=window).std()`` of pandas (ddof 1), including its
    exact 0 for a window of equal values (pandas counts repeated values; a sum of squares
    may leave a tiny positive variance there, which ``ratio_or_zero`` would divide by)."""
    top = x.rolling_max(window, min_samples=window).over(TICKER)
    bottom = x.rolling_min(window, min_samples=window).over(TICKER)
    std = x.rolling_std(window, min_samples=window).over(TICKER)
    return pl.when(top == bottom).then(0.0).otherwise(std)


def rolling_cov(x: pl.Expr, y: pl.Expr, window: int) -> pl.Expr:
    """``x.rolling(window, min_periods=window).cov(y)`` of pandas: a pair counts only where
    both values are present (pandas aligns the two series' NaN first), and the formula is
    pandas': mean(xy) - mean(x) mean(y), times n / (n - 1)."""
    x, y = pl.when(y.is_not_null()).then(x), pl.when(x.is_not_null()).then(y)
    return pl.rolling_cov(x, y, window_size=window, min_samples=window).over(TICKER)


def ewm(
    x: pl.Expr, min_samples: int, *, alpha: float | None = None, span: int | None = None
) -> pl.Expr:
    """``x.ewm(..., adjust=False, min_periods=min_samples).mean()`` of pandas: nulls (pandas'
    NaN) are skipped but still age the weights, and ``min_samples`` counts non-null values.

    Equal to pandas within rounding, not bit for bit: pandas divides by the sum of the two
    weights at every step, Polars does not (about 1e-16 relative apart).
    """
    mean = x.ewm_mean(
        alpha=alpha, span=span, adjust=False, min_samples=min_samples, ignore_nulls=False
    )
    return mean.over(TICKER)


def ratio_or_zero(deviation: pl.Expr, scale: pl.Expr) -> pl.Expr:
    """``features.ratio_or_zero``: deviation / scale, 0 where the scale is 0, null (pandas'
    NaN) where it is null (a warm-up)."""
    return pl.when(scale == 0).then(0.0).otherwise(deviation / scale)


def technical(spec: FeatureSettings) -> dict[str, pl.Expr]:
    """``features._technical`` over adjusted bars (columns ``date`` .. ``volume``)."""
    close = pl.col("close")
    log_close = close.log()
    ret1 = diff(log_close)
    cols: dict[str, pl.Expr] = {}
    for h in spec.return_horizons:
        cols[f"ret_{h}d"] = diff(log_close, h)
    for w in spec.volatility_windows:
        cols[f"vol_{w}d"] = rolling_std(ret1, w)
    for k in spec.lags:
        cols[f"lag_ret_{k}"] = shift(ret1, k)
    cols[f"rsi_{spec.rsi_window}"] = rsi(close, spec.rsi_window)
    fast, slow, signal = spec.macd
    macd = (ewm(close, fast, span=fast) - ewm(close, slow, span=slow)) / close
    macd_signal = ewm(macd, signal, span=signal)
    cols.update(macd=macd, macd_signal=macd_signal, macd_hist=macd - macd_signal)
    w = spec.bollinger_window
    cols[f"bb_pos_{w}"] = ratio_or_zero(close - rolling_mean(close, w), 2 * rolling_std(close, w))
    cols[f"atr_{spec.atr_window}"] = atr(spec.atr_window)
    log_vol = pl.col("volume").log1p()
    v = spec.volume_window
    cols[f"volume_z_{v}"] = ratio_or_zero(
        log_vol - rolling_mean(log_vol, v), rolling_std(log_vol, v)
    )
    cols["day_of_week"] = (pl.col("date").dt.weekday() - 1).cast(pl.Float64)  # Monday: 0
    cols["month"] = pl.col("date").dt.month().cast(pl.Float64)
    return cols


def rsi(close: pl.Expr, window: int) -> pl.Expr:
    """``features._rsi``: Wilder's averages of gains and losses; 100 with no losses, null for
    flat prices (a zero denominator is pandas' ``replace(0, np.nan)``)."""
    delta = diff(close)
    gain = ewm(delta.clip(lower_bound=0), window, alpha=1 / window)
    loss = ewm((-delta).clip(lower_bound=0), window, alpha=1 / window)
    total = gain + loss
    return 100 * gain / pl.when(total != 0).then(total)


def atr(window: int) -> pl.Expr:
    """``features._atr``: the true range's Wilder average over the close. The first bar has
    no previous close; ``max_horizontal`` skips the nulls, as pandas' ``max(axis=1)`` skips
    NaN, so its true range is high - low."""
    high, low, prev_close = pl.col("high"), pl.col("low"), shift(pl.col("close"), 1)
    true_range = pl.max_horizontal(high - low, (high - prev_close).abs(), (low - prev_close).abs())
    return ewm(true_range, window, alpha=1 / window) / pl.col("close")


def market(spec: FeatureSettings, own: dict[str, pl.Expr]) -> dict[str, pl.Expr]:
    """``features._market`` over bars joined as of each date with the index's adjusted close
    (column ``index_close``): excess returns, the index's return, beta."""
    log_index = pl.col("index_close").log()
    cols: dict[str, pl.Expr] = {}
    for h in spec.return_horizons:
        cols[f"excess_ret_{h}d"] = own[f"ret_{h}d"] - diff(log_index, h)
    market_ret = diff(log_index)
    cols["market_ret_1d"] = market_ret
    w = spec.beta_window
    var = rolling_var(market_ret, w)
    beta = rolling_cov(diff(pl.col("close").log()), market_ret, w) / pl.when(var != 0).then(var)
    cols[f"beta_{w}d"] = beta
    return cols


def adjusted(bars: pl.LazyFrame) -> pl.LazyFrame:
    """``features.adjusted``: OHLC times adj_close / close (the same two roundings)."""
    factor = pl.col("adj_close") / pl.col("close")
    return bars.select(
        "date", *[(pl.col(c) * factor).alias(c) for c in ("open", "high", "low", "close")], "volume"
    )


def index_closes(index_bars: pl.LazyFrame) -> pl.LazyFrame:
    """The index's adjusted close by date, for the as-of join."""
    return adjusted(index_bars).select("date", pl.col("close").alias("index_close"))


def features(
    bars: dict[str, pl.LazyFrame], spec: FeatureSettings, index: pl.LazyFrame | None
) -> pl.LazyFrame:
    """``compute_features`` of each ticker of ``bars`` (validated bars sorted by date), as
    one frame: ``ticker``, ``date``, the features, ``target_ret``, ``target_dir``,
    ``has_target``, each ticker's rows together and in date order.

    A missing feature is null or NaN here (pandas has only NaN); +-inf counts as missing too,
    as ``replace([inf, -inf], nan)`` makes it: anything not finite becomes null, and rows
    with a null feature are dropped.
    ``target_ret`` of the newest row is null, which pyarrow stores for pandas' NaN as well.
    """
    frames = []
    for ticker, lazy in bars.items():
        px = adjusted(lazy)
        if index is not None:  # as of each date: never a later index bar
            px = px.join_asof(index, on="date", strategy="backward")
        frames.append(px.with_columns(ticker_key(ticker)))
    cols = technical(spec)
    if index is not None:
        cols.update(market(spec, cols))
    names = ticker_feature_names(spec, index is not None)
    target = pl.col(TARGET)
    return (
        pl.concat(frames, parallel=True)
        # Computed as columns first, then cleaned by name: written inline, the cleaning
        # repeats each feature's expression, and window expressions (``over``) are not shared
        # between repeats (it ran 5x slower).
        .with_columns(
            **{n: cols[n] for n in names}, **{TARGET: shift(diff(pl.col("close").log()), -1)}
        )
        .select(
            TICKER,
            "date",
            *[pl.when(pl.col(n).is_finite()).then(pl.col(n)).alias(n) for n in names],
            target,
            (target > 0).fill_null(False).cast(pl.Int8).alias(TARGET_DIR),
            target.is_not_null().alias("has_target"),
        )
        .drop_nulls(names)
    )


# --- running it ------------------------------------------------------------------------------


@dataclass
class Stage:
    """One stage over every ticker: seconds, rows written, failures by ticker."""

    seconds: float = 0.0
    rows: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def tickers_of(folder: Path) -> dict[str, Path]:
    """Ticker -> CSV file, as ``CsvSource`` names them (file stem, upper-cased)."""
    return {p.name[: -len(".csv")].upper(): p for p in sorted(folder.glob("*.csv"))}


def run_chunks(
    tickers: list[str],
    query: Callable[[list[str]], pl.LazyFrame],
    folder: Path,
    engine: Engine,
    empty: str,
) -> tuple[int, dict[str, str]]:
    """Run ``query`` over ``CHUNK`` tickers at a time and write each ticker's rows (without the
    ``ticker`` column) to ``folder/<TICKER>.parquet``. When a chunk fails, its tickers run one
    by one, so one bad file fails only its ticker; a ticker without rows fails with ``empty``.
    """
    rows, failed = 0, {}
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(tickers), CHUNK):
        chunk = tickers[start : start + CHUNK]
        try:
            frames = [query(chunk).collect(engine=engine)]
        except Exception:
            frames = []
            for ticker in chunk:
                try:
                    frames.append(query([ticker]).collect(engine=engine))
                except Exception as exc:  # one ticker's failure never sinks the others
                    failed[ticker] = f"{ticker}: {type(exc).__name__}: {exc}"
        parts = {
            key[0]: part
            for frame in frames
            for key, part in frame.partition_by(TICKER, as_dict=True, include_key=False).items()
        }
        for ticker in chunk:
            if ticker in failed:
                continue
            if ticker not in parts:
                failed[ticker] = f"{ticker}: {empty}"
                continue
            parts[ticker].write_parquet(folder / f"{ticker}.parquet", compression=COMPRESSION)
            rows += parts[ticker].height
    return rows, failed


def ingest(folder: Path, out: Path, cfg: IngestSettings, engine: Engine = ENGINE) -> Stage:
    """Every CSV of ``folder`` to ``out/raw/<TICKER>.parquet``, validated."""
    t0 = time.perf_counter()
    files = tickers_of(folder)

    def query(tickers: list[str]) -> pl.LazyFrame:
        frames = [
            clean_bars(read_bars_csv(files[t], dict(cfg.column_map)), cfg).with_columns(
                ticker_key(t)
            )
            for t in tickers
        ]
        return pl.concat(frames, parallel=True)

    rows, failed = run_chunks(list(files), query, out / RAW, engine, "no valid bars left")
    return Stage(time.perf_counter() - t0, rows, failed)


def build_features(out: Path, spec: FeatureSettings, engine: Engine = ENGINE) -> Stage:
    """Every ``out/raw`` partition to ``out/features/<TICKER>.parquet``."""
    t0 = time.perf_counter()
    raw = {p.stem: p for p in sorted((out / RAW).glob("*.parquet"))}
    index = None
    if spec.index_ticker in raw:  # collected once, as the project reads the index's bars once
        index = index_closes(pl.scan_parquet(raw[spec.index_ticker])).collect(engine=engine)

    def query(tickers: list[str]) -> pl.LazyFrame:
        bars = {t: pl.scan_parquet(raw[t]) for t in tickers}
        return features(bars, spec, None if index is None else index.lazy())

    empty = "too little history for the feature windows"
    rows, failed = run_chunks(list(raw), query, out / FEATURES, engine, empty)
    return Stage(time.perf_counter() - t0, rows, failed)


def run(
    folder: Path, out: Path, settings: Settings, engine: Engine = ENGINE
) -> tuple[Stage, Stage]:
    """Both stages into ``out`` (emptied first)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    raw = ingest(folder, out, settings.ingest, engine)
    return raw, build_features(out, settings.features, engine)


# --- the process -----------------------------------------------------------------------------


def rss_mb(field_name: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, from /proc, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    """Start ``VmHWM`` again from the current RSS (Linux: write 5 to clear_refs)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def measure(
    folder: Path, out: Path, warmup: Path | None, engine: Engine = ENGINE
) -> dict[str, object]:
    """Run both stages on ``folder`` (after an untimed run on ``warmup``) and report."""
    settings = Settings()
    if warmup is not None:
        with tempfile.TemporaryDirectory(prefix="polars-warmup-") as scratch:
            run(warmup, Path(scratch) / "root", settings, engine)
    reset_peak_rss()
    start_mb = rss_mb("VmRSS")
    ingest_stage, feature_stage = run(folder, out, settings, engine)
    return {
        "threads": pl.thread_pool_size(),
        "polars": pl.__version__,
        "engine": engine,
        "ingest_s": ingest_stage.seconds,
        "features_s": feature_stage.seconds,
        "rows": ingest_stage.rows,
        "feature_rows": feature_stage.rows,
        "failed": {**ingest_stage.failed, **feature_stage.failed},
        "rss_start_mb": start_mb,
        "rss_peak_mb": max(rss_mb("VmHWM"), start_mb),
    }


def command(
    threads: int, folder: Path, out: Path, warmup: Path | None = None, engine: Engine = ENGINE
) -> list[str]:
    """The command line that runs this module on ``folder`` with ``threads`` threads."""
    line = [sys.executable, str(Path(__file__).resolve()), "--threads", str(threads)]
    line += ["--csv", str(folder), "--out", str(out), "--engine", engine]
    return line + (["--warmup", str(warmup)] if warmup else [])


def thread_env(threads: int) -> dict[str, str]:
    """This process's environment with Polars' thread pool set to ``threads``."""
    return {**os.environ, "POLARS_MAX_THREADS": str(threads)}


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, required=True, help="Polars' thread pool size")
    parser.add_argument("--csv", type=Path, required=True, help="folder of per-ticker CSV files")
    parser.add_argument("--out", type=Path, required=True, help="output root (emptied first)")
    parser.add_argument("--warmup", type=Path, help="a small CSV folder to run once, untimed")
    parser.add_argument(
        "--engine",
        choices=["in-memory", "streaming"],
        default=ENGINE,
        help=f"Polars engine (default {ENGINE})",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    if os.environ.get("POLARS_MAX_THREADS") != str(args.threads):
        # The pool is sized when polars is imported: start again with the variable set.
        line = command(args.threads, args.csv, args.out, args.warmup, args.engine)
        os.execve(sys.executable, line, thread_env(args.threads))
    report = measure(args.csv.resolve(), args.out.resolve(), args.warmup, args.engine)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
