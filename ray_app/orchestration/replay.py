"""Replay: history through the real daily loop, one trading day at a time.

For each trading day D of the source in [start, end]:

1. cut the data at D (``ingest.end = D``: the day's pipeline sees no later bar);
2. run the daily pipeline (``runner.run_daily``, the Dagster job on its stale assets):
   ingest, features, retraining when the day is a retraining day (``retrain_every``; the
   search only with ``search``: other days hold ``search`` and ``model_release`` back), the
   monitor (it scores the day before, whose outcome D's bar brings), promotion on live
   evidence when enabled, deploy, the smoke request and the signals;
3. serve and send the day's requests: every ticker, from ``clients`` fixed client ids, over
   HTTP, until the answers come from D's feature row (the ingress follows a new feature set
   within its poll interval);
4. wait until the serving app's prediction log holds the day's answers;
5. the previous day is scored by the next day's pipeline; the last day stays pending.

It ends with the A/B report and the drift report over the period. Everything that decides a
number is fixed (the data cut, seeds in the settings, client ids, the split's hash), so two
replays on fresh data roots give the same predictions and the same report.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ray_app.core.errors import RayAppError
from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.feature_store import feature_manifest
from ray_app.data.ingest import latest_manifest
from ray_app.data.sources import make_source
from ray_app.monitoring import sources
from ray_app.monitoring.report import build_report, write_report
from ray_app.orchestration.assets import RELEASE, SEARCH
from ray_app.orchestration.runner import FAILED, NOT_RUN, AssetOutcome, run_daily
from ray_app.serving.client import ApiClient
from ray_app.serving.schemas import ModelsResponse, PredictResponse

MAX_TICKERS_PER_REQUEST = 50  # the shipped serve_config's max_tickers
T = TypeVar("T")


class ReplayError(RayAppError):
    """A replay that cannot start or cannot go on (the day and the cause named)."""


@dataclass(frozen=True)
class ReplayOptions:
    start: dt.date
    end: dt.date
    retrain_every: int = 0  # 0: train on the first day only
    search: bool = False
    clients: int = 8
    wait_s: float = 120.0


@dataclass
class ReplayDay:
    day: dt.date
    steps: list[AssetOutcome]
    requests: int = 0
    predictions: int = 0
    logged: int = 0
    seconds: float = 0.0
    variants: dict[str, int] = field(default_factory=dict)


@dataclass
class ReplayResult:
    days: list[ReplayDay]
    report: str | None = None
    drift_report: str | None = None


def trading_days(settings: Settings, start: dt.date, end: dt.date) -> list[dt.date]:
    """The dates in [start, end] on which the source has a bar for any configured ticker."""
    source = make_source(settings.ingest)
    tickers = settings.ingest.tickers or source.list_tickers()
    days: set[dt.date] = set()
    for ticker in tickers:
        bars = source.fetch(ticker, start, end).bars
        days |= {d.date() if isinstance(d, dt.datetime) else d for d in bars["date"]}
    return sorted(d for d in days if start <= d <= end)


def check_root(settings: Settings, start: dt.date) -> None:
    """A replay cuts the data at each day: a data root with bars from ``start`` on would
    leak the future into the first days."""
    manifest = latest_manifest(DataRoot(settings.data_root))
    if manifest and manifest.last_date >= start:
        raise ReplayError(
            f"data root {settings.data_root} already holds bars to {manifest.last_date}, "
            f"on or after --from {start}: replay into a fresh data root (--data-root)"
        )


def day_settings(settings: Settings, day: dt.date) -> Settings:
    cut = settings.model_copy(deep=True)
    cut.ingest.end = day
    return cut


def held_back(settings: Settings, options: ReplayOptions, index: int) -> set[str]:
    """The assets the ``index``-th day holds back: no search unless asked, no training
    except on retraining days."""
    retrain = index == 0 or (options.retrain_every > 0 and index % options.retrain_every == 0)
    held = set() if options.search and retrain else {SEARCH.to_user_string()}
    if not retrain:
        held.add(RELEASE.to_user_string())
    return held


def _post(client: ApiClient, tickers: list[str], name: str) -> PredictResponse:
    answer = client.post("/v1/predict", {"tickers": tickers}, {"x-client-id": name})
    return PredictResponse.model_validate_json(answer)


def _newest_served(client: ApiClient) -> dt.date:
    """The newest feature date the answering ingress replica serves (``/v1/models``)."""
    return ModelsResponse.model_validate_json(client.get("/v1/models")).feature_dates[1]


class _Stale(Exception):
    """An answer from an ingress replica still on the previous feature set."""


def _until(day: dt.date, deadline: float, ask: Callable[[], T]) -> T:
    """``ask()`` until it succeeds, retrying refused connections and stale answers (a
    ``_Stale``) once a second until ``deadline``."""
    last = ""
    while time.monotonic() < deadline:
        try:
            return ask()
        except (urllib.error.URLError, OSError, ValueError, _Stale) as exc:
            last = str(exc)
        time.sleep(1)
    raise ReplayError(f"{day}: the Serve app did not answer from {day}'s features: {last}")


def send_day(
    settings: Settings, day: dt.date, tickers: list[str], options: ReplayOptions
) -> list[PredictResponse]:
    """Every client asks for every ticker, once the Serve app serves D's feature rows.

    Readiness is asked of ``/v1/models`` (unlogged) until three answers in a row name D, so
    the log holds no probe; an ingress replica that has not yet refreshed (each polls the
    feature store on its own) is answered by resending that request, which the log then
    holds twice, once from the older feature row."""
    client, deadline = ApiClient(settings), time.monotonic() + options.wait_s

    def ready() -> None:
        for _ in range(3):
            newest = _newest_served(client)
            if newest != day:
                raise _Stale(f"the ingress serves feature rows up to {newest}")

    def ask(tickers: list[str], name: str) -> PredictResponse:
        reply = _post(client, tickers, name)
        dates = sorted({p.feature_date for p in reply.predictions})
        if dates != [day]:
            raise _Stale(f"answered from feature dates {dates}")
        return reply

    _until(day, deadline, ready)
    chunks = [
        tickers[i : i + MAX_TICKERS_PER_REQUEST]
        for i in range(0, len(tickers), MAX_TICKERS_PER_REQUEST)
    ]
    return [
        _until(day, deadline, functools.partial(ask, chunk, f"replay-{client}"))
        for client in range(options.clients)
        for chunk in chunks
    ]


def wait_logged(
    settings: Settings, day: dt.date, replies: list[PredictResponse], wait_s: float
) -> int:
    """Rows of ``day`` in the prediction log once every reply's request is in it."""
    wanted = {r.request_id for r in replies}
    root = DataRoot(settings.data_root)
    deadline = time.monotonic() + wait_s
    while True:
        log = sources.read_log(root, day, day)
        if wanted <= set(log["request_id"]):
            return len(log)
        if time.monotonic() > deadline:
            missing = len(wanted - set(log["request_id"]))
            raise ReplayError(
                f"{day}: {missing} of {len(wanted)} request(s) not in the prediction log under "
                f"{root.display(sources.LOG)} after {wait_s:g} s"
            )
        time.sleep(1)


