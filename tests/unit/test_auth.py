"""The API's auth pieces without a Serve app: insecure mode, keys, and the rate limiter
shared by two replicas through Redis (the real one the suite runs beside) or counting alone."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import uuid
from pathlib import Path

import pytest

from ray_app.core.api_keys import Caller, Role, hash_api_key
from ray_app.core.settings import Settings
from ray_app.serving.args import AuthSpec, RateLimitSpec
from ray_app.serving.auth import ANYONE, Authorizer, RateLimiter


class Refusals:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def auth_refused(self, reason: str) -> None:
        self.reasons.append(reason)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed


def test_insecure_mode_checks_nobody_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        auth = Authorizer(AuthSpec(mode="insecure"), Settings(), Refusals())
    assert auth.caller(None) == ANYONE and auth.limiter is None
    assert "the prediction API is insecure" in caplog.text


def test_keys_mode_matches_keys_from_the_secret(tmp_path: Path) -> None:
    entries = {"desk": {"hash": hash_api_key("k" * 43), "role": "operator", "rate_limit": 7}}
    (tmp_path / "api_key_hashes").write_text(json.dumps(entries))
    settings = Settings(secrets={"backend": "file", "dir": str(tmp_path)})
    auth = Authorizer(AuthSpec(), settings, Refusals())
    assert auth.caller("k" * 43) == Caller("desk", Role.operator, 7)
    assert auth.caller(None) is None and auth.caller("k" * 42) is None
    assert auth.limiter is not None and auth.limiter.limit(Caller("desk", Role.operator, 7)) == 7
    assert auth.limiter.limit(Caller("x", Role.predict)) == 1000


def test_two_replicas_share_one_count_through_redis() -> None:
    """Each replica admits from memory and learns the others' admissions at its next sync
    (the real Redis the suite runs beside)."""
    spec = RateLimitSpec(requests=5, window_s=60)
    replicas = [RateLimiter(spec, Settings(), Refusals()) for _ in range(2)]
    caller = Caller(f"desk-{uuid.uuid4().hex}", Role.predict)
    a, b = replicas

    async def scenario() -> list[int | None]:
        first = [a.retry_after(caller) for _ in range(3)]
        await a.sync()
        second = [b.retry_after(caller)]  # b has not heard of a's three yet
        await b.sync()  # now it has: 4 in all
        third = [b.retry_after(caller), b.retry_after(caller)]
        await a.sync()
        return [*first, *second, *third, a.retry_after(caller)]

    got = asyncio.run(scenario())
    assert got[:5] == [None] * 5
    assert got[5] is not None and 1 <= got[5] <= 60  # the 6th: over the limit of 5
    assert got[6] is None  # a synced nothing new, so it still believes 3 were made


def test_without_redis_each_replica_counts_alone_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(api={"rate_limit_redis_url": f"redis://127.0.0.1:{closed_port()}/0"})
    refusals = Refusals()
    limiter = RateLimiter(RateLimitSpec(requests=2, window_s=60), settings, refusals)
    caller = Caller("desk", Role.predict)

    async def scenario() -> list[int | None]:
        admitted = [limiter.retry_after(caller), limiter.retry_after(caller)]
        await limiter.sync()
        await limiter.sync()  # nothing new: not even tried
        return [*admitted, limiter.retry_after(caller)]

    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        got = asyncio.run(scenario())
    assert got[:2] == [None, None] and got[2] is not None
    assert refusals.reasons == ["limiter_down"]
    assert "rate limit counted by this replica alone" in caplog.text
