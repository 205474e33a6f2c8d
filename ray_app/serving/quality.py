"""Gauges of what the daily jobs recorded: drift, the A/B evidence and the pipeline's last run.

Those jobs are Ray jobs that end (on Kubernetes their cluster is deleted), so they leave
nothing to scrape; they write tables under the data root (``ray_app.data.drift_table``,
``ray_app.data.ab_evidence``, ``ray_app.data.pipeline_runs``) and every ingress replica
reads them every ``read_every_s`` and exports them. Ray drops a gauge series that is not set
again for a while, so the values read are set again every ``set_every_s``; a value the
newest table no longer holds goes away.

Exported (Ray adds the ``ray_`` prefix, and Serve the deployment and replica tags):

- ``ray_app_drift_psi{variant, feature}``, ``ray_app_drift_ks{variant, feature}``: the
  newest day's drift of each served feature against the model's training window;
- ``ray_app_prediction_drift_psi{variant}``: the same for the predicted returns;
- ``ray_app_drift_threshold{statistic}`` (``psi``, ``ks``, ``prediction_psi``): the settings'
  thresholds the drift step applied, which the alert rules compare against;
- ``ray_app_ab_rank_ic_diff{variant, source}``, ``ray_app_ab_rank_ic_diff_lower``,
  ``ray_app_ab_rank_ic_diff_upper``: each challenger's paired rank-IC difference with the
  baseline variant and its bootstrap interval, on every ticker-day (``source="precomputed"``)
  and on served traffic (``source="served"``), over the daily step's window;
- ``ray_app_pipeline_last_run_timestamp_seconds``,
  ``ray_app_pipeline_last_success_timestamp_seconds``, ``ray_app_pipeline_last_run_failed``
  (1 when the last run failed).
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any

from ray.serve import metrics

from ray_app.core.storage import DataRoot
from ray_app.data.ab_evidence import read_evidence
from ray_app.data.drift_table import FEATURE, PREDICTION, read_drift
from ray_app.data.pipeline_runs import read_run_record

logger = logging.getLogger("ray.serve")
READ_EVERY_S = 60.0
SET_EVERY_S = 5.0
# Ray annotates tag_keys as a 1-tuple, though any tuple works.
VARIANT_FEATURE: Any = ("variant", "feature")
VARIANT_SOURCE: Any = ("variant", "source")
AB_GAUGES = {  # reading -> (column, gauge name, what it is)
    "ab_diff": ("rank_ic_diff", "app_ab_rank_ic_diff", "Paired rank-IC difference"),
    "ab_low": ("rank_ic_diff_low", "app_ab_rank_ic_diff_lower", "Lower bound of the interval"),
    "ab_high": ("rank_ic_diff_high", "app_ab_rank_ic_diff_upper", "Upper bound of the interval"),
}


@dataclass(frozen=True)
class Reading:
    """One value to export: the gauge's name, the value and its tags."""

    gauge: str
    value: float
    tags: dict[str, str]


def read_quality(root: DataRoot) -> list[Reading]:
    """The values the daily jobs' tables hold now (blocking I/O: call it in a thread)."""
    return [*_drift(root), *_ab(root), *_pipeline(root)]


def _drift(root: DataRoot) -> list[Reading]:
    table = read_drift(root)
    if table is None or table.empty:
        return []
    found = []
    for row in table.to_dict("records"):
        variant = str(row["variant"])
        if row["kind"] == FEATURE:
            tags = {"variant": variant, "feature": str(row["name"])}
            found += [Reading("psi", row["psi"], tags), Reading("ks", row["ks"], tags)]
        elif row["kind"] == PREDICTION:
            found.append(Reading("prediction_psi", row["psi"], {"variant": variant}))
    features = table[table["kind"] == FEATURE]
    predictions = table[table["kind"] == PREDICTION]
    for statistic, column, rows in (
        ("psi", "psi_threshold", features),
        ("ks", "ks_threshold", features),
        ("prediction_psi", "psi_threshold", predictions),
    ):
        if len(rows):
            found.append(Reading("threshold", rows[column].max(), {"statistic": statistic}))
    return found


def _ab(root: DataRoot) -> list[Reading]:
    table = read_evidence(root)
    if table is None:
        return []
    return [
        Reading(gauge, row[column], {"variant": str(row["variant"]), "source": str(row["source"])})
        for row in table.to_dict("records")
        for gauge, (column, _, _) in AB_GAUGES.items()
    ]


def _pipeline(root: DataRoot) -> list[Reading]:
    record = read_run_record(root)
    if record is None:
        return []
    found = [
        Reading("last_run", record.last_run_at.timestamp(), {}),
        Reading("failed", 0.0 if record.last_run_ok else 1.0, {}),
    ]
    if record.last_success_at is not None:
        found.append(Reading("last_success", record.last_success_at.timestamp(), {}))
    return found


class QualityGauges:
    """Reads the daily jobs' tables and keeps their values exported."""

    def __init__(
        self,
        root: DataRoot,
        read_every_s: float = READ_EVERY_S,
        set_every_s: float = SET_EVERY_S,
    ) -> None:
        self.root = root
        self.read_every_s = read_every_s
        self.set_every_s = set_every_s
        self.readings: list[Reading] = []
        self._task: asyncio.Task[None] | None = None
        self._gauges: dict[str, Any] = {
            "psi": metrics.Gauge(
                "app_drift_psi",
                description="PSI of a served feature against the model's training window",
                tag_keys=VARIANT_FEATURE,
            ),
            "ks": metrics.Gauge(
                "app_drift_ks",
                description="Kolmogorov-Smirnov statistic of a served feature against the "
                "model's training window",
                tag_keys=VARIANT_FEATURE,
            ),
            "prediction_psi": metrics.Gauge(
                "app_prediction_drift_psi",
                description="PSI of the served predictions against the model's predictions "
                "over its training window",
                tag_keys=("variant",),
            ),
            "threshold": metrics.Gauge(
                "app_drift_threshold",
                description="Drift threshold of the settings (psi, ks, prediction_psi)",
                tag_keys=("statistic",),
            ),
            **{
                gauge: metrics.Gauge(
                    name,
                    description=f"{what} of a challenger minus the baseline variant (A/B "
                    "evidence of the daily step; source: precomputed or served)",
                    tag_keys=VARIANT_SOURCE,
                )
                for gauge, (_, name, what) in AB_GAUGES.items()
            },
            "last_run": metrics.Gauge(
                "app_pipeline_last_run_timestamp_seconds",
                description="Unix time the daily pipeline last ended",
            ),
            "last_success": metrics.Gauge(
                "app_pipeline_last_success_timestamp_seconds",
                description="Unix time the daily pipeline last ended without a failed step",
            ),
            "failed": metrics.Gauge(
                "app_pipeline_last_run_failed",
                description="1 when the daily pipeline's last run failed, else 0",
            ),
        }

    def export(self) -> None:
        """Set every value read (NaN: not measured, so not exported)."""
        for reading in self.readings:
            if math.isfinite(reading.value):
                self._gauges[reading.gauge].set(float(reading.value), reading.tags)

    def start(self) -> None:
        """Keep reading and exporting in the running event loop (once per replica)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        read_at = -math.inf
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() - read_at >= self.read_every_s:
                read_at = loop.time()
                try:
                    self.readings = await asyncio.to_thread(read_quality, self.root)
                except Exception as exc:  # a table being rewritten is read next time
                    logger.warning("monitoring tables not read: %s", repr(exc))
            self.export()
            await asyncio.sleep(self.set_every_s)