def replay(
    settings: Settings,
    options: ReplayOptions,
    on_day: Callable[[ReplayDay], None] | None = None,
) -> ReplayResult:
    """Run the days (see the module docstring); a failed pipeline step stops the replay."""
    if options.start > options.end:
        raise ReplayError(f"--from {options.start} is after --to {options.end}")
    days = trading_days(settings, options.start, options.end)
    if not days:
        raise ReplayError(f"the source has no trading day from {options.start} to {options.end}")
    check_root(settings, days[0])
    result = ReplayResult([])
    for index, day in enumerate(days):
        started = time.monotonic()
        cut = day_settings(settings, day)
        cut.pipeline.search = options.search
        run = run_daily(cut, hold=held_back(cut, options, index))
        record = ReplayDay(day, run.assets)
        result.days.append(record)
        if run.failed:
            failed = next(s for s in run.assets if s.status in (FAILED, NOT_RUN))
            raise ReplayError(f"{day}: pipeline step {failed.name} failed: {failed.detail}")
        tickers = sorted(feature_manifest(DataRoot(cut.data_root)).tickers)
        replies = send_day(cut, day, tickers, options)
        record.requests = len(replies)
        record.predictions = sum(len(r.predictions) for r in replies)
        for reply in replies:
            record.variants[reply.variant] = record.variants.get(reply.variant, 0) + 1
        record.logged = wait_logged(cut, day, replies, options.wait_s)
        record.seconds = time.monotonic() - started
        if on_day:
            on_day(record)
    report = build_report(settings, days[0], days[-1])
    result.report = write_report(settings, report)
    result.drift_report = drift_report(settings, days[-1])
    return result


def drift_report(settings: Settings, day: dt.date) -> str:
    """Where the drift report of the replay's last ``day`` (over the drift window before it)
    was written, reading the log by feature date since a replay asks about past days today."""
    from ray_app.monitoring.drift import run_drift

    return str(run_drift(settings, day, read_log=sources.read_log).report)
