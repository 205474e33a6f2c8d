"""The ingress's work for one request, free of HTTP and of Ray: validate, route, look up
features, read the cache, call one variant, mirror to the shadow.

Everything but model inference happens here, inside the ingress replica, because every hop
between replicas costs milliseconds on a 2-CPU machine (about 3.5 ms of a request's 5 ms
there): the feature table and the cache are in memory and routing is a hash.

Daily features change once a day, so a prediction is a function of (model version, ticker,
feature row). Once per model version and feature set the ingress therefore asks each variant
for its predictions of every row (``Variant.scores``, computed in one batched pass there) and
then answers any ticker and ``as_of`` from memory. Until that table arrives, and if fetching
it fails, requests go to the variant one call each, through the cache. The shadow's table
answers mirrors the same way; without it a mirror is a call fired after the primary answer is
known and never awaited by the request; a bounded number may be pending, the rest are dropped
and counted.

Serving never falls back to an unvetted model: a request routed to a variant without a model
goes to the primary variant (the first, by convention the champion), and without a champion
nothing is served (503; ``/readyz`` gives the reason code) until one is promoted, which the
champion variant notices by itself within a minute, or a rollout pins a version.

With ``feature_version`` null the ingress follows the newest feature set: it polls the feature
store's latest pointer, prepares a new set (the table and every variant's precomputed
predictions for it) in the background, and swaps it in at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from ray_app.core.errors import RayAppError
from ray_app.data.online import NoFeaturesError, UnknownTickerError
from ray_app.data.predictions import LoggedRequest, client_hash
from ray_app.serving.args import IngressConfig, ServeArgs
from ray_app.serving.cache import CacheKey, PredictionCache
from ray_app.serving.features import FeatureTable, Window
from ray_app.serving.predictor import Job, Result, Scores, VariantInfo
from ray_app.serving.router import ShadowGate, choose, routing_key
from ray_app.serving.schemas import Direction, PredictRequest, PredictResponse, TickerPrediction

logger = logging.getLogger("ray.serve")
ATTEMPTS = 2
SCORES_ROWS_PER_CALL = 250_000  # 2 MB of float64 a call
SCORES_TIMEOUT_S = 120.0
SCORES_RETRY_S = 30.0
UNSERVABLE_REFRESH_S = 1.0
UNSERVABLE_WAIT_S = 2.0  # the longest a request waits for that reask before the 503
FRESHNESS_EVERY_S = 5.0  # Ray exports a gauge only while it is set again


class ApiError(RayAppError):
    """A request that cannot be answered: the HTTP status and the reason shown to the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class VariantClient(Protocol):
    """How the ingress reaches one variant (a DeploymentHandle in production)."""

    async def predict(self, job: Job) -> Result: ...

    async def predict_within(self, job: Job, timeout_s: float) -> Result:
        """Like ``predict``, cut (and cancelled) after ``timeout_s``: TimeoutError."""
        ...

    async def info(self, timeout_s: float) -> VariantInfo: ...

    async def scores(
        self, feature_version: str, tickers: list[str], timeout_s: float
    ) -> Scores | None:
        """The variant's predictions for every row of ``tickers`` (None: it has no model)."""
        ...


class Metrics(Protocol):
    def cache(self, hits: int, misses: int, precomputed: int = 0) -> None: ...

    def shadow(self, variant: str, outcome: str, count: int = 1) -> None: ...

    def shadow_diff(self, variant: str, diffs: list[float]) -> None: ...

    def latest_bar(self, day: dt.date) -> None: ...


@dataclass(frozen=True)
class Answer:
    """A prediction response and what the request log wants to know about it: the cache hits
    and, when the shadow's precomputed predictions were at hand, the comparison with them."""

    response: PredictResponse
    cache_hits: int
    shadow: dict[str, Any] | None = None


