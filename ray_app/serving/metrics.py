"""Prometheus metrics of the serving graph, through Ray Serve's metrics API.

Ray exports application metrics with a ``ray_`` prefix and adds the ``deployment``,
``replica`` and ``application`` tags, so ``app_serve_requests`` is scraped as
``ray_app_serve_requests_total{variant=..., status=..., deployment="Ingress", ...}``.
Construct these only inside a replica (they need a connected Ray worker).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from ray.serve import metrics

from ray_app.data.live_metrics import METRICS, LiveGauge

LATENCY_MS = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0]
# Absolute differences of predicted daily log returns: 0.1 bp to 10%.
ABS_DIFF = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]


def _keys(*names: str) -> Any:
    """Tag keys; Ray annotates them as a 1-tuple, though any tuple works."""
    return names


class IngressMetrics:
    """What the ingress counts: requests, errors, latency, cache lookups, the shadow, and how
    fresh the features it serves are."""

    def __init__(self) -> None:
        self._requests = metrics.Counter(
            "app_serve_requests",
            description="Prediction API requests by variant and HTTP status",
            tag_keys=_keys("variant", "status"),
        )
        self._errors = metrics.Counter(
            "app_serve_errors",
            description="Prediction API requests answered with a 4xx or 5xx",
            tag_keys=_keys("variant", "status"),
        )
        self._latency = metrics.Histogram(
            "app_serve_latency_ms",
            description="Time from request to response inside the ingress, in ms",
            boundaries=LATENCY_MS,
            tag_keys=_keys("variant"),
        )
        self._cache = metrics.Counter(
            "app_serve_cache_lookups",
            description="Predictions by where they came from (precomputed, hit, miss)",
            tag_keys=_keys("result"),
        )
        self._shadow = metrics.Counter(
            "app_serve_shadow_requests",
            description="Mirrored requests by outcome (precomputed, sent, dropped, ok, error, "
            "timeout)",
            tag_keys=_keys("variant", "outcome"),
        )
        self._latest_bar = metrics.Gauge(
            "app_data_latest_bar_timestamp_seconds",
            description="Unix time (UTC midnight) of the newest daily bar in the served features",
        )
        self._diff = metrics.Histogram(
            "app_serve_shadow_abs_diff",
            description="|shadow - primary| predicted log return, per ticker",
            boundaries=ABS_DIFF,
            tag_keys=_keys("variant"),
        )

        self._refused = metrics.Counter(
            "app_serve_auth_refusals",
            description="Requests refused by auth (unauthenticated: 401, forbidden: 403, "
            "rate_limited: 429), and rate-limit syncs that failed (limiter_down: Redis "
            "unreachable, the replica counts alone)",
            tag_keys=_keys("reason"),
        )
        self._log_written = metrics.Counter(
            "app_prediction_log_written",
            description="Prediction rows written to the prediction log",
        )
        self._log_dropped = metrics.Counter(
            "app_prediction_log_dropped",
            description="Prediction rows the log dropped (full: buffer at its bound; "
            "write_error: a flush failed)",
            tag_keys=_keys("reason"),
        )
        self._live = {
            name: metrics.Gauge(
                f"app_live_{name}",
                description=f"Live {name.replace('_', ' ')} of the served predictions against "
                "realised next-day returns (the monitor's newest scored day)",
                tag_keys=_keys("variant", "window"),
            )
            for name in METRICS
        }
        self._pending = metrics.Gauge(
            "app_live_pending_days",
            description="Days of served predictions whose outcome is not known yet",
            tag_keys=_keys("variant"),
        )

    def request(self, variant: str, status: int, latency_ms: float) -> None:
        tags = {"variant": variant, "status": str(status)}
        self._requests.inc(1, tags)
        if status >= 400:
            self._errors.inc(1, tags)
        self._latency.observe(latency_ms, {"variant": variant})

    def cache(self, hits: int, misses: int, precomputed: int = 0) -> None:
        if precomputed:
            self._cache.inc(precomputed, {"result": "precomputed"})
        if hits:
            self._cache.inc(hits, {"result": "hit"})
        if misses:
            self._cache.inc(misses, {"result": "miss"})

    def latest_bar(self, day: dt.date) -> None:
        midnight = dt.datetime.combine(day, dt.time(), dt.timezone.utc)
        self._latest_bar.set(midnight.timestamp())

    def shadow(self, variant: str, outcome: str, count: int = 1) -> None:
        self._shadow.inc(count, {"variant": variant, "outcome": outcome})

    def shadow_diff(self, variant: str, diffs: list[float]) -> None:
        for diff in diffs:
            self._diff.observe(diff, {"variant": variant})

    def auth_refused(self, reason: str) -> None:
        self._refused.inc(tags={"reason": reason})

    def log_written(self, rows: int) -> None:
        self._log_written.inc(rows)

    def log_dropped(self, rows: int, reason: str) -> None:
        self._log_dropped.inc(rows, {"reason": reason})

    def live(self, gauges: list[LiveGauge]) -> None:
        """Set the live-quality gauges (NaN metrics, from days too thin to score, are left
        unset rather than exported as a value)."""
        for gauge in gauges:
            self._pending.set(gauge.pending_days, {"variant": gauge.variant})
            tags = {"variant": gauge.variant, "window": gauge.window}
            for name, value in gauge.values.items():
                if math.isfinite(value):
                    self._live[name].set(value, tags)


class VariantMetrics:
    """What a variant replica reports about its model.

    ``app_serve_model_info{variant, model, version}`` is 1 for the version a variant replica
    serves and 0 for the one it replaced, so a dashboard shows rollouts as steps.
    ``app_serve_model_load_failures{variant}`` counts loads that failed: the variant keeps
    serving its old model (or none) and retries with backoff, so while a reference does not
    load the counter keeps rising, and ``increase(...[10m]) > 0`` finds it."""

    def __init__(self) -> None:
        self._gauge = metrics.Gauge(
            "app_serve_model_info",
            description="1 for the model version a variant serves",
            tag_keys=_keys("variant", "model", "version"),
        )
        self._failures = metrics.Counter(
            "app_serve_model_load_failures",
            description="Model loads that failed (the variant kept what it served)",
            tag_keys=_keys("variant"),
        )

    def swap(self, variant: str, new: tuple[str, int], old: tuple[str, int] | None) -> None:
        if old is not None and old != new:
            self._gauge.set(0, {"variant": variant, "model": old[0], "version": str(old[1])})
        self._gauge.set(1, {"variant": variant, "model": new[0], "version": str(new[1])})

    def load_failed(self, variant: str) -> None:
        self._failures.inc(1, {"variant": variant})
