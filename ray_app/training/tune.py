"""Hyperparameter search: Ray Tune with Optuna's seeded TPE, ASHA early stopping, MLflow.

The space can span model families (``tune.families``): each trial first picks a family, then
that family's hyperparameters (a conditional, define-by-run Optuna space). Trials run the
family's own fit (the loop its Ray Train workers run) on the tune fold built by
``train.build_arrays``: the search and the final training share one set-up, and every family
reports the same squared-error validation loss, so trials compare across families. The
search never sees the holdout. Every trial is an MLflow child run of one parent run; a
crashed trial is recorded as FAILED and the search goes on. An interrupted search resumes by
name.
"""

from __future__ import annotations

import datetime as dt
import math
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ray_app.core.errors import RayAppError
from ray_app.core.settings import SearchDimension, Settings, SettingsError
from ray_app.core.storage import DataRoot
from ray_app.models.families import Arrays, ModelSpec, check_settings, get, search_spaces, spec
from ray_app.registry.tracking import connect_mlflow, lineage_tags, tracking_uri
from ray_app.training.train import (
    RaySession,
    TrainingData,
    build_arrays,
    fit_config,
    results_path,
)

METRIC, MODE = "val_loss", "min"
STATE_FILE = "ray_app_search.json"


class SearchError(RayAppError):
    """A search that cannot start, resume or finish."""


FAMILY_KEY = "family"


def _suggest(trial: Any, name: str, dim: SearchDimension) -> Any:
    if dim.type == "choice":
        return trial.suggest_categorical(name, dim.values or [])
    assert dim.low is not None and dim.high is not None  # checked by SearchDimension
    if dim.type == "int":
        return trial.suggest_int(name, int(dim.low), int(dim.high))
    return trial.suggest_float(name, dim.low, dim.high, log=dim.type == "loguniform")


def check_space(settings: Settings) -> None:
    """Every family and every value the space can produce must be valid: fail before Ray."""
    try:
        check_settings(settings)
    except SettingsError as exc:
        raise SearchError(str(exc)) from None
    for family, space in search_spaces(settings).items():
        base = spec(settings, family).hparams.model_dump()
        for name, dim in space.items():
            probes: list[Any] = (dim.values or []) if dim.type == "choice" else [dim.low, dim.high]
            for value in probes:
                cast = int(value) if dim.type == "int" else value
                try:
                    get(family).params({**base, name: cast})
                except SettingsError as exc:
                    raise SearchError(f"search space {family}.{name}={cast!r}: {exc}") from None


@dataclass(frozen=True)
class DefineSpace:
    """Optuna's define-by-run space: a family, then that family's hyperparameters, named
    ``<family>/<name>`` (Tune nests them: ``config[family][name]``). A class, not a closure:
    Tune pickles the searcher with the search's state."""

    spaces: dict[str, dict[str, SearchDimension]]

    def __call__(self, trial: Any) -> None:
        family = trial.suggest_categorical(FAMILY_KEY, list(self.spaces))
        for name, dim in self.spaces[family].items():
            _suggest(trial, f"{family}/{name}", dim)


def trial_spec(config: dict[str, Any], base: dict[str, Any]) -> ModelSpec:
    """The model a trial's config picks: its family, the base hyperparameters under the
    trial's."""
    kind = config[FAMILY_KEY]
    return ModelSpec(kind, get(kind).params({**base["hparams"][kind], **config.get(kind, {})}))


def trial(config: dict[str, Any], arrays: dict[int, Arrays], base: dict[str, Any]) -> None:
    """One Tune trial: the family's fit with this trial's hyperparameters."""
    import ray.tune

    model = trial_spec(config, base)
    family = model.family
    session = RaySession(ray.tune, distributed=False, checkpoint_every=base["checkpoint_every"])
    family.fit(arrays[family.window(model.hparams)], model.hparams, base["fit"], session)


@dataclass
class SearchOutcome:
    """The best trial of a search and what every trial did."""

    name: str
    best: ModelSpec
    best_epoch: int
    best_val_loss: float
    trials: pd.DataFrame
    failed: int
    parent_run_id: str


def _experiment_dir(settings: Settings, name: str) -> str:
    return f"{results_path(settings)}/{name}"


def _state(settings: Settings, name: str) -> dict[str, Any] | None:
    return DataRoot(settings.data_root).read_json("ray_results", name, STATE_FILE)


def _save_state(settings: Settings, name: str, state: dict[str, Any]) -> None:
    DataRoot(settings.data_root).write_json(state, "ray_results", name, STATE_FILE)


def _tuner(
    settings: Settings,
    name: str,
    trainable: Any,
    callbacks: list[Any],
    resume: bool,
    max_t: int,
) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    cfg = settings.tune
    if resume:
        return tune.Tuner.restore(
            _experiment_dir(settings, name), trainable, resume_unfinished=True, resume_errored=False
        )
    space = DefineSpace(search_spaces(settings))
    searcher = ConcurrencyLimiter(
        OptunaSearch(space=space, metric=METRIC, mode=MODE, seed=cfg.seed),
        max_concurrent=cfg.max_concurrent,
    )
    scheduler = (
        ASHAScheduler(max_t=max_t, grace_period=min(cfg.grace_period, max_t))
        if cfg.scheduler == "asha"
        else FIFOScheduler()
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=cfg.num_samples,
            reuse_actors=True,  # a warm trial process: torch imports once, not per trial
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=results_path(settings),
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # tiny; quiet
            verbose=0,
        ),
    )


def new_search_name(data: TrainingData) -> str:
    """A fresh search name: the feature set and the UTC time it started."""
    stamp = f"{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"
    return f"tune-{data.manifest.version}-{stamp}-{uuid.uuid4().hex[:4]}"