class PredictionRecorder(Protocol):
    """Where answered predictions go (``PredictionLog`` in production): never blocks."""

    def record(self, logged: LoggedRequest) -> None: ...

    def status(self) -> dict[str, int]:
        """Rows ``buffered``, ``written`` and ``dropped`` so far."""
        ...


Sources = str | list[str]
"""Where a request's predictions came from: one source for all, or one per ticker."""


def utc_today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


def cache_key(info: VariantInfo, window: Window) -> CacheKey:
    return CacheKey(info.model or "", info.version or 0, window.ticker, window.feature_date)


def make_job(table: FeatureTable, windows: list[Window]) -> Job:
    return Job(tuple(table.columns), np.stack([w.rows for w in windows]))


def _chunks(table: FeatureTable, max_rows: int) -> list[list[str]]:
    """The table's tickers in groups of at most ``max_rows`` rows (a longer ticker alone)."""
    groups: list[list[str]] = [[]]
    rows = 0
    for ticker in table.tickers:
        n = len(table.frames[ticker][0])
        if groups[-1] and rows + n > max_rows:
            groups.append([])
            rows = 0
        groups[-1].append(ticker)
        rows += n
    return groups


def direction(pred: float) -> Direction:
    return "up" if pred > 0 else "down" if pred < 0 else "flat"


