"""The prediction cache: size bound, TTL, per-version invalidation, counters."""

from __future__ import annotations

import datetime as dt

from ray_app.serving.cache import CacheKey, PredictionCache

DAY = dt.date(2012, 3, 1)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def key(ticker: str, version: int = 1, model: str = "m") -> CacheKey:
    return CacheKey(model, version, ticker, DAY)


def test_entries_expire_after_the_ttl() -> None:
    clock = Clock()
    cache = PredictionCache(max_size=10, ttl_s=5.0, clock=clock)
    cache.put(key("AAPL"), 0.01)
    clock.now = 4.9
    assert cache.get(key("AAPL")) == 0.01
    clock.now = 5.0
    assert cache.get(key("AAPL")) is None
    assert (cache.stats.hits, cache.stats.misses, cache.stats.expirations) == (1, 1, 1)
    assert len(cache) == 0


def test_the_least_recently_used_entry_goes_first() -> None:
    cache = PredictionCache(max_size=2, ttl_s=60.0, clock=Clock())
    cache.put(key("AAPL"), 1.0)
    cache.put(key("MSFT"), 2.0)
    assert cache.get(key("AAPL")) == 1.0  # AAPL is now the most recent
    cache.put(key("IBM"), 3.0)
    assert cache.get(key("MSFT")) is None
    assert cache.get(key("AAPL")) == 1.0 and cache.get(key("IBM")) == 3.0
    assert cache.stats.evictions == 1 and len(cache) == 2


def test_a_model_version_is_dropped_alone() -> None:
    cache = PredictionCache(max_size=10, ttl_s=60.0, clock=Clock())
    for ticker in ("AAPL", "MSFT"):
        cache.put(key(ticker, 1), 1.0)
        cache.put(key(ticker, 2), 2.0)
    cache.put(key("AAPL", 1, model="other"), 9.0)
    assert cache.invalidate("m", 1) == 2
    assert cache.get(key("AAPL", 1)) is None
    assert cache.get(key("AAPL", 2)) == 2.0
    assert cache.get(key("AAPL", 1, model="other")) == 9.0
    cache.clear()
    assert len(cache) == 0 and cache.stats.invalidations == 2 + 3


def test_size_zero_turns_it_off() -> None:
    cache = PredictionCache(max_size=0, ttl_s=60.0)
    cache.put(key("AAPL"), 1.0)
    assert cache.get(key("AAPL")) is None and len(cache) == 0
