"""The API's auth pieces without a Serve app: the insecure mode and the limiter's fail-open."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
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


def test_an_unreachable_redis_lets_requests_pass_and_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(api={"rate_limit_redis_url": f"redis://127.0.0.1:{closed_port()}/0"})
    refusals = Refusals()
    limiter = RateLimiter(RateLimitSpec(requests=1), settings, refusals)
    caller = Caller("desk", Role.predict)

    async def twice() -> list[int | None]:
        return [await limiter.retry_after(caller), await limiter.retry_after(caller)]

    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        assert asyncio.run(twice()) == [None, None]
    assert refusals.reasons == ["limiter_down", "limiter_down"]  # the second: paused, not asked
    assert caplog.text.count("rate limit off for 5 s") == 1
