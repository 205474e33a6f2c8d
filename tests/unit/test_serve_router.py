"""Sticky weighted routing and the shadow's admission: pure functions, no Ray."""

from __future__ import annotations

import random

import pytest
from scipy.stats import binom

from ray_app.serving.router import ShadowGate, bucket, choose, routing_key

SPLIT = [("champion", 0.9), ("challenger", 0.1)]


def test_a_90_10_split_over_5000_keys_lies_in_the_binomial_interval() -> None:
    n = 5000
    hits = sum(choose(f"client:{i}", SPLIT) == "challenger" for i in range(n))
    low, high = binom.interval(0.999, n, 0.1)
    assert low <= hits <= high, f"{hits} of {n} on the challenger, expected {low}..{high}"


def test_the_same_key_always_gets_the_same_variant() -> None:
    keys = [routing_key(f"c{i}", ["AAPL"]) for i in range(200)]
    first = [choose(k, SPLIT) for k in keys]
    assert [choose(k, SPLIT) for k in reversed(keys)] == first[::-1]
    assert len(set(first)) == 2


def test_raising_the_challenger_keeps_every_key_it_already_had() -> None:
    keys = [f"client:{i}" for i in range(2000)]
    at_10 = {k for k in keys if choose(k, SPLIT) == "challenger"}
    at_20 = {k for k in keys if choose(k, [("champion", 0.8), ("challenger", 0.2)]) == "challenger"}
    assert at_10 < at_20


def test_zero_weight_variants_never_get_traffic() -> None:
    weights = [("champion", 1.0), ("challenger", 0.0)]
    assert {choose(f"k{i}", weights) for i in range(500)} == {"champion"}
    weights = [("champion", 0.0), ("challenger", 1.0)]
    assert {choose(f"k{i}", weights) for i in range(500)} == {"challenger"}
    with pytest.raises(ValueError, match="positive weight"):
        choose("k", [("champion", 0.0)])


def test_buckets_are_uniform_and_stable() -> None:
    points = [bucket(f"k{i}") for i in range(4000)]
    assert all(0.0 <= p < 1.0 for p in points)
    assert abs(sum(points) / len(points) - 0.5) < 0.02
    assert bucket("AAPL") == bucket("AAPL")  # no per-process salt, unlike hash()


def test_routing_key_is_the_client_else_the_ticker_set() -> None:
    assert routing_key("alice", ["MSFT", "AAPL"]) == "client:alice"
    assert routing_key(None, ["MSFT", "AAPL"]) == routing_key(None, ["AAPL", "MSFT"])
    assert routing_key(None, ["AAPL"]) != routing_key(None, ["MSFT"])


def test_the_shadow_gate_samples_bounds_and_counts() -> None:
    gate = ShadowGate(fraction=0.25, max_in_flight=1000, rng=random.Random(0))
    admitted = [gate.admit() for _ in range(4000)]
    assert abs(admitted.count("sent") / 4000 - 0.25) < 0.03
    full = ShadowGate(fraction=1.0, max_in_flight=2)
    assert [full.admit() for _ in range(4)] == ["sent", "sent", "dropped", "dropped"]
    full.finish("timeout")
    assert full.admit() == "sent"
    assert full.admit(precomputed=True) == "precomputed"  # no call: needs no slot
    counts = {"precomputed": 1, "sent": 3, "dropped": 2, "ok": 0, "error": 0, "timeout": 1}
    assert full.counts == counts
    assert full.in_flight == 2