def metric_values(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """A Tune result as MLflow metrics: nested keys joined with ``/``, values that are numbers
    (what Ray's MLflow logger keeps)."""
    out: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(metric_values(value, f"{name}/"))
            continue
        with suppress(TypeError, ValueError):
            out[name] = float(value)
    return out


def _mlflow_callback_class() -> Any:
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.result import TIMESTEPS_TOTAL, TRAINING_ITERATION

    class _Callback(MLflowLoggerCallback):
        """Ray's MLflow logger, changed in two ways:

        - a result is logged in one ``log_batch``: Ray logs it metric by metric, one
          transaction each (about 20 per epoch on SQLite), which made the driver the
          bottleneck of a search on 2 CPUs;
        - a trial whose process died before it started is skipped at its end: it raises
          KeyError in Ray 2.60 and would take the whole search down.
        """

        _client: Any = None

        def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
            step = result.get(TIMESTEPS_TOTAL) or result[TRAINING_ITERATION]
            stamp = int(time.time() * 1000)
            metrics = [Metric(k, v, stamp, step) for k, v in metric_values(result).items()]
            self._client = self._client or MlflowClient(tracking_uri=self.tracking_uri)
            self._client.log_batch(self._trial_runs[trial], metrics=metrics)

        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            if trial in self._trial_runs:
                super().log_trial_end(trial, failed)

    return _Callback


def run_search(
    settings: Settings,
    data: TrainingData,
    *,
    name: str | None = None,
    resume: bool = False,
    trial_fn: Callable[..., None] = trial,
) -> SearchOutcome:
    """Search on the tune fold under ``name``; with ``resume``, finish that interrupted search.

    ``trial_fn`` is the trial body (tests wrap it to make trials crash).
    """
    import mlflow
    import ray
    from ray import tune

    nodes = sum(1 for n in ray.nodes() if n["Alive"])
    experiment_id = connect_mlflow(settings, nodes)
    name = name or new_search_name(data)
    state = _state(settings, name) if resume else None
    if resume and state is None:
        known = ", ".join(search_names(settings)) or "none"
        raise SearchError(f"no search named {name} to resume (known: {known})")
    check_space(settings)
    models = [spec(settings, family) for family in search_spaces(settings)]
    base = {
        "hparams": {m.kind: m.hparams.model_dump() for m in models},
        "fit": fit_config(settings),
        "checkpoint_every": settings.tune.checkpoint_every,
    }
    fold = data.tune_fold
    windows = {m.family.window(m.hparams) for m in models}
    arrays = {
        w: build_arrays(data.frame, data.columns, w, fold.train_mask, fold.test_mask)
        for w in sorted(windows)
    }
    max_t = max(m.family.max_steps(m.hparams) for m in models)
    trainable = tune.with_resources(
        tune.with_parameters(trial_fn, arrays=arrays, base=base),
        {"cpu": settings.tune.cpus_per_trial},
    )
    tags = {**lineage_tags(data.manifest), "search": name}
    run_id = state["parent_run_id"] if state else None
    with mlflow.start_run(
        run_id=run_id, experiment_id=experiment_id, run_name=name, tags=tags
    ) as parent:
        if state is None:
            _save_state(settings, name, {"parent_run_id": parent.info.run_id})
            mlflow.log_params(_search_params(settings))
        child_tags = {**tags, "mlflow.parentRunId": parent.info.run_id}
        callback = _mlflow_callback_class()(
            tracking_uri=tracking_uri(settings),
            experiment_name=settings.mlflow.experiment,
            tags=child_tags,
        )
        grid = _tuner(settings, name, trainable, [callback], resume, max_t).fit()
        outcome = _outcome(name, grid, base, parent.info.run_id)
        mlflow.log_metrics(
            {"best_val_loss": outcome.best_val_loss, "failed_trials": outcome.failed}
        )
        best = {"family": outcome.best.kind, **outcome.best.hparams.model_dump()}
        mlflow.log_params({f"best.{k}": v for k, v in best.items()})
    return outcome


def _search_params(settings: Settings) -> dict[str, Any]:
    cfg = settings.tune
    params: dict[str, Any] = {
        "num_samples": cfg.num_samples,
        "max_concurrent": cfg.max_concurrent,
        "scheduler": cfg.scheduler,
        "seed": cfg.seed,
        "model": settings.train.model,
        "families": ",".join(search_spaces(settings)),
    }
    for family, space in search_spaces(settings).items():
        for name, dim in space.items():
            params[f"space.{family}.{name}"] = dim.model_dump_json(exclude_none=True)
    return params


def _outcome(name: str, grid: Any, base: dict[str, Any], parent_run_id: str) -> SearchOutcome:
    trials = grid.get_dataframe(filter_metric="best_val_loss", filter_mode="min")
    failed = sum(1 for result in grid if result.error is not None)
    finished = [r for r in grid if r.error is None and r.metrics and "best_val_loss" in r.metrics]
    if not finished:
        errors = "; ".join(str(r.error).splitlines()[0] for r in grid if r.error)[:500]
        raise SearchError(f"every trial of {name} failed: {errors}")
    best = min(finished, key=lambda r: r.metrics["best_val_loss"])
    loss = float(best.metrics["best_val_loss"])
    return SearchOutcome(
        name=name,
        best=trial_spec(best.config, base),
        best_epoch=int(best.metrics["best_epoch"]),
        best_val_loss=loss if math.isfinite(loss) else float("inf"),
        trials=trials,
        failed=failed,
        parent_run_id=parent_run_id,
    )


def search_names(settings: Settings) -> list[str]:
    """Searches that can be resumed (those with saved state under the data root)."""
    root = DataRoot(settings.data_root)
    return [n for n in root.list_dirs("ray_results") if root.exists("ray_results", n, STATE_FILE)]
