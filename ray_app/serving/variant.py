"""The variant deployment: serves one model version, batched, swapped in place on rollouts.

``reconfigure`` receives the variant's ``user_config`` (``VariantConfig``) when the replica
starts and whenever ``serve deploy`` changes it. A new model is loaded in a thread while the
old one keeps answering, then replaces it in one assignment: no request waits for a load or
sees a half-swapped model. A load that fails keeps the old model and is reported through
``info`` (and from there ``/v1/models`` and a reason code in ``/readyz``), counted in
``app_serve_model_load_failures`` and retried with backoff (1 s doubling to 60 s):
an unreachable registry heals by itself, and a variant that follows an alias not set yet (no
champion) starts anyway, says so rather than crash-looping, and loads it once it exists.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray import serve

from ray_app.core.logs import redact_serve_logs
from ray_app.core.secrets import redact_uris
from ray_app.core.storage import DataRoot
from ray_app.data.signals import ServedTable, point_variant, read_served_scores, write_scores
from ray_app.serving.args import ServeArgs, VariantConfig
from ray_app.serving.features import FeatureTable
from ray_app.serving.loader import import_loader
from ray_app.serving.metrics import VariantMetrics
from ray_app.serving.predictor import (
    ColumnSelector,
    Job,
    Result,
    Scored,
    Scores,
    ServingModel,
    VariantInfo,
    describe,
    predict_jobs,
    score_frames,
)

logger = logging.getLogger("ray.serve")
PICKLES = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0


@dataclass
class _Held:
    """A replica's predictions for one model and feature set (``table``), per ticker;
    ``persisted`` once written to (or read from) the data root. ``previous``: the same model's
    predictions over the feature set served before, with their rows, until this one is
    complete (rows they share keep those predictions)."""

    served: ServedTable
    digest: str
    table: FeatureTable
    preds: dict[str, np.ndarray]
    persisted: bool
    previous: dict[str, Scored] = field(default_factory=dict)

    def follows(self, old: _Held | None) -> None:
        """Take ``old``'s predictions as ``previous`` when the same model made them over
        another feature set with the same columns."""
        if old is None or old.digest != self.digest or old.table.columns != self.table.columns:
            return
        frames = old.table.frames
        self.previous = {t: Scored(*frames[t], preds) for t, preds in old.preds.items()}


@serve.deployment(max_ongoing_requests=128)
class Variant:
    """One model variant; deployed once per ``VariantSpec`` under the variant's name."""

    def __init__(self, name: str, args: ServeArgs) -> None:
        redact_serve_logs()
        # Models load from weights and JSON (``TrainedModel.load``); should any MLflow flavour
        # be asked to unpickle here, MLflow refuses (it reads this at every load).
        os.environ[PICKLES] = "false"
        self.name = name
        self._args = args
        self._loader = import_loader(args.loader)(args)
        self._metrics = VariantMetrics()
        self._serving: tuple[ServingModel, ColumnSelector] | None = None
        self._ref: str | None = None
        self._loaded_ref: str | None = None
        self._loaded_at: dt.datetime | None = None
        self._error: str | None = "no model configured"
        self._backoff_s = RETRY_FIRST_S
        self._retry_at = 0.0
        self._retry: asyncio.Task[None] | None = None
        self._table: FeatureTable | None = None
        self._table_lock = asyncio.Lock()
        self._held: _Held | None = None
        self._scoring = asyncio.Lock()
        self._persisting: set[asyncio.Task[None]] = set()

    async def reconfigure(self, config: dict[str, Any]) -> None:
        cfg = VariantConfig.model_validate(config)
        self._predict_batch.set_max_batch_size(cfg.max_batch_size)  # type: ignore[attr-defined]
        self._predict_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)  # type: ignore[attr-defined]
        if cfg.ref != self._ref:
            self._ref, self._backoff_s = cfg.ref, RETRY_FIRST_S
            await self._load(cfg.ref)

    async def _load(self, ref: str) -> None:
        """Load ``ref`` beside the model serving now, then swap; on failure keep the old one
        and retry later (the registry may be starting, or the alias not set yet)."""
        try:
            model = await asyncio.to_thread(self._loader, ref)
        except Exception as exc:
            reason = redact_uris(str(exc).strip().splitlines()[0])  # a tracking URI's password
            self._error = f"cannot load {ref!r}: {reason}"
            self._retry_at = time.monotonic() + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, RETRY_MAX_S)
            self._metrics.load_failed(self.name)
            logger.warning("variant %s: %s", self.name, self._error)
            return
        if ref != self._ref:
            return  # a newer reconfigure asked for another model meanwhile
        old = self._serving[0] if self._serving else None
        self._serving = (model, ColumnSelector(model.columns))
        self._loaded_ref, self._loaded_at, self._error = ref, dt.datetime.now(dt.timezone.utc), None
        self._metrics.swap(
            self.name, (model.name, model.version), (old.name, old.version) if old else None
        )
        logger.info("variant %s serves %s v%s", self.name, model.name, model.version)

    async def info(self) -> VariantInfo:
        """What this replica serves; also where a failed load is retried, since the ingress
        asks every second while traffic flows."""
        ref, idle = self._ref, self._retry is None or self._retry.done()
        if (
            ref is not None
            and ref != self._loaded_ref
            and idle
            and time.monotonic() >= self._retry_at
        ):
            self._retry = asyncio.create_task(self._load(ref))
        model = self._serving[0] if self._serving else None
        return describe(self.name, self._ref, model, self._loaded_at, self._error)

    async def scores(self, feature_version: str, tickers: list[str]) -> Scores | None:
        """Predictions of the model serving now for every row of ``tickers`` in feature set
        ``feature_version``; None without a model. Each row is predicted once per model and
        feature set, in a thread while requests keep being answered: every ingress replica
        asks, and they wait for one pass (``_scoring``); a table persisted earlier (by this
        replica before a restart, or by another) is read back instead."""
        if self._serving is None:
            return None
        model, select = self._serving
        table = await self._feature_table(feature_version)
        served = ServedTable(self.name, model.name, str(model.version), table.feature_version)
        async with self._scoring:
            digest = await asyncio.to_thread(lambda: model.digest)  # saves the model, once
            held = await self._table_of(served, digest, table)
            todo = {
                t: table.frames[t] for t in tickers if t in table.frames and t not in held.preds
            }
            if todo:
                columns = tuple(table.columns)
                held.preds.update(
                    await asyncio.to_thread(
                        score_frames, model, select, columns, todo, held.previous
                    )
                )
                self._persist_when_complete(held)
        preds = {t: held.preds[t] for t in tickers if t in held.preds}
        return Scores(model.name, model.version, table.feature_version, preds)

    async def _table_of(self, served: ServedTable, digest: str, table: FeatureTable) -> _Held:
        """The predictions held for ``served``'s model and feature set: those of this replica
        so far, or the table persisted by the same model (``digest``) read back and pointed
        at, or none yet."""
        if self._held is not None and self._held.served == served:
            return self._held
        root = DataRoot(self._args.settings().data_root)
        try:
            stored = await asyncio.to_thread(read_served_scores, root, served, table.dates, digest)
        except Exception as exc:  # an unreadable table is predicted again
            logger.warning("variant %s: persisted signals not read: %s", self.name, repr(exc))
            stored = None
        old, self._held = self._held, _Held(served, digest, table, stored or {}, stored is not None)
        if stored is None:
            self._held.follows(old)
        else:
            self._spawn(self._point(root, served))
            logger.info(
                "variant %s: signals of %s v%s read back",
                self.name,
                served.model_name,
                served.model_version,
            )
        return self._held

    def _persist_when_complete(self, held: _Held) -> None:
        """Once every ticker is predicted, persist the table as the variant's signals (in a
        thread, off the answer), once, and let the previous feature set's go."""
        rows = held.table.frames
        if held.persisted or len(held.preds) < len(rows):
            return
        held.persisted, held.previous = True, {}
        frames = {t: (rows[t][0], held.preds[t]) for t in rows}
        self._spawn(self._persist(held.served, held.digest, frames))

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._persisting.add(task)
        task.add_done_callback(self._persisting.discard)

    async def _point(self, root: DataRoot, served: ServedTable) -> None:
        try:
            await asyncio.to_thread(point_variant, root, served)
        except Exception as exc:  # signals then name the table served before; serving goes on
            logger.warning("variant %s: signals not pointed at: %s", self.name, repr(exc))

    async def _persist(
        self, served: ServedTable, digest: str, frames: dict[str, tuple[np.ndarray, np.ndarray]]
    ) -> None:
        root = DataRoot(self._args.settings().data_root)
        try:
            path = await asyncio.to_thread(write_scores, root, served, frames, digest)
        except Exception as exc:  # serving goes on; the next model or feature set tries again
            logger.warning("variant %s: signals not written: %s", self.name, repr(exc))
            return
        logger.info(
            "variant %s: signals of %s v%s in %s",
            self.name,
            served.model_name,
            served.model_version,
            path,
        )

    async def _feature_table(self, version: str) -> FeatureTable:
        """The feature set the ingress serves, read once (the newest version asked for)."""
        async with self._table_lock:
            if self._table is None or self._table.feature_version != version:
                settings = self._args.settings()
                self._table = await asyncio.to_thread(FeatureTable.load, settings, version)
            return self._table

    async def predict(self, job: Job) -> Result:
        return await self._predict_batch(job)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _predict_batch(self, jobs: list[Job]) -> list[Result]:
        """Jobs that arrived together, in one forward pass of the model serving now."""
        if self._serving is None:
            raise RuntimeError(f"variant {self.name} has no model: {self._error}")
        model, select = self._serving
        return predict_jobs(model, select, jobs)
