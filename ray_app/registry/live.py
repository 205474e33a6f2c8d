"""Live metrics onto a model version's MLflow run, beside its backtest.

The monitor scores served predictions day by day; logging each day as a step (the day's
ordinal, with the day's timestamp) on the run that produced the version lets the MLflow UI
plot live quality next to the walk-forward and holdout figures of the same run.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow.entities import Metric

from ray_app.core.settings import Settings
from ray_app.registry.versions import RegistryError, _client, _version

BATCH = 1000  # MLflow's limit of metrics per log_batch call


@dataclass(frozen=True)
class MetricPoint:
    key: str
    value: float
    timestamp_ms: int
    step: int


def version_run(settings: Settings, model_name: str, version: str) -> str | None:
    """The run that produced ``model_name`` version ``version``; None for a version the
    registry does not know (a fake model in tests, or one deleted since)."""
    client = _client(settings)
    try:
        run_id = _version(client, model_name, version).run_id
    except RegistryError:
        return None
    return str(run_id) if run_id else None


def log_points(settings: Settings, run_id: str, points: list[MetricPoint]) -> None:
    """Append ``points`` to the run's metric histories, in batches MLflow accepts."""
    client: mlflow.MlflowClient = _client(settings)
    metrics = [Metric(p.key, p.value, p.timestamp_ms, p.step) for p in points]
    for start in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + BATCH])
