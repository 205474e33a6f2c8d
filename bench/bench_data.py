"""Benchmark of the data path: ingest + validate + features, Ray Data against a pandas loop
and against Polars.

Why: the platform runs ingestion and feature building as Ray Data jobs. That only pays off
if, on the machine we develop on (2 cores), the Ray path beats the alternatives a user would
pick on one machine, a single-process loop over tickers and Polars, and if the driver stays
small however many tickers there are (every task writes its own partition and returns a
summary row). This script measures those claims on a deterministic synthetic universe, so
anyone can rerun it and get the same data and the same data version.

What it does, for each universe size (default 100 and 500 tickers, 20 years of XNYS sessions):

1. writes (once, cached under ``bench/out/``) one Yahoo-layout CSV per ticker, ``SPY``
   included so the market-relative features run, from a seeded geometric random walk;
2. runs ``polars_path.py`` (the same ingest, validation and features written in Polars: CSV
   in, Parquet out, per ticker) in a process of its own, with 1 thread and with 2
   (``POLARS_MAX_THREADS``), before Ray starts, so that nothing else runs beside it;
3. runs the pandas loop: the project's own per-ticker functions (``ingest_ticker``,
   ``record_manifest``, ``plan_build``, ``featurize_ticker``, ``record_feature_set``) one
   after the other in this process, without Ray, into data root B;
4. runs the Ray path: ``run_ingest`` + ``build_features`` on a local Ray instance with
   2 CPUs, into data root A;
5. checks, after every repeat, that A and B hold the same raw data version and, ticker by
   ticker, equal feature Parquet files, and that each Polars output (its last run's) holds
   A's tickers, A's raw bars exactly and A's features (same columns and rows, values within
   rtol 1e-8 and atol 1e-12);
6. reports rows per second of each path, the ratios to the Ray path, the driver's peak
   memory, the Polars process's peak RSS and the largest feature difference from Polars.

Each path runs ``--repeats`` times (default 3) per size, and the table shows each path's
median run: on a shared 2-core machine one run of a path moved by 15% between runs, enough to
flip a verdict near its target. Peak memory is the highest of the repeats, and a ticker that
failed in any repeat is reported.

Fairness: Ray is started once, before anything of Ray is timed, and the pandas loop and the
Ray path are warmed up on a tiny universe (worker imports, calendar cache), so the timed
regions hold only the work itself, Ray Data's scheduling and serialisation included; each
Polars process runs once on that tiny universe before its timed run, and its imports are
not timed either. Within a size the pandas loop and the Ray path alternate which runs first,
each into an empty data root. Peak memory is the highest RSS of this (driver) process above
its RSS at the start of the path, sampled every 5 ms by a thread, after garbage collection
and ``malloc_trim`` so that freed memory does not hide growth. Polars does less than the
project's paths: no soft findings of validation, content hashes or manifests (its module
docstring says why it stops there).

Targets, at the largest size: the Ray path at least 1.5x faster than the loop, at least as
fast as Polars with 2 threads (Polars seconds / Ray seconds >= 1), and a driver peak that
does not grow with the number of tickers. The script exits 0 either way (it is a benchmark);
equal outputs are a correctness check and are reported on the verdict line.

Run: ``.venv/bin/python bench/bench_data.py`` (``--smoke`` for a quick 10/20 tickers x 3 years).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import pandas as pd
import polars_path

from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data import feature_store as fs
from ray_app.data.ingest import (
    ingest_ticker,
    latest_manifest,
    plan_jobs,
    read_bars,
    record_manifest,
    run_ingest,
)
from ray_app.data.sources import CsvSource, Source
from ray_app.data.validation import exchange_sessions

OUT = Path(__file__).resolve().parent / "out"
END = pd.Timestamp("2024-12-31")  # fixed, so the universe never depends on today's date
INDEX = "SPY"
SPEED_TARGET = 1.5
POLARS_TARGET = 1.0  # Polars with 2 threads / the Ray path, in seconds
POLARS_THREADS = (1, 2)
# Polars' features against the project's. Not 1e-9: pandas' rolling std (the project's) is
# an online algorithm that adds and removes values, and its rounding error grows along a
# series whose level moves. In the 500-ticker universe it is 3.3e-9 relative off a two-pass
# std (SYN0175's Bollinger std, as its close falls from 404 to 34), where Polars' is within
# 1e-14. A wrong window, lag or ddof moves values by 1e-3 and more.
RTOL, ATOL = 1e-8, 1e-12
MB = 1024 * 1024
YAHOO_COLUMNS = ["Date", "Open", "High", "Low", "Close", "Adj Close", "Volume"]


# --- the synthetic universe ------------------------------------------------------------


def ticker_names(count: int) -> list[str]:
    """``SPY`` and ``count - 1`` synthetic tickers; a smaller universe is a prefix of a larger."""
    return [INDEX] + [f"SYN{i:04d}" for i in range(1, count)]


def session_dates(years: int) -> pd.DatetimeIndex:
    """XNYS sessions of the ``years`` years ending at ``END``."""
    sessions = exchange_sessions("XNYS")
    start = END - pd.DateOffset(years=years)
    return sessions[(sessions > start) & (sessions <= END)]


def synthetic_bars(rng: np.random.Generator, dates: pd.DatetimeIndex) -> pd.DataFrame:
    """Valid daily bars in the Yahoo CSV layout: raw OHLC, dividend/split-adjusted close.

    ``low <= min(open, close) <= max(open, close) <= high`` holds exactly and survives the
    rounding of the CSV (rounding is monotone); volume is a positive integer.
    """
    n = len(dates)
    sigma = rng.uniform(0.008, 0.02)
    log_close = np.log(rng.uniform(20, 200)) + np.cumsum(rng.normal(2e-4, sigma, n))
    close = np.exp(log_close)
    open_ = np.exp(np.concatenate([[log_close[0]], log_close[:-1]]) + rng.normal(0, sigma / 4, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, sigma / 2, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, sigma / 2, n)))
    # Adjustment factor (1 on the last day): dividends, and a 2:1 split for some tickers.
    factor = np.exp(-rng.uniform(0, 0.03) * (n - 1 - np.arange(n)) / 252)
    if rng.random() < 0.3:
        factor[: rng.integers(n // 4, 3 * n // 4)] *= 0.5
    raw = {"Open": open_, "High": high, "Low": low, "Close": close}
    frame = pd.DataFrame({"Date": dates.strftime("%Y-%m-%d")})
    for name, values in raw.items():
        frame[name] = values / factor
    frame["Adj Close"] = close
    frame["Volume"] = np.maximum(1, rng.lognormal(13.5, 0.6, n)).astype("int64")
    return frame[YAHOO_COLUMNS]


def write_universe(count: int, years: int, seed: int, out: Path) -> Path:
    """The folder of ``count`` per-ticker CSV files, written once and then reused."""
    folder = out / "universe" / f"t{count}_y{years}_s{seed}"
    stamp = folder / ".complete"
    if stamp.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    dates = session_dates(years)
    for i, ticker in enumerate(ticker_names(count)):
        bars = synthetic_bars(np.random.default_rng([seed, i]), dates)
        bars.to_csv(folder / f"{ticker}.csv", index=False, float_format="%.6g")
    stamp.touch()
    return folder


# --- measuring ---------------------------------------------------------------------------


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so RSS reflects live memory."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class Memory:
    """RSS of this process while a block runs: at the start and the highest seen."""

    start: int = 0
    peak: int = 0

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / MB


def rss_reader() -> Callable[[], int]:
    """This process's RSS in bytes (psutil ships inside Ray, in ``ray/thirdparty_files``)."""
    import ray  # noqa: F401  (importing ray puts its thirdparty_files on sys.path)

    # isort: split
    import psutil

    proc = psutil.Process()
    return lambda: int(proc.memory_info().rss)


