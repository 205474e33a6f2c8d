"""Routing decisions: the sticky weighted A/B split and the shadow's admission; pure Python.

A key (the client id, else the request's tickers) hashes to a point in [0, 1); the variants,
in their configured order, own consecutive bands of that interval as wide as their weights.
While the weights stay the same a key always lands on the same variant, on every replica and
after restarts (the hash is BLAKE2b, not Python's salted ``hash``). Moving weight from the
first variant to a later one moves only the keys in the band that changes hands: raising the
challenger from 10% to 20% keeps every client that already saw it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

_SCALE = float(1 << 64)


def bucket(key: str) -> float:
    """A uniform point in [0, 1) determined by ``key`` alone."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def choose(key: str, weights: Sequence[tuple[str, float]]) -> str:
    """The variant whose band holds ``key``'s point; weights are in routing order, sum to 1."""
    point = bucket(key)
    edge = 0.0
    chosen = None
    for name, weight in weights:
        if weight <= 0:
            continue
        chosen = name
        edge += weight
        if point < edge:
            return name
    if chosen is None:
        raise ValueError("no variant has a positive weight")
    return chosen  # rounding left the point just above the last edge


def routing_key(client_id: str | None, tickers: Sequence[str]) -> str:
    """The client id when the caller names itself, else the request's ticker set: the same
    ticker (or the same basket) keeps its variant."""
    if client_id:
        return f"client:{client_id}"
    return "tickers:" + ",".join(sorted(tickers))


@dataclass
class ShadowGate:
    """Admits a ``fraction`` of requests to the shadow while fewer than ``max_in_flight``
    mirrored requests are pending; the rest are dropped and counted, never queued. A request
    the shadow's precomputed predictions answer needs no call and no slot."""

    fraction: float
    max_in_flight: int
    rng: random.Random = field(default_factory=random.Random)
    in_flight: int = 0
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("precomputed", "sent", "dropped", "ok", "error", "timeout"), 0
        )
    )

    def admit(self, precomputed: bool = False) -> str:
        """``sent`` (mirror it, then ``finish``), ``dropped`` (at the bound), ``skipped``, or
        ``precomputed`` when the caller has the shadow's answer at hand."""
        if self.rng.random() >= self.fraction:
            return "skipped"
        if precomputed:
            self.counts["precomputed"] += 1
            return "precomputed"
        if self.in_flight >= self.max_in_flight:
            self.counts["dropped"] += 1
            return "dropped"
        self.in_flight += 1
        self.counts["sent"] += 1
        return "sent"

    def finish(self, outcome: str) -> None:
        """Record how a mirrored request ended (ok, error or timeout) and free its slot."""
        self.in_flight -= 1
        self.counts[outcome] += 1
