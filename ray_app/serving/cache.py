"""The prediction cache of the ingress: bounded, expiring, dropped per model version.

A daily model's prediction for a ticker changes only when the feature row or the model does,
so the key is (model name, model version, ticker, feature date): two ``as_of`` dates that
resolve to the same trading day share an entry, and a new model version never reads an old
version's entries. The TTL bounds how long a prediction outlives a feature set rebuilt in place.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple


class CacheKey(NamedTuple):
    model: str
    version: int
    ticker: str
    feature_date: dt.date


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    expirations: int = 0
    invalidations: int = 0


@dataclass
class PredictionCache:
    """Least-recently-used entries up to ``max_size``, each served for ``ttl_s`` seconds."""

    max_size: int
    ttl_s: float
    clock: Callable[[], float] = time.monotonic
    stats: CacheStats = field(default_factory=CacheStats)
    _entries: OrderedDict[CacheKey, tuple[float, float]] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> float | None:
        """The cached prediction, or None (counted as a miss) when absent or expired."""
        found = self._entries.get(key)
        if found is not None and found[0] <= self.clock():
            del self._entries[key]
            self.stats.expirations += 1
            found = None
        if found is None:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return found[1]

    def put(self, key: CacheKey, value: float) -> None:
        if self.max_size == 0:
            return
        self._entries[key] = (self.clock() + self.ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)
            self.stats.evictions += 1

    def invalidate(self, model: str, version: int) -> int:
        """Drop every entry of one model version; how many went."""
        stale = [k for k in self._entries if k.model == model and k.version == version]
        for key in stale:
            del self._entries[key]
        self.stats.invalidations += len(stale)
        return len(stale)

    def clear(self) -> None:
        """Drop everything: the feature rows the keys point at have changed."""
        self.stats.invalidations += len(self._entries)
        self._entries.clear()
