"""Who may call the API: API keys with roles (``ray_app.core.api_keys``) and a per-key rate
limit counted in Redis, so that it holds across every ingress replica.

Keys are matched in memory; the secret is read again in a thread every second (the secrets
backend itself reads at most every ``secrets.refresh_s``), so a rotation reaches a running
replica without a request ever waiting for Vault. A failed re-read keeps the keys it had and
logs why: a Vault outage neither locks everyone out nor crashes the ingress.

The rate limit is a fixed window per key in Redis (``INCR`` and ``EXPIRE`` in one round
trip): global, whatever replica a client's connection lands on. While Redis cannot be reached
requests pass (availability first), a warning is logged at most once a minute, and
``app_serve_auth_refusals{reason="limiter_down"}`` counts them; Redis is asked again after
``LIMITER_PAUSE_S``.
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
LIMITER_PAUSE_S = 5.0
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
        self._paused_until = 0.0
        self._warned_at = -math.inf

    def limit(self, caller: Caller) -> int:
        """Requests ``caller`` may make in one window: its key's own quota, else the API's."""
        return caller.rate_limit or self.spec.requests

    async def retry_after(self, caller: Caller) -> int | None:
        """None when ``caller`` may go on; else the seconds until its window ends."""
        now = time.time()
        if time.monotonic() < self._paused_until:
            self._metrics.auth_refused("limiter_down")
            return None
        window = int(now // self.spec.window_s)
        name = f"ray-app:rate:{caller.key_id}:{window}"
        try:
            async with self._client().pipeline(transaction=False) as pipe:
                pipe.incr(name)
                pipe.expire(name, self.spec.window_s + 1)
                count, _ = await pipe.execute()
        except Exception as exc:  # redis' errors, OSError, timeouts: let the request pass
            self._down(exc)
            return None
        if int(count) <= self.limit(caller):
            return None
        return max(1, math.ceil((window + 1) * self.spec.window_s - now))

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
        self._paused_until = time.monotonic() + LIMITER_PAUSE_S
        self._metrics.auth_refused("limiter_down")
        if time.monotonic() - self._warned_at >= WARN_EVERY_S:
            self._warned_at = time.monotonic()
            logger.warning(
                "rate limit off for %.0f s: Redis at %s: %s",
                LIMITER_PAUSE_S,
                redact_url(self.url),
                type(exc).__name__,
            )


class Authorizer:
    """The keys and the limit of one ingress replica."""

    def __init__(self, spec: AuthSpec, settings: Settings, metrics: RefusalMetrics) -> None:
        self.spec = spec
        self.insecure = spec.mode == "insecure"
        self.metrics = metrics
        self.keys = None if self.insecure else ApiKeys(open_secrets(settings))
        self.limiter = (
            RateLimiter(spec.rate_limit, settings, metrics)
            if spec.rate_limit is not None and not self.insecure
            else None
        )
        self._reloading: asyncio.Task[None] | None = None
        if self.insecure:
            logger.warning("the prediction API is insecure (auth.mode: insecure): no key is asked")

    def start(self) -> None:
        """Re-read the keys every second from now on (idempotent)."""
        if self.keys is not None and (self._reloading is None or self._reloading.done()):
            self._reloading = asyncio.create_task(self._reload_forever(self.keys))

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
