"""Metric names in PromQL expressions, and the metric names Ray really exports."""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

# The platform's own metrics (documented in monitoring/README.md); Ray prefixes them "ray_".
APP_METRICS = frozenset(
    {
        # the ingress (ray_app/serving/metrics.py)
        "ray_app_data_latest_bar_timestamp_seconds",
        "ray_app_serve_requests_total",
        "ray_app_serve_shadow_abs_diff_bucket",
        # the daily jobs' tables, exported by the ingress (ray_app/serving/quality.py)
        "ray_app_drift_psi",
        "ray_app_drift_ks",
        "ray_app_prediction_drift_psi",
        "ray_app_drift_threshold",
        "ray_app_pipeline_last_run_timestamp_seconds",
        "ray_app_pipeline_last_success_timestamp_seconds",
        "ray_app_pipeline_last_run_failed",
        # the monitor step's live metrics and the prediction log's counters
        "ray_app_live_directional_accuracy",
        "ray_app_live_ic",
        "ray_app_live_rank_ic",
        "ray_app_live_mae",
        "ray_app_live_pending_days",
        "ray_app_prediction_log_written_total",
        "ray_app_prediction_log_dropped_total",
        # the A/B report's paired rank-IC difference against the champion, with its interval
        "ray_app_ab_rank_ic_diff",
        "ray_app_ab_rank_ic_diff_lower",
        "ray_app_ab_rank_ic_diff_upper",
    }
)
# Series Prometheus itself writes for every scrape target.
PROMETHEUS_METRICS = frozenset({"up"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_TEMPLATE_VARS = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENT = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan", "atan2", "start", "end"}
)


def metric_names(expr: str) -> set[str]:
    """Names of the metrics an expression selects (not functions, labels or keywords)."""
    text = _STRING.sub(" ", expr)
    text = _TEMPLATE_VARS.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {m for m in _IDENT.findall(text) if m.lower() not in _KEYWORDS}


@functools.cache
def ray_exported_metrics() -> frozenset[str]:
    """Metric names that Ray's own Grafana panels query, read from the installed ``ray``.

    Ray's dashboards ship with the package (``ray/dashboard/modules/metrics/dashboards``) and
    query exactly what this Ray version exports, so a metric renamed or dropped by a Ray upgrade
    leaves this set. Importing ray is not needed (find_spec only locates the package).
    """
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the ray package is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    panels = root / "dashboard" / "modules" / "metrics" / "dashboards"
    names: set[str] = set()
    for path in panels.glob("*_panels.py"):
        names |= set(re.findall(r"\b((?:ray|autoscaler)_[a-z0-9_]*[a-z0-9])\b", path.read_text()))
    if not names:
        raise AssertionError(f"no metric names found under {panels}")
    return frozenset(names)


def known_metrics() -> frozenset[str]:
    return ray_exported_metrics() | APP_METRICS | PROMETHEUS_METRICS
