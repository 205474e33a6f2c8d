"""From features to a registry decision: train, evaluate, log, register, gate, promote.

One MLflow run per release holds the training history, the evaluation report and the
logged model; the registered version carries the run, the lineage tags and the holdout
metrics. The champion alias moves only when the quality gate passes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_app.core.settings import Settings
from ray_app.models.families import ModelSpec, TrainedModel, spec
from ray_app.registry.tracking import connect_mlflow, lineage_tags
from ray_app.registry.versions import (
    TRAIN_END,
    TRAIN_START,
    GateDecision,
    log_model,
    metric_tags,
    promote,
    record_rejection,
    register_challenger,
)
from ray_app.training.evaluate import evaluate_model, gate_inputs, log_evaluation, write_report
from ray_app.training.gate import champion_holdout_metrics, quality_gate
from ray_app.training.train import TrainingData, load_training_data, run_training

GATE_ACTOR = "quality-gate"


@dataclass
class Release:
    """What a release did: the run, the registered version and the gate's verdict."""

    run_id: str
    version: int
    decision: GateDecision
    champion_note: str | None
    report: dict[str, Any]
    model: TrainedModel

    @property
    def promoted(self) -> bool:
        return self.decision.passed


def cluster_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node["Alive"])


def _params(settings: Settings, model: ModelSpec) -> dict[str, Any]:
    cfg = settings.train
    params: dict[str, Any] = {
        "model": model.kind,
        "num_workers": cfg.num_workers,
        "patience": cfg.patience,
        "seed": cfg.seed,
        **{f"hparams.{k}": v for k, v in model.hparams.model_dump().items()},
    }
    params.update({f"split.{k}": v for k, v in settings.split.model_dump().items()})
    return params


def train_and_release(
    settings: Settings,
    *,
    feature_version: str | None = None,
    model: ModelSpec | None = None,
    origin: str = "train",
    extra_tags: dict[str, str] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> Release:
    """Train ``model`` (default: the one ``train`` describes) with Ray Train, then release it
    (see ``release``) in one MLflow run."""
    import mlflow

    chosen = model or spec(settings)
    experiment_id = connect_mlflow(settings, cluster_nodes())
    data = load_training_data(settings, feature_version)
    window = data.tune_fold.train  # the rows the model is fitted on: drift's reference
    tags = {
        **lineage_tags(data.manifest),
        TRAIN_START: window.start.date().isoformat(),
        TRAIN_END: window.end.date().isoformat(),
        "origin": origin,
        **(extra_tags or {}),
    }
    run_name = f"{origin}-{chosen.kind}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        mlflow.log_params(_params(settings, chosen))
        outcome = run_training(settings, data, chosen, on_epoch)
        for row in outcome.history.to_dict("records"):
            losses = {k: float(row[k]) for k in ("train_loss", "val_loss")}
            mlflow.log_metrics(losses, step=int(row["epoch"]))
        mlflow.log_metric("best_epoch", outcome.model.best_epoch)
        return release(settings, data, outcome.model, run.info.run_id, tags)


def release(
    settings: Settings, data: TrainingData, model: TrainedModel, run_id: str, tags: dict[str, str]
) -> Release:
    """Evaluate ``model``, log it, register it as challenger and apply the quality gate.

    Nothing reaches the registry until the evaluation and the logged model exist, so a
    failure before that leaves the registry as it was.
    """
    report = evaluate_model(settings, data, model)
    with tempfile.TemporaryDirectory() as folder:
        write_report(report, Path(folder))
        log_evaluation(report, Path(folder))
    model_uri = log_model(model, data.frame)
    challenger, others = gate_inputs(report)
    champion, note = champion_holdout_metrics(settings, data)
    if champion is not None:
        others = {**others, "champion": champion}
    version = register_challenger(settings, model_uri, run_id, {**tags, **metric_tags(challenger)})
    decision = quality_gate(challenger, others, settings.gate)
    if decision.passed:
        reason = "beat " + ", ".join(others) + " on the holdout"
        promote(settings, version, GATE_ACTOR, reason, challenger)
    else:
        record_rejection(settings, version, GATE_ACTOR, decision)
    _log_decision(decision, version, note)
    return Release(run_id, version, decision, note, report, model)


def _log_decision(decision: GateDecision, version: int, note: str | None) -> None:
    import mlflow

    mlflow.set_tags({"registered_version": str(version), "gate.passed": str(decision.passed)})
    lines = list(decision.reasons) or ["passed every comparison"]
    if note:
        lines.append(f"champion: {note}")
    mlflow.log_text("\n".join(lines) + "\n", "gate.txt")


def evaluate_version(
    settings: Settings, ref: str | int, feature_version: str | None = None
) -> dict[str, Any]:
    """Evaluate a registered version on a feature set (default: the one it was trained on),
    logging the report to a new MLflow run."""
    import mlflow

    from ray_app.registry.versions import load_version, resolve_version

    experiment_id = connect_mlflow(settings, cluster_nodes())
    version = resolve_version(settings, ref)
    model = load_version(settings, version)
    data = load_training_data(settings, feature_version or model.feature_version)
    tags = {**lineage_tags(data.manifest), "origin": "evaluate", "model_version": str(version)}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"evaluate-v{version}", tags=tags):
        report = evaluate_model(settings, data, model)
        with tempfile.TemporaryDirectory() as folder:
            write_report(report, Path(folder))
            log_evaluation(report, Path(folder))
    return report