@contextlib.contextmanager
def sample_rss(interval: float = 0.005) -> Iterator[Memory]:
    """Sample this process's RSS in a background thread for the duration of the block."""
    release_memory()
    rss = rss_reader()
    memory = Memory(start=rss())
    memory.peak = memory.start
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            memory.peak = max(memory.peak, rss())
            done.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield memory
    finally:
        done.set()
        thread.join()
        memory.peak = max(memory.peak, rss())


@dataclass
class PathRun:
    """One path's timings and memory on one universe."""

    ingest_s: float
    features_s: float
    memory: Memory
    failed: list[str]

    @property
    def seconds(self) -> float:
        return self.ingest_s + self.features_s


class Timed(Protocol):
    """Anything with a total of ``seconds`` (a path's run, a Polars run)."""

    @property
    def seconds(self) -> float: ...


R = TypeVar("R", bound=Timed)


def median_run(runs: Sequence[R]) -> R:
    """The run of median total time (the upper one of an even number of runs)."""
    return sorted(runs, key=lambda run: run.seconds)[len(runs) // 2]


def failed_in_any(runs: Sequence[PathRun] | Sequence[PolarsRun]) -> list[str]:
    """Every ticker that failed in at least one of ``runs``."""
    return sorted({ticker for run in runs for ticker in run.failed})


def typical_path(runs: list[PathRun]) -> PathRun:
    """The median run of a path, with the highest driver peak of all its runs and every
    ticker any of them failed."""
    worst = max(runs, key=lambda run: run.memory.growth_mb).memory
    return replace(median_run(runs), memory=worst, failed=failed_in_any(runs))


def typical_polars(runs: list[PolarsRun]) -> PolarsRun:
    """The median Polars run, with the highest peak RSS of all the runs and every ticker
    any of them failed."""
    peak = max(run.rss_peak_mb for run in runs)
    return replace(median_run(runs), rss_peak_mb=peak, failed=failed_in_any(runs))


def settings_for(root: Path, folder: Path, num_cpus: int) -> Settings:
    return Settings(
        data_root=str(root), ingest={"source": "csv", "path": folder}, ray={"num_cpus": num_cpus}
    )


def fresh_root(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# --- the paths -----------------------------------------------------------------------------


def pandas_ingest(settings: Settings, source: Source) -> list[str]:
    """What ``run_ingest`` does, one ticker after the other in this process."""
    root = DataRoot(settings.data_root)
    jobs = plan_jobs(settings, source, root, full_refresh=False)
    rows = sorted(
        (ingest_ticker(job, source, settings.ingest, root) for job in jobs),
        key=lambda r: r["ticker"],
    )
    record_manifest(root, source, rows)
    return [r["ticker"] for r in rows if r["status"] == "failed"]


def pandas_features(settings: Settings) -> list[str]:
    """What ``build_features`` does, as ``_featurize_batch`` does it, in one batch."""
    plan = fs.plan_build(settings, None)
    index_bars = fs.read_index_bars(plan)
    rows = [fs.featurize_ticker(t, plan, index_bars) for t in sorted(plan.raw.tickers)]
    fs.record_feature_set(plan, rows)
    return [r["ticker"] for r in rows if r["status"] == "failed"]


def run_pandas(settings: Settings, folder: Path) -> PathRun:
    source = CsvSource(folder)
    with sample_rss() as memory:
        t0 = time.perf_counter()
        failed = pandas_ingest(settings, source)
        t1 = time.perf_counter()
        failed += pandas_features(settings)
        t2 = time.perf_counter()
    return PathRun(t1 - t0, t2 - t1, memory, failed)


def run_ray(settings: Settings, folder: Path) -> PathRun:
    source = CsvSource(folder)
    with sample_rss() as memory:
        t0 = time.perf_counter()
        result = run_ingest(settings, source=source)
        t1 = time.perf_counter()
        build = fs.build_features(settings)
        t2 = time.perf_counter()
    return PathRun(t1 - t0, t2 - t1, memory, result.failed + build.failed)


@dataclass
class PolarsRun:
    """One run of ``polars_path.py``: its own process, ``threads`` threads."""

    threads: int
    ingest_s: float
    features_s: float
    rss_start_mb: float
    rss_peak_mb: float
    failed: list[str]
    root: Path

    @property
    def seconds(self) -> float:
        return self.ingest_s + self.features_s


def run_polars(threads: int, folder: Path, root: Path, warmup: Path) -> PolarsRun:
    """``polars_path.py`` on ``folder`` in a fresh process with ``threads`` threads (Polars
    sizes its thread pool when imported), after an untimed run on ``warmup``."""
    done = subprocess.run(
        polars_path.command(threads, folder, root, warmup),
        env=polars_path.thread_env(threads),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"polars_path.py --threads {threads} failed:\n{done.stderr[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if report["threads"] != threads:
        raise RuntimeError(f"Polars ran {report['threads']} threads, not {threads}")
    return PolarsRun(
        threads,
        report["ingest_s"],
        report["features_s"],
        report["rss_start_mb"],
        report["rss_peak_mb"],
        sorted(report["failed"]),
        root,
    )


# --- equality ----------------------------------------------------------------------------


def compare_roots(a: DataRoot, b: DataRoot, tickers: int) -> list[str]:
    """Differences between two data roots built from the same files (empty: equal)."""
    raw_a, raw_b = latest_manifest(a), latest_manifest(b)
    if raw_a is None or raw_b is None:
        return ["a raw manifest is missing"]
    problems = []
    if raw_a.version != raw_b.version:
        problems.append(f"data version {raw_a.version} != {raw_b.version}")
    feat_a, feat_b = fs.feature_manifest(a), fs.feature_manifest(b)
    if feat_a.version != feat_b.version:
        problems.append(f"feature version {feat_a.version} != {feat_b.version}")
    names_a, names_b = sorted(feat_a.tickers), sorted(feat_b.tickers)
    if names_a != names_b or len(names_a) != tickers:
        counts = f"{len(names_a)} vs {len(names_b)}, {tickers} expected"
        problems.append(f"feature tickers differ ({counts})")
        return problems
    for ticker in names_a:
        left = a.read_parquet(*fs.partition(feat_a.version, ticker))
        right = b.read_parquet(*fs.partition(feat_b.version, ticker))
        try:
            pd.testing.assert_frame_equal(left, right)
        except AssertionError as exc:
            problems.append(f"{ticker}: features differ: {str(exc).splitlines()[0]}")
    return problems


def compare_polars(root: DataRoot, polars_root: Path, tickers: int) -> tuple[list[str], float]:
    """Differences between the project's data root and ``polars_path``'s output from the same
    files (empty: equal), and the largest absolute difference of a feature value.

    Raw bars must be equal exactly; features column for column, floats within ``RTOL`` and
    ``ATOL`` with missing values (the newest row's ``target_ret``) in the same places.
    """
    raw, feat = latest_manifest(root), fs.feature_manifest(root)
    if raw is None:
        return ["the project's raw manifest is missing"], float("nan")
    problems: list[str] = []
    for kind, names, expected in (
        ("raw", raw.tickers, polars_path.RAW),
        ("feature", feat.tickers, polars_path.FEATURES),
    ):
        found = sorted(p.stem for p in (polars_root / expected).glob("*.parquet"))
        if sorted(names) != found or len(found) != tickers:
            counts = f"{len(names)} vs {len(found)}, {tickers} expected"
            problems.append(f"{kind} tickers differ ({counts})")
    if problems:
        return problems, float("nan")
    worst = 0.0
    for ticker in sorted(raw.tickers):
        bars = pd.read_parquet(polars_root / polars_path.RAW / f"{ticker}.parquet")
        try:
            pd.testing.assert_frame_equal(read_bars(root, ticker, raw), bars, check_exact=True)
        except AssertionError as exc:
            problems.append(f"{ticker}: raw bars differ: {str(exc).splitlines()[0]}")
    for ticker in sorted(feat.tickers):
        ours = root.read_parquet(*fs.partition(feat.version, ticker))
        theirs = pd.read_parquet(polars_root / polars_path.FEATURES / f"{ticker}.parquet")
        problem, diff = feature_difference(ours, theirs)
        worst = max(worst, diff)
        if problem:
            problems.append(f"{ticker}: features differ: {problem}")
    return problems, worst


def feature_difference(ours: pd.DataFrame, theirs: pd.DataFrame) -> tuple[str, float]:
    """The first difference between two feature frames ('' when equal within ``RTOL`` and
    ``ATOL``) and the largest absolute difference of their float columns."""
    if list(ours.columns) != list(theirs.columns):
        return f"columns {list(ours.columns)} != {list(theirs.columns)}", float("nan")
    if len(ours) != len(theirs):
        return f"{len(ours)} rows != {len(theirs)}", float("nan")
    worst, problem = 0.0, ""
    for col in ours.columns:
        a, b = ours[col].to_numpy(), theirs[col].to_numpy()
        if a.dtype != b.dtype:
            problem = problem or f"{col}: dtype {a.dtype} != {b.dtype}"
        elif a.dtype.kind != "f":
            if not np.array_equal(a, b):
                problem = problem or f"{col}: values differ"
        elif not np.array_equal(np.isnan(a), np.isnan(b)):
            problem = problem or f"{col}: missing values differ"
        else:
            both = ~np.isnan(a)
            gap = np.abs(a[both] - b[both])
            worst = max(worst, float(gap.max(initial=0.0)))
            if (gap > ATOL + RTOL * np.abs(a[both])).any():
                problem = problem or f"{col}: max abs diff {gap.max():.3g} beyond tolerance"
    return problem, worst


# --- one universe size -------------------------------------------------------------------


@dataclass
class SizeResult:
    tickers: int
    rows: int
    pandas: PathRun
    ray: PathRun
    polars: list[PolarsRun]
    problems: list[str] = field(default_factory=list)
    polars_diff: float = 0.0  # largest absolute difference of a Polars feature value

    @property
    def ratio(self) -> float:
        return self.pandas.seconds / self.ray.seconds

    def polars_run(self, threads: int) -> PolarsRun:
        return next(p for p in self.polars if p.threads == threads)

    @property
    def polars_ratio(self) -> float:
        """Polars with the most threads / the Ray path, in seconds (>= 1: Ray as fast)."""
        return self.polars_run(max(POLARS_THREADS)).seconds / self.ray.seconds


def threads_label(n: int) -> str:
    return f"{n} thread{'s' if n > 1 else ''}"


def polars_roots(count: int, args: argparse.Namespace) -> dict[int, Path]:
    return {n: args.out / "roots-polars" / f"t{count}-threads{n}" for n in POLARS_THREADS}


def bench_polars(count: int, args: argparse.Namespace) -> list[PolarsRun]:
    """Polars with each thread count on the universe of ``count`` tickers; the outputs stay
    for ``bench_size`` to check."""
    folder = write_universe(count, args.years, args.seed, args.out)
    warmup = write_universe(4, 2, args.seed, args.out)
    return [
        typical_polars([run_polars(n, folder, root, warmup) for _ in range(args.repeats)])
        for n, root in polars_roots(count, args).items()
    ]


def bench_size(count: int, args: argparse.Namespace, polars: list[PolarsRun]) -> SizeResult:
    folder = write_universe(count, args.years, args.seed, args.out)
    roots = args.out / "roots"
    ray_root, pandas_root = roots / "ray", roots / "pandas"
    root_a, root_b = DataRoot(str(ray_root)), DataRoot(str(pandas_root))
    pandas_runs: list[PathRun] = []
    ray_runs: list[PathRun] = []
    problems: list[str] = []
    for repeat in range(args.repeats):  # each into empty roots, every pair compared
        paths = [
            (pandas_runs, run_pandas, settings_for(fresh_root(pandas_root), folder, args.num_cpus)),
            (ray_runs, run_ray, settings_for(fresh_root(ray_root), folder, args.num_cpus)),
        ]
        for runs, measure, settings in paths[:: -1 if repeat % 2 else 1]:  # first in turn
            runs.append(measure(settings, folder))
        found = compare_roots(root_a, root_b, count)
        problems += [f"repeat {repeat + 1}: {p}" for p in found]
    pandas_run, ray_run = typical_path(pandas_runs), typical_path(ray_runs)
    problems += [f"pandas loop failed {t}" for t in pandas_run.failed]
    problems += [f"Ray path failed {t}" for t in ray_run.failed]
    worst = 0.0
    for run in polars:
        found, diff = compare_polars(root_a, run.root, count)
        label = f"Polars, {threads_label(run.threads)}"
        problems += [f"{label}: {p}" for p in found]
        problems += [f"{label}: failed {t}" for t in run.failed]
        worst = max(worst, diff)
        shutil.rmtree(run.root, ignore_errors=True)
    manifest = latest_manifest(root_a)
    rows = manifest.rows if manifest else 0
    shutil.rmtree(roots, ignore_errors=True)
    return SizeResult(count, rows, pandas_run, ray_run, polars, problems, worst)


def _warm_worker() -> int:
    """Imports and the session calendar in one Ray worker; sleeps so each task gets its own."""
    from ray_app.data import feature_store, ingest  # noqa: F401

    exchange_sessions("XNYS")
    time.sleep(1.0)
    return os.getpid()


def warm_up(args: argparse.Namespace) -> float:
    """Every Ray worker and both paths once on a tiny universe, so imports are not timed."""
    import ray

    t0 = time.perf_counter()
    task = ray.remote(num_cpus=1)(_warm_worker)
    ray.get([task.remote() for _ in range(args.num_cpus)])
    folder = write_universe(4, 2, args.seed, args.out)
    roots = args.out / "roots-warmup"
    run_pandas(settings_for(fresh_root(roots / "pandas"), folder, args.num_cpus), folder)
    run_ray(settings_for(fresh_root(roots / "ray"), folder, args.num_cpus), folder)
    shutil.rmtree(roots, ignore_errors=True)
    return time.perf_counter() - t0


# --- report ------------------------------------------------------------------------------


def print_table(results: list[SizeResult]) -> None:
    head = (
        f"{'tickers':>7} {'rows':>10} | {'pandas s':>8} {'rows/s':>9} {'peak MB':>7} | "
        f"{'Ray s':>7} {'rows/s':>9} {'peak MB':>7} | {'ratio':>5} | "
        + " | ".join(f"{f'polars{n} s':>9} {'rows/s':>9}" for n in POLARS_THREADS)
        + f" | {'p2/Ray':>6} | outputs"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        p, y = r.pandas, r.ray
        outputs = "equal" if not r.problems else "DIFFER"
        polars = " | ".join(
            f"{q.seconds:>9.2f} {r.rows / q.seconds:>9,.0f}"
            for q in sorted(r.polars, key=lambda q: q.threads)
        )
        print(
            f"{r.tickers:>7} {r.rows:>10,} | {p.seconds:>8.2f} {r.rows / p.seconds:>9,.0f} "
            f"{p.memory.growth_mb:>7.1f} | {y.seconds:>7.2f} {r.rows / y.seconds:>9,.0f} "
            f"{y.memory.growth_mb:>7.1f} | {r.ratio:>4.2f}x | {polars} | "
            f"{r.polars_ratio:>5.2f}x | {outputs}"
        )
    print("rows: bars ingested; rows/s: rows / (ingest + features) seconds; peak MB: driver RSS")
    print("growth over the path; ratio: pandas seconds / Ray seconds; polarsN: one Polars")
    print("process with N threads; p2/Ray: Polars 2-thread seconds / Ray seconds")
    print()
    print("stages (s): ingest / features, of the median run; RSS at start -> peak (MB), the")
    print("highest of the repeats: of the driver for pandas and Ray, of the Polars process")
    print("(its imports done) for Polars")
    for r in results:
        p, y = r.pandas, r.ray
        print(
            f"{r.tickers:>7} tickers: pandas {p.ingest_s:.2f} / {p.features_s:.2f}, "
            f"RSS {p.memory.start / MB:.0f} -> {p.memory.peak / MB:.0f}; "
            f"Ray {y.ingest_s:.2f} / {y.features_s:.2f}, "
            f"RSS {y.memory.start / MB:.0f} -> {y.memory.peak / MB:.0f}"
        )
        for q in sorted(r.polars, key=lambda q: q.threads):
            print(
                f"{'':>16} Polars, {threads_label(q.threads)}: {q.ingest_s:.2f} / "
                f"{q.features_s:.2f}, "
                f"RSS {q.rss_start_mb:.0f} -> {q.rss_peak_mb:.0f}"
            )
    for r in results:
        print(
            f"{r.tickers:>7} tickers: Polars' features against the project's: max abs diff "
            f"{r.polars_diff:.3g} (tolerance rtol {RTOL:g}, atol {ATOL:g}; raw bars exact)"
        )
        for problem in r.problems[:10]:
            print(f"  {r.tickers} tickers: {problem}")


def memory_flat(results: list[SizeResult]) -> bool | None:
    """Whether the Ray driver's peak growth stays flat from the smallest to the largest size.

    Allowed: 25% plus 16 MB of noise. A driver that kept every ticker's rows would grow in
    proportion to the tickers: 20 years of bars are about 0.3 MB a ticker, features 1.5 MB.
    """
    if len(results) < 2:
        return None
    small, large = results[0].ray.memory.growth_mb, results[-1].ray.memory.growth_mb
    return large <= 1.25 * max(small, 0.0) + 16


def verdict(results: list[SizeResult]) -> str:
    largest = results[-1]
    speed = largest.ratio >= SPEED_TARGET
    polars = largest.polars_ratio >= POLARS_TARGET
    flat = memory_flat(results)
    equal = not any(r.problems for r in results)
    ok = speed and polars and equal and flat is not False
    memory_note = {None: "n/a (one size)", True: "flat", False: "GROWS"}[flat]
    return (
        f"{'PASS' if ok else 'FAIL'}: at {largest.tickers} tickers the Ray path is "
        f"{largest.ratio:.2f}x the pandas loop (target >= {SPEED_TARGET}x) and Polars with "
        f"{max(POLARS_THREADS)} threads takes {largest.polars_ratio:.2f}x the Ray path's time "
        f"(target >= {POLARS_TARGET}x); Ray driver peak {memory_note}; outputs "
        f"{'equal' if equal else 'DIFFER'}"
    )


# --- entry point -------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tickers",
        type=int,
        nargs="+",
        default=[100, 500],
        help="universe sizes, SPY included (default: 100 500)",
    )
    parser.add_argument("--years", type=int, default=20, help="years of daily bars (default 20)")
    parser.add_argument(
        "--smoke", action="store_true", help="quick check: 10 and 20 tickers x 3 years"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="runs of each path per size, the medians reported (default 3; 1 with --smoke)",
    )
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic universe")
    parser.add_argument("--out", type=Path, default=OUT, help="cache and scratch folder")
    args = parser.parse_args()
    if args.smoke:
        args.tickers, args.years = [10, 20], 3
    if args.repeats is None:
        args.repeats = 1 if args.smoke else 3
    args.tickers = sorted(set(args.tickers))
    if min(args.tickers) < 2 or args.years < 1 or args.repeats < 1:
        parser.error("need at least 2 tickers (SPY and one more), 1 year and 1 repeat")
    args.out = args.out.resolve()
    return args


@contextlib.contextmanager
def local_ray(num_cpus: int) -> Iterator[float]:
    """A fresh local Ray instance with ``num_cpus`` CPUs, through ``ray_app.ops.runtime.connect``.

    Ray joins the cluster of the last ``ray start`` on this machine (``/tmp/ray``) when no
    address is given; its own temp folder keeps the benchmark on an instance of its own.
    Yields the seconds Ray took to start.
    """
    import ray

    from ray_app.ops.runtime import connect

    for name in ("RAY_ADDRESS", "RAY_APP_RAY__ADDRESS"):
        if os.environ.pop(name, None):
            print(f"note: {name} ignored; the benchmark starts its own local Ray instance")
    temp = tempfile.mkdtemp(prefix="ray-bench-", dir="/tmp")  # short: Ray's socket paths
    os.environ["RAY_TMPDIR"] = temp
    settings = Settings(ray={"num_cpus": num_cpus})
    t0 = time.perf_counter()
    connect(settings)
    try:
        yield time.perf_counter() - t0
    finally:
        ray.shutdown()
        os.environ.pop("RAY_TMPDIR", None)
        shutil.rmtree(temp, ignore_errors=True)


def load_note() -> str:
    """The 1-minute load average: other work on the machine skews a 2-core benchmark."""
    load = os.getloadavg()[0]
    busy = load > 0.5 * (os.cpu_count() or 1)
    return f"load average {load:.2f}" + (" (busy: other work skews the figures)" if busy else "")


def main() -> None:
    args = parse_args()
    print(
        f"universe: {args.tickers} tickers x {args.years} years (XNYS sessions to "
        f"{END.date()}), seed {args.seed}; Ray: local, {args.num_cpus} CPUs; Polars: one "
        f"process, {' and '.join(map(str, POLARS_THREADS))} threads; "
        f"machine: {os.cpu_count()} cores, {load_note()}"
    )
    t0 = time.perf_counter()
    for count in args.tickers:
        write_universe(count, args.years, args.seed, args.out)
    print(f"universe ready in {time.perf_counter() - t0:.1f}s under {args.out / 'universe'}")
    polars = {}
    for count in args.tickers:  # before Ray starts, so that nothing else runs beside it
        polars[count] = bench_polars(count, args)
        times = ", ".join(f"{threads_label(q.threads)} {q.seconds:.2f}s" for q in polars[count])
        print(f"  {count} tickers: Polars {times}", flush=True)
    results = []
    with local_ray(args.num_cpus) as start_s:
        print(f"Ray started in {start_s:.1f}s; warm-up (not timed) {warm_up(args):.1f}s")
        for count in args.tickers:
            results.append(bench_size(count, args, polars[count]))
            r = results[-1]
            print(
                f"  {count} tickers: pandas {r.pandas.seconds:.2f}s, Ray {r.ray.seconds:.2f}s",
                flush=True,
            )
    print(f"after the runs: {load_note()}")
    print()
    print_table(results)
    print()
    print(verdict(results))


if __name__ == "__main__":
    main()
