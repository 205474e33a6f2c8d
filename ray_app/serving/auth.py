"""Who may call the API: API keys with roles (``ray_app.core.api_keys``) and a per-key rate
limit counted in Redis, so that it holds across every ingress replica.

Keys are matched in memory; the secret is read again in a thread every second (the secrets
backend itself reads at most every ``secrets.refresh_s``), so a rotation reaches a running
replica without a request ever waiting for Vault. A failed re-read keeps the keys it had and
logs why: a Vault outage neither locks everyone out nor crashes the ingress.

The rate limit is a fixed window per key. A request is admitted or refused from memory: the
window's count in Redis as of the last sync, plus what this replica admitted since. Every
``SYNC_S`` a background task adds this replica's admissions to Redis (``INCRBY``, one
pipeline for every key) and reads back the total of all replicas. One Redis call per request
halved the requests a replica could answer on 2 cores (and slowed a restarting replica under
load past its 10 s bound); batched, Redis costs nothing measurable. The price: between two
syncs each replica admits up to what the window has left, so a key can exceed its limit by
what the other replicas admit in one ``SYNC_S``. While Redis cannot be reached, each replica
counts alone (a key may then get its limit from every replica), a warning is logged at most
once a minute and ``app_serve_auth_refusals{reason="limiter_down"}`` counts failed syncs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, Protocol

from ray_app.core.api_keys import ApiKeys, Caller, Role
from ray_app.core.secrets import REDIS_PASSWORD, open_secrets, redact_url
from ray_app.core.settings import Settings
from ray_app.serving.args import AuthSpec, RateLimitSpec

logger = logging.getLogger("ray.serve")
RELOAD_EVERY_S = 1.0
SYNC_S = 0.05
LIMITER_TIMEOUT_S = 0.25
WARN_EVERY_S = 60.0
# What an insecure API treats every caller as.
ANYONE = Caller("insecure", Role.admin)


class RefusalMetrics(Protocol):
    def auth_refused(self, reason: str) -> None: ...


class RateLimiter:
    """At most ``spec.requests`` per key in each ``spec.window_s`` window, counted in Redis."""

    def __init__(self, spec: RateLimitSpec, settings: Settings, metrics: RefusalMetrics) -> None:
        self.spec = spec
        self.url = settings.api.rate_limit_redis_url
        self._password = open_secrets(settings).optional(REDIS_PASSWORD)
        self._metrics = metrics
        self._redis: Any = None
        self._window = -1
        self._synced: dict[str, int] = {}  # the window's count, all replicas, at the last sync
        self._pending: dict[str, int] = {}  # admitted here since the last sync
        self._warned_at = -math.inf

    def limit(self, caller: Caller) -> int:
        """Requests ``caller`` may make in one window: its key's own quota, else the API's."""
        return caller.rate_limit or self.spec.requests

    def retry_after(self, caller: Caller) -> int | None:
        """None when ``caller`` may go on (and it is counted); else the seconds until its
        window ends. No I/O: the request never waits for Redis."""
        now = time.time()
        window = int(now // self.spec.window_s)
        if window != self._window:
            self._window, self._synced, self._pending = window, {}, {}
        key = caller.key_id
        used = self._synced.get(key, 0) + self._pending.get(key, 0)
        if used >= self.limit(caller):
            return max(1, math.ceil((window + 1) * self.spec.window_s - now))
        self._pending[key] = self._pending.get(key, 0) + 1
        return None

    async def sync_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_S)
            await self.sync()

    async def sync(self) -> None:
        """Add this replica's admissions to Redis and learn every replica's total."""
        window, pending = self._window, self._pending
        if not pending:
            return
        self._pending = {}
        try:
            async with self._client().pipeline(transaction=False) as pipe:
                for key, count in pending.items():
                    pipe.incrby(self._name(key, window), count)
                    pipe.expire(self._name(key, window), self.spec.window_s + 1)
                totals = (await pipe.execute())[::2]
        except Exception as exc:  # redis' errors, OSError, timeouts: count alone meanwhile
            totals = [self._synced.get(key, 0) + count for key, count in pending.items()]
            self._down(exc)
        if window == self._window:  # a sync that straddled a window's end is forgotten
            self._synced.update(zip(pending, (int(t) for t in totals), strict=True))

    def _name(self, key_id: str, window: int) -> str:
        return f"ray-app:rate:{key_id}:{window}"

    def _client(self) -> Any:
        """Made on first use, inside the replica's event loop that then uses it."""
        if self._redis is None:
            import redis.asyncio

            password = self._password.get_secret_value() if self._password else None
            self._redis = redis.asyncio.Redis.from_url(
                self.url,
                password=password,
                socket_timeout=LIMITER_TIMEOUT_S,
                socket_connect_timeout=LIMITER_TIMEOUT_S,
            )
        return self._redis

    def _down(self, exc: Exception) -> None:
        self._metrics.auth_refused("limiter_down")
        if time.monotonic() - self._warned_at >= WARN_EVERY_S:
            self._warned_at = time.monotonic()
            logger.warning(
                "rate limit counted by this replica alone: Redis at %s: %s",
                redact_url(self.url),
                type(exc).__name__,
            )


class Authorizer:
    """The keys and the limit of one ingress replica."""

    def __init__(self, spec: AuthSpec, settings: Settings, metrics: RefusalMetrics) -> None:
        self.spec = spec
        self.settings = settings
        self.insecure = spec.mode == "insecure"
        self.metrics = metrics
        self.keys = None if self.insecure else ApiKeys(open_secrets(settings))
        self.limiter = (
            RateLimiter(spec.rate_limit, settings, metrics)
            if spec.rate_limit is not None and not self.insecure
            else None
        )
        self._tasks: list[asyncio.Task[None]] = []
        if self.insecure:
            logger.warning("the prediction API is insecure (auth.mode: insecure): no key is asked")

    def start(self) -> None:
        """Re-read the keys every second and sync the rate limit from now on (idempotent)."""
        if any(not task.done() for task in self._tasks):
            return
        jobs = [self._reload_forever(self.keys)] if self.keys is not None else []
        jobs += [self.limiter.sync_forever()] if self.limiter is not None else []
        self._tasks = [asyncio.create_task(job) for job in jobs]

    def caller(self, presented: str | None) -> Caller | None:
        """Who ``presented`` is; ``ANYONE`` when the API is insecure."""
        if self.keys is None:
            return ANYONE
        return None if presented is None else self.keys.match(presented)

    async def _reload_forever(self, keys: ApiKeys) -> None:
        warned_at = -math.inf
        while True:
            await asyncio.sleep(RELOAD_EVERY_S)
            try:
                await asyncio.to_thread(keys.reload)
            except Exception as exc:  # keep the keys read last; the message names no value
                if time.monotonic() - warned_at >= WARN_EVERY_S:
                    warned_at = time.monotonic()
                    logger.warning("API keys not re-read, the last ones stay: %s", exc)