class PredictionService:
    """Routing, features, cache and shadow of one ingress replica."""

    def __init__(
        self,
        args: ServeArgs,
        clients: dict[str, VariantClient],
        metrics: Metrics,
        load_table: Callable[[str | None], FeatureTable],
        latest_features: Callable[[], str | None],
        today: Callable[[], dt.date] = utc_today,
        log: PredictionRecorder | None = None,
    ) -> None:
        self.args = args
        self.clients = clients
        self.metrics = metrics
        self.cache = PredictionCache(args.cache.max_size, args.cache.ttl_s)
        self.table: FeatureTable | None = None
        self.config: IngressConfig | None = None
        self.gate: ShadowGate | None = None
        self._exported_precomputed = 0
        self.infos = {name: VariantInfo(name, None, error="not asked yet") for name in clients}
        self._load_table = load_table
        self._latest_features = latest_features
        self._today = today
        self.log = log
        self._order = [v.name for v in args.variants]
        self._refreshed_at = -math.inf
        self._refreshing: asyncio.Task[None] | None = None
        self._freshness: asyncio.Task[None] | None = None
        self._following: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self.scores: dict[str, Scores] = {}
        self.precomputed_answers = 0
        self._scoring: dict[str, asyncio.Task[None]] = {}
        self._scores_retry_at: dict[str, float] = {}

    async def reconfigure(self, config: IngressConfig) -> None:
        """Apply a new split, shadow or feature set; a new table is read before it replaces
        the old one, so requests in flight keep theirs."""
        config.check_variants(list(self.clients))
        if (
            self.table is None
            or self.config is None
            or (config.feature_version != self.config.feature_version)
        ):
            self.table = await asyncio.to_thread(self._load_table, config.feature_version)
            self.cache.clear()
            self.metrics.latest_bar(self.table.last_date)
        self.gate = self._gate(config)
        self.config = config
        if self._freshness is None or self._freshness.done():
            self._freshness = asyncio.create_task(self._report_freshness())
        if self._following is None or self._following.done():
            self._following = asyncio.create_task(self._follow_features())

    async def _report_freshness(self) -> None:
        """Traffic or not: keep exporting the newest bar's date (the staleness alert reads
        it), and keep asking the variants until each has precomputed its table (the daily
        signals wait for those; a single smoke request may come before a variant's model)."""
        while True:
            await asyncio.sleep(FRESHNESS_EVERY_S)
            if self.table is not None:
                self.metrics.latest_bar(self.table.last_date)
            self._export_shadow()
            if self.args.precompute and not all(map(self.precomputes, self.clients)):
                self._refresh_task()

    # -- following the newest feature set -----------------------------------------------

    async def _follow_features(self) -> None:
        """While ``feature_version`` is null, read the feature store's latest pointer every
        ``features_poll_s`` seconds and move to a new set when one is published; a failed
        read or switch is logged and tried again at the next poll."""
        while True:
            await asyncio.sleep(self.args.features_poll_s)
            try:
                await self.follow_once()
            except Exception as exc:
                logger.warning("feature set not followed: %s", repr(exc))

    async def follow_once(self) -> None:
        """Move to the newest feature set if it is not the one served and nothing pins one:
        read it in a thread, have every variant's predictions for it, then swap the table,
        the precomputed predictions and the cache in one step (requests in flight keep the
        table they started with)."""
        old, config = self.table, self.config
        if old is None or config is None or config.feature_version is not None:
            return
        latest = await asyncio.to_thread(self._latest_features)
        if latest is None or latest == old.feature_version:
            return
        new = await asyncio.to_thread(self._load_table, latest)
        scores = await self._precompute(new)
        if self.table is not old or self.config is None or self.config.feature_version:
            return  # a reconfigure moved the features meanwhile: it wins
        self.table, self.scores = new, scores
        self.cache.clear()
        self.metrics.latest_bar(new.last_date)
        logger.info("serving feature set %s (newest bar %s)", new.feature_version, new.last_date)

    async def _precompute(self, table: FeatureTable) -> dict[str, Scores]:
        """Every servable variant's predictions for ``table`` (those that fail are left out:
        their requests take the per-request path until the next refresh fetches them)."""
        if not self.args.precompute:
            return {}
        names = [n for n in self.clients if self.infos[n].ready]
        fetched = await asyncio.gather(*(self._scores_for(n, self.infos[n], table) for n in names))
        return {n: held for n, held in zip(names, fetched, strict=True) if held is not None}

    def _gate(self, config: IngressConfig) -> ShadowGate | None:
        """The shadow's gate: kept (with its counts) while the shadow variant stays."""
        shadow, old = config.shadow, self.config.shadow if self.config else None
        if self.gate is not None and old is not None and shadow and old.variant == shadow.variant:
            self.gate.fraction = shadow.fraction
            return self.gate
        self._export_shadow()  # the old gate's last counts
        self._exported_precomputed = 0
        if shadow is None:
            return None
        return ShadowGate(shadow.fraction, self.args.shadow_limits.max_in_flight)

    def _export_shadow(self) -> None:
        """Export the comparisons with the shadow's precomputed predictions counted since the
        last export: one metric call every few seconds instead of one per request (the other
        outcomes, bounded by the in-flight limit, are exported as they happen)."""
        gate, config = self.gate, self.config
        if gate is None or config is None or config.shadow is None:
            return
        delta = gate.counts["precomputed"] - self._exported_precomputed
        if delta > 0:
            self.metrics.shadow(config.shadow.variant, "precomputed", delta)
            self._exported_precomputed += delta

    # -- what the variants serve ---------------------------------------------------------

    async def refresh(self) -> None:
        """Ask every variant what it serves; one that does not answer keeps its last answer."""
        names = list(self.clients)
        timeout = self.args.refresh_s * 2
        answers = await asyncio.gather(
            *(self.clients[n].info(timeout) for n in names), return_exceptions=True
        )
        for name, answer in zip(names, answers, strict=True):
            if isinstance(answer, VariantInfo):
                self._observe(name, answer)
            elif not self.infos[name].ready:
                reason = f"{type(answer).__name__}: {answer}".rstrip(": ")
                self.infos[name] = VariantInfo(name, None, error=f"unreachable ({reason})")
            self._score(name)
        self._refreshed_at = time.monotonic()

    def _observe(self, name: str, info: VariantInfo) -> None:
        """Record what a variant serves; a model version nobody serves any more leaves the
        cache."""
        old = self.infos[name]
        self.infos[name] = info
        if (old.model, old.version) != (info.model, info.version):
            self.scores.pop(name, None)
        gone = (old.model, old.version)
        if old.ready and all((i.model, i.version) != gone for i in self.infos.values()):
            self.cache.invalidate(old.model or "", old.version or 0)

    async def fresh(self) -> None:
        """Variants asked at least once; afterwards reasked in the background every
        ``refresh_s`` seconds while requests arrive. While the primary has no model, they are
        reasked before answering (at most every ``UNSERVABLE_REFRESH_S``): a promotion made
        through another ingress replica must not leave this one refusing requests for up to
        ``refresh_s``."""
        age = time.monotonic() - self._refreshed_at
        stale_refusal = (
            age > UNSERVABLE_REFRESH_S and self.unservable(self.args.primary) is not None
        )
        if self._refreshed_at == -math.inf:
            await asyncio.shield(self._refresh_task())
        elif stale_refusal:  # a variant that does not answer must not hold requests up
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._refresh_task()), UNSERVABLE_WAIT_S)
        elif age > self.args.refresh_s:
            self._refresh_task()

    def _refresh_task(self) -> asyncio.Task[None]:
        """The refresh in flight, or a new one: concurrent requests share one round of asks."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self.refresh())
        return self._refreshing

    # -- precomputed predictions ---------------------------------------------------------

    def _score(self, name: str) -> None:
        """Fetch variant ``name``'s predictions for the whole feature table in the background,
        unless they are held, being fetched, or failed less than ``SCORES_RETRY_S`` ago."""
        info, table = self.infos[name], self.table
        if not self.args.precompute or table is None or self.unservable(name) is not None:
            return
        if self.precomputes(name):
            return
        task = self._scoring.get(name)
        if (task is not None and not task.done()) or (
            time.monotonic() < self._scores_retry_at.get(name, 0.0)
        ):
            return
        self._scoring[name] = asyncio.create_task(self._fetch_scores(name, info, table))

    async def _fetch_scores(self, name: str, info: VariantInfo, table: FeatureTable) -> None:
        """Keep the predictions only while ``table`` is still the one served."""
        held = await self._scores_for(name, info, table)
        if held is not None and table is self.table:
            self.scores[name] = held

    async def _scores_for(self, name: str, info: VariantInfo, table: FeatureTable) -> Scores | None:
        """Variant ``name``'s predictions for every row of ``table``, asked in calls of at
        most ``SCORES_ROWS_PER_CALL`` rows; None unless it served ``info``'s model
        throughout."""
        preds: dict[str, np.ndarray] = {}
        try:
            for tickers in _chunks(table, SCORES_ROWS_PER_CALL):
                part = await self.clients[name].scores(
                    table.feature_version, tickers, SCORES_TIMEOUT_S
                )
                if part is None or not part.serves(info.model, info.version, table.feature_version):
                    return None  # no model, or another one now: the next refresh starts again
                preds.update(part.preds)
        except Exception as exc:
            self._scores_retry_at[name] = time.monotonic() + SCORES_RETRY_S
            logger.warning("variant %s: no precomputed predictions: %s", name, repr(exc))
            return None
        if len(preds) < len(table.frames) or not (info.model and info.version):
            return None
        logger.info("variant %s: %s v%s precomputed", name, info.model, info.version)
        return Scores(info.model, info.version, table.feature_version, preds)

    def _current_scores(self, name: str, table: FeatureTable | None) -> Scores | None:
        """Variant ``name``'s precomputed table when it is for the model the variant serves
        and feature set ``table``."""
        held, info = self.scores.get(name), self.infos[name]
        if held is None or table is None:
            return None
        return held if held.serves(info.model, info.version, table.feature_version) else None

    def precomputes(self, name: str) -> bool:
        return self._current_scores(name, self.table) is not None

    def precomputed(
        self, name: str, table: FeatureTable, windows: list[Window]
    ) -> list[float] | None:
        """The predictions of variant ``name``'s current model for ``windows`` (rows of
        ``table``, the one the request started with) from its precomputed table; None when
        that table is not there (yet, or any more)."""
        held = self._current_scores(name, table)
        if held is None:
            return None
        return [float(held.preds[w.ticker][w.index]) for w in windows]

    def unservable(self, name: str) -> str | None:
        """Why variant ``name`` cannot answer now (no model, or one that needs feature columns
        the served feature set lacks); None when it can."""
        info, table = self.infos[name], self.table
        if not info.ready:
            return f"variant {name!r} has no model: {info.error}"
        missing = [] if table is None else [c for c in info.columns if c not in table.columns]
        if table is None or not missing:
            return None
        return (
            f"variant {name!r} serves {info.model} v{info.version}, which needs column(s) "
            f"{', '.join(missing)} that feature set {table.feature_version} lacks"
        )

    def variant_problem(self, name: str) -> str | None:
        """A reason code for what is wrong with variant ``name``, None when nothing is:
        ``no_model`` (nothing loaded or unreachable), ``missing_columns`` (its model needs
        columns the feature set lacks), or ``load_failed`` (it keeps serving its model, but
        could not load the one it was last asked for)."""
        info = self.infos[name]
        if not info.ready:
            return "no_model"
        if self.unservable(name) is not None:
            return "missing_columns"
        return "load_failed" if info.error else None

    def readiness(self) -> tuple[bool, list[str]]:
        """Whether this replica can serve (features loaded, a primary that can answer) and a
        generic reason code for everything wrong, for every variant (``load_failed:challenger``);
        the details are for operators (``/v1/models``, the logs), not for an open probe."""
        codes = [] if self.table is not None else ["features_not_loaded"]
        for name in self._order:
            problem = self.variant_problem(name)
            codes += [f"{problem}:{name}"] if problem else []
        ready = self.table is not None and self.unservable(self.args.primary) is None
        return ready, codes

    # -- one request ---------------------------------------------------------------------

    async def predict(
        self, request: PredictRequest, client_id: str | None, request_id: str
    ) -> Answer:
        table, config = self.table, self.config
        if table is None or config is None:
            raise ApiError(503, "the ingress is not configured yet")
        self._check(request, table)
        await self.fresh()
        name = self._route(routing_key(client_id, request.tickers), config)
        info, windows, preds, hits, sources = await self._infer(name, table, request)
        response = PredictResponse(
            request_id=request_id,
            variant=name,
            model_name=info.model or "",
            model_version=info.version or 0,
            predictions=[
                TickerPrediction(
                    ticker=w.ticker,
                    predicted_return=p,
                    direction=direction(p),
                    score=None if w.volatility is None else p / w.volatility,
                    feature_date=w.feature_date,
                )
                for w, p in zip(windows, preds, strict=True)
            ],
        )
        logged = None
        if self.log is not None and config.prediction_log:
            logged = LoggedRequest(
                request_id,
                time.time_ns() // 1000,
                client_hash(client_id),
                name,
                "served",
                info.model or "",
                info.version or 0,
                request.tickers,
                [w.feature_date for w in windows],
                preds,
                sources,
            )
            self.log.record(logged)
        primary = dict(zip(request.tickers, preds, strict=True))
        shadow = self._mirror(request_id, name, table, request, windows, primary, logged)
        return Answer(response, hits, shadow)

    def _check(self, request: PredictRequest, table: FeatureTable) -> None:
        """Refuse what no variant could answer, before anything is routed."""
        unknown = table.unknown(request.tickers)
        if unknown:
            raise ApiError(
                404,
                f"unknown ticker(s) {', '.join(unknown)}: not in feature set "
                f"{table.feature_version}",
            )
        as_of = request.as_of
        if as_of is None:
            return
        if as_of > self._today():
            raise ApiError(422, f"as_of {as_of} is in the future (today is {self._today()} UTC)")
        if as_of < table.first_date:
            raise ApiError(
                422,
                f"as_of {as_of} is before the data: feature set {table.feature_version} "
                f"starts on {table.first_date}",
            )

    def _route(self, key: str, config: IngressConfig) -> str:
        """The key's variant, or the primary when that one cannot answer."""
        name = choose(key, [(n, config.weights[n]) for n in self._order])
        if self.unservable(name) is None:
            return name
        reason = self.unservable(self.args.primary)
        if reason is None:
            return self.args.primary
        raise ApiError(503, f"no model to serve: {reason}")

    async def _infer(
        self, name: str, table: FeatureTable, request: PredictRequest
    ) -> tuple[VariantInfo, list[Window], list[float], int, Sources]:
        """Predictions of one model version for every ticker, from the cache and the variant.

        A variant that swapped models since we last asked answers with its new version: a
        request served partly from the cache is then asked again, never mixed."""
        for _ in range(ATTEMPTS):
            info = self.infos[name]
            windows = self._windows(table, request, info.window)
            known = self.precomputed(name, table, windows)
            if known is not None:
                self.precomputed_answers += len(windows)
                self.metrics.cache(0, 0, len(windows))
                return info, windows, self._finite(windows, known), len(windows), "precomputed"
            keys = [cache_key(info, w) for w in windows]
            values = [self.cache.get(k) for k in keys]
            missing = [i for i, value in enumerate(values) if value is None]
            if not missing:
                self.metrics.cache(len(windows), 0)
                return info, windows, self._finite(windows, values), len(windows), "cache"
            result = await self._call(name, table, [windows[i] for i in missing])
            swapped = (result.model, result.version) != (info.model, info.version)
            if swapped:
                self._refreshed_at = 0.0  # reask in the background on the next request
            if result.preds is None or (swapped and len(missing) < len(windows)):
                await self.refresh()
                continue
            self.metrics.cache(len(windows) - len(missing), len(missing))
            served = replace(info, model=result.model, version=result.version)
            sources = ["cache"] * len(windows)
            for i, pred in zip(missing, result.preds.tolist(), strict=True):
                values[i], sources[i] = pred, "live"
                if math.isfinite(pred):
                    self.cache.put(cache_key(served, windows[i]), pred)
            preds = self._finite(windows, values)
            return served, windows, preds, len(windows) - len(missing), sources
        raise ApiError(503, f"variant {name!r} changed models during the request; retry")

    def _windows(self, table: FeatureTable, request: PredictRequest, rows: int) -> list[Window]:
        try:
            return [table.window(t, request.as_of, rows) for t in request.tickers]
        except UnknownTickerError as exc:
            raise ApiError(404, str(exc)) from None
        except NoFeaturesError as exc:
            raise ApiError(422, str(exc)) from None

    async def _call(self, name: str, table: FeatureTable, windows: list[Window]) -> Result:
        try:
            return await self.clients[name].predict(make_job(table, windows))
        except Exception as exc:
            logger.warning("variant %s failed: %s: %s", name, type(exc).__name__, exc)
            raise ApiError(503, f"variant {name!r} failed: {type(exc).__name__}") from None

    @staticmethod
    def _finite(windows: list[Window], values: Sequence[float | None]) -> list[float]:
        """The predictions, or a 422 naming the rows whose features gave none (NaN)."""
        out = [v for v in values if v is not None and math.isfinite(v)]
        if len(out) < len(values):
            rows = ", ".join(
                f"{w.ticker} on {w.feature_date}"
                for w, v in zip(windows, values, strict=True)
                if v is None or not math.isfinite(v)
            )
            raise ApiError(422, f"incomplete feature rows give no prediction: {rows}")
        return out

    # -- the shadow ----------------------------------------------------------------------

    def _mirror(
        self,
        request_id: str,
        primary: str,
        table: FeatureTable,
        request: PredictRequest,
        windows: list[Window],
        preds: dict[str, float],
        logged: LoggedRequest | None,
    ) -> dict[str, Any] | None:
        """Compare with the shadow variant's precomputed predictions (the comparison is
        returned, for the request's own log line), or else send it the request, unless it is
        the one that answered, it has no model, or too many mirrors are pending; never waits
        for it. The shadow's predictions go to the prediction log beside the primary's
        (``logged``), as ``role="shadow"``."""
        config, gate = self.config, self.gate
        if config is None or config.shadow is None or gate is None:
            return None
        name = config.shadow.variant
        if name == primary or self.unservable(name) is not None:
            return None
        known = self.precomputed(name, table, windows)  # the rows the primary read
        admitted = gate.admit(precomputed=known is not None)
        if admitted not in ("skipped", "precomputed"):  # precomputed: exported in bulk
            self.metrics.shadow(name, admitted)
        info = self.infos[name]
        if admitted == "precomputed" and known is not None:
            if logged is not None and self.log is not None:
                self.log.record(self._as_shadow(logged, info, known, "precomputed"))
            return self._comparison(name, info.version or 0, known, preds)
        if admitted != "sent":
            return None
        task = asyncio.create_task(
            self._shadow(request_id, name, gate, table, request, preds, logged)
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return None

    async def _shadow(
        self,
        request_id: str,
        name: str,
        gate: ShadowGate,
        table: FeatureTable,
        request: PredictRequest,
        primary: dict[str, float],
        logged: LoggedRequest | None,
    ) -> None:
        outcome = "error"
        try:
            info = self.infos[name]
            windows = [table.window(t, request.as_of, info.window) for t in request.tickers]
            timeout = self.args.shadow_limits.timeout_s
            result = await self.clients[name].predict_within(make_job(table, windows), timeout)
            if result.preds is not None:
                preds = result.preds.tolist()
                self._compare(request_id, name, result.version, preds, primary)
                if logged is not None and self.log is not None:
                    served = replace(info, model=result.model, version=result.version)
                    self.log.record(self._as_shadow(logged, served, preds, "live"))
                outcome = "ok"
        except TimeoutError:
            outcome = "timeout"
        except Exception as exc:
            logger.info("shadow %s failed: %s: %s", name, type(exc).__name__, exc)
        finally:
            gate.finish(outcome)
            self.metrics.shadow(name, outcome)

    @staticmethod
    def _as_shadow(
        logged: LoggedRequest, info: VariantInfo, preds: list[float], source: str
    ) -> LoggedRequest:
        """The shadow's answer to the request the primary's ``logged`` records."""
        return LoggedRequest(  # built directly: dataclasses.replace costs more per request
            logged.request_id,
            logged.ts_us,
            logged.client,
            info.name,
            "shadow",
            info.model or "",
            info.version or 0,
            logged.tickers,
            logged.feature_dates,
            preds,
            source,
        )

    def _comparison(
        self, name: str, version: int, preds: list[float], primary: dict[str, float]
    ) -> dict[str, Any]:
        """Record the differences between the shadow's predictions and the primary's (the
        ``abs_diff`` histogram); returns a summary for the request's log line. The
        predictions themselves are in the prediction log (role ``shadow``, same request id),
        not on the line: three per-ticker maps on every line cost serialising for nothing."""
        diffs = [abs(s - p) for s, p in zip(preds, primary.values(), strict=True)]
        diffs = [d for d in diffs if math.isfinite(d)]
        self.metrics.shadow_diff(name, diffs)
        return {
            "shadow_variant": name,
            "shadow_model_version": version,
            "max_abs_diff": max(diffs, default=None),
        }

    def _compare(
        self,
        request_id: str,
        name: str,
        version: int,
        preds: list[float],
        primary: dict[str, float],
    ) -> None:
        """Log a mirrored call's answer beside the primary's, on a line of its own."""
        record = {
            "event": "shadow",
            **self._comparison(name, version, preds, primary),
            "primary_preds": primary,
            "shadow_preds": dict(zip(primary, preds, strict=True)),
        }
        logger.info(
            "shadow %s v%s answered %s",
            name,
            version,
            request_id,
            extra={"ray_serve_extra_fields": record},
        )
