"""The ingress deployment: HTTP in, one ``PredictionService`` per replica, handles out.

The FastAPI app is built inside the replica (``__serve_build_asgi_app__``), after the
constructor has read the arguments, so each deployment's schema states its own limits and no
app object is pickled with the deployment.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from ray_app.core.logs import redact_serve_logs
from ray_app.core.storage import DataRoot
from ray_app.data.feature_store import latest_feature_version
from ray_app.data.live_metrics import LiveGauge, latest_gauges, read_live_metrics
from ray_app.serving.api import make_api
from ray_app.serving.args import IngressConfig, ServeArgs
from ray_app.serving.auth import Authorizer
from ray_app.serving.features import FeatureTable
from ray_app.serving.metrics import IngressMetrics
from ray_app.serving.prediction_log import PredictionLog
from ray_app.serving.predictor import Job, Result, Scores, VariantInfo
from ray_app.serving.quality import QualityGauges
from ray_app.serving.service import FRESHNESS_EVERY_S, PredictionService, VariantClient

logger = logging.getLogger("ray.serve")


class HandleClient:
    """A variant reached through its ``DeploymentHandle``."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._predict = handle.options(method_name="predict")
        self._info = handle.options(method_name="info")
        self._scores = handle.options(method_name="scores")

    async def predict(self, job: Job) -> Result:
        return await self._predict.remote(job)

    async def predict_within(self, job: Job, timeout_s: float) -> Result:
        return await _within(self._predict.remote(job), timeout_s)  # type: ignore[arg-type]

    async def info(self, timeout_s: float) -> VariantInfo:
        return await _within(self._info.remote(), timeout_s)  # type: ignore[arg-type]

    async def scores(
        self, feature_version: str, tickers: list[str], timeout_s: float
    ) -> Scores | None:
        response = self._scores.remote(feature_version, tickers)
        return await _within(response, timeout_s)  # type: ignore[arg-type]


async def _within(response: DeploymentResponse[Any], timeout_s: float) -> Any:
    """The response, or TimeoutError after ``timeout_s`` with the request cancelled, so a dead
    or stuck replica holds no queue slot on the caller's side."""
    try:
        return await asyncio.wait_for(response, timeout_s)
    except TimeoutError:
        response.cancel()
        raise


@serve.deployment(max_ongoing_requests=256)
@serve.ingress()
class Ingress:
    """Routes, looks up features, caches, and calls the variant the route picks."""

    def __init__(self, args: ServeArgs, variants: dict[str, DeploymentHandle]) -> None:
        redact_serve_logs()
        clients: dict[str, VariantClient] = {n: HandleClient(h) for n, h in variants.items()}
        self.metrics = IngressMetrics()
        settings = args.settings()
        self.auth = Authorizer(args.auth, settings, self.metrics)
        self.root = DataRoot(settings.data_root)
        self.log = PredictionLog(self.root, args.prediction_log, self.metrics)
        self.service = PredictionService(
            args,
            clients,
            self.metrics,
            partial(FeatureTable.load, settings),
            partial(latest_feature_version, self.root),
            log=self.log,
        )
        self._live: asyncio.Task[None] | None = None
        # The daily jobs' drift and last run, exported from here: they end, this does not.
        self.quality = QualityGauges(self.root)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return make_api(self.service, self.metrics, self.auth, self.root)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        await self.service.reconfigure(IngressConfig.model_validate(config))
        self.log.start()
        self.quality.start()
        self.auth.start()
        if self._live is None or self._live.done():
            self._live = asyncio.create_task(self._export_live_metrics())

    async def _export_live_metrics(self) -> None:
        """Keep the ``app_live_*`` gauges set from the monitor's newest table: read every
        ``live_metrics_poll_s`` seconds, set again every few seconds (Ray exports a gauge only
        while it is set)."""
        gauges: list[LiveGauge] = []
        read_at = -float("inf")
        while True:
            if time.monotonic() - read_at >= self.service.args.live_metrics_poll_s:
                read_at = time.monotonic()
                try:
                    frame = await asyncio.to_thread(read_live_metrics, self.root)
                    gauges = latest_gauges(frame)
                except Exception as exc:  # the next poll tries again; serving goes on
                    logger.warning("live metrics not read: %s", repr(exc))
            self.metrics.live(gauges)
            await asyncio.sleep(FRESHNESS_EVERY_S)

    async def __del__(self) -> None:
        """Serve's graceful shutdown: write what the prediction log still holds."""
        await self.log.close()
