"""Evaluation on Ray and the MLflow registry, on the sample feature set with tiny models.

One feature set and two models (an MLP, and a GRU trained on shuffled targets) are built
once for the module; MLflow uses its embedded SQLite store under the data root.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from ray_app.core.settings import Settings
from ray_app.data.features import LABEL
from ray_app.models.factors import FACTOR_NAMES
from ray_app.models.families import TrainedModel, names, spec
from ray_app.registry.audit import audit_log
from ray_app.registry.tracking import connect_mlflow, lineage_tags
from ray_app.registry.versions import (
    RegistryError,
    champion_version,
    list_versions,
    load_version,
    log_model,
    metric_tags,
    promote,
    record_rejection,
    register_challenger,
    resolve_version,
    rollback,
)
from ray_app.training.evaluate import (
    BASELINES,
    PREDICTORS,
    EvaluationError,
    evaluate_model,
    gate_inputs,
    log_evaluation,
    render_markdown,
    write_report,
)
from ray_app.training.gate import champion_holdout_metrics, quality_gate
from ray_app.training.train import TrainingData, fit_in_process, load_training_data
from tests.conftest import sample_feature_set

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    torch.set_num_threads(1)
    return sample_feature_set(
        tmp_path_factory.mktemp("evaluate") / "data",
        split={"n_folds": 2, "test_days": 60, "holdout_months": 3},
        train={"hparams": {"epochs": 2, "hidden_size": 8}},
    )


@pytest.fixture(scope="module")
def data(settings: Settings) -> TrainingData:
    return load_training_data(settings)


def holdout_train(data: TrainingData) -> np.ndarray:
    assert data.split.holdout is not None
    return data.split.holdout.train_mask


@pytest.fixture(scope="module")
def mlp(settings: Settings, data: TrainingData) -> TrainedModel:
    return fit_in_process(data, settings, holdout_train(data), None)


NOISE_HPARAMS = {
    "mlp": {"epochs": 2, "hidden_size": 8},
    "gru": {"epochs": 2, "hidden_size": 8, "num_layers": 1, "window": 5},
    "lightgbm": {"num_boost_round": 50, "min_data_in_leaf": 50},
}


def noise_model(settings: Settings, data: TrainingData, kind: str) -> TrainedModel:
    """A ``kind`` model fitted on labels shuffled across rows: it can have learnt nothing
    real."""
    frame = data.frame.copy()
    frame[LABEL] = np.random.default_rng(0).permutation(frame[LABEL].to_numpy())
    noise = TrainingData(frame, data.columns, data.manifest, data.split)
    model = spec(settings, kind, NOISE_HPARAMS[kind])
    return fit_in_process(noise, settings, holdout_train(data), None, model=model)


@pytest.fixture(scope="module")
def noise_gru(settings: Settings, data: TrainingData) -> TrainedModel:
    return noise_model(settings, data, "gru")


@pytest.fixture(scope="module")
def report(settings: Settings, data: TrainingData, mlp: TrainedModel) -> dict:
    return evaluate_model(settings, data, mlp)


def holdout_rows(data: TrainingData) -> pd.DataFrame:
    assert data.split.holdout is not None
    return data.frame[data.split.holdout.test_mask].reset_index(drop=True)


def test_report_scores_every_scope_and_predictor(report: dict, data: TrainingData) -> None:
    assert set(report["metrics"]) == {"walk_forward", "holdout"}
    for by_name in [*report["metrics"].values(), *report["fold_metrics"].values()]:
        assert set(by_name) == set(PREDICTORS)
        assert by_name["zero"]["rank_ic"] is None  # a flat forecast has no rank correlation
        assert by_name["model"]["rmse"] > 0
        for factor in FACTOR_NAMES:  # a factor ranks the day's tickers, it forecasts no return
            assert by_name[factor]["rank_ic"] is not None and by_name[factor]["rmse"] is None
    assert list(report["fold_metrics"]) == ["fold_0", "fold_1"]
    folds = report["folds"]
    assert [f["test_start"] for f in folds] == ["2012-03-12", "2012-06-06"]
    assert folds[0]["test_end"] < folds[1]["test_start"]
    assert report["holdout"]["test_start"] == "2012-11-29"
    assert report["holdout"]["rows"] == int(data.split.holdout.test_mask.sum())
    pooled = sum(f["rows"] for f in folds)
    assert report["metrics"]["walk_forward"]["model"]["rank_ic_days"] == 120
    assert pooled == int(sum(f.test_mask.sum() for f in data.split.folds))
    assert report["feature_version"] == data.manifest.version
    json.dumps(report, allow_nan=False)


def test_report_files_and_mlflow_logging(report: dict, settings: Settings, tmp_path: Path) -> None:
    paths = write_report(report, tmp_path / "evaluation")
    assert {p.name for p in paths} == {
        "report.json",
        "report.md",
        "equity.png",
        "ic.png",
        "pred_vs_realised.png",
    }
    assert all(p.stat().st_size > 0 for p in paths)
    assert json.loads((tmp_path / "evaluation" / "report.json").read_text())["metrics"]
    markdown = (tmp_path / "evaluation" / "report.md").read_text()
    assert "## Holdout" in markdown and "| rank_ic |" in markdown and "![ic](ic.png)" in markdown

    experiment = connect_mlflow(settings)
    with mlflow.start_run(experiment_id=experiment) as run:
        log_evaluation(report, tmp_path / "evaluation")
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    assert logged["holdout.model.rmse"] == pytest.approx(
        report["metrics"]["holdout"]["model"]["rmse"]
    )
    assert "fold_1.ridge.sharpe" in logged
    assert "holdout.zero.rank_ic" not in logged  # undefined metrics are not logged
    artifacts = mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluation")
    assert {Path(a.path).name for a in artifacts} >= {"report.md", "equity.png"}


def test_leak_warnings_are_prominent(report: dict) -> None:
    leaked = {
        **report,
        "warnings": [{"scope": "holdout", "message": "suspiciously good (|IC| 0.400 > 0.1)"}],
    }
    markdown = render_markdown(leaked, [])
    assert markdown.index("LEAK SUSPECTED") < markdown.index("## Holdout")
    assert "indicates a leak, not skill" in markdown


def test_a_model_is_only_evaluated_on_its_own_columns(
    settings: Settings, data: TrainingData, mlp: TrainedModel
) -> None:
    fewer = TrainingData(data.frame, data.columns[:-1], data.manifest, data.split)
    with pytest.raises(EvaluationError, match="other feature columns"):
        evaluate_model(settings, fewer, mlp)


@pytest.mark.parametrize("kind", sorted(NOISE_HPARAMS))
def test_a_model_fitted_on_noise_fails_the_gate(
    settings: Settings, data: TrainingData, noise_gru: TrainedModel, kind: str
) -> None:
    assert sorted(NOISE_HPARAMS) == names()  # every family
    model = noise_gru if kind == "gru" else noise_model(settings, data, kind)
    report = evaluate_model(settings, data, model)
    assert report["model"]["kind"] == kind
    folds = [*report["folds"], report["holdout"]]
    assert sum(f["rows"] + f["rows_dropped"] for f in folds[:-1]) == int(
        sum(f.test_mask.sum() for f in data.split.folds)
    )
    challenger, others = gate_inputs(report)
    assert set(others) == set(BASELINES)
    decision = quality_gate(challenger, others, settings.gate)
    assert not decision.passed, decision.comparisons
    assert decision.reasons


def register(settings: Settings, data: TrainingData, model: TrainedModel, tags: dict) -> int:
    experiment = connect_mlflow(settings)
    with mlflow.start_run(experiment_id=experiment) as run:
        uri = log_model(model, holdout_rows(data))
    return register_challenger(settings, uri, run.info.run_id, tags)


def aliases(settings: Settings) -> dict[str, list[str]]:
    return {str(v["version"]): v["aliases"] for v in list_versions(settings)}


def test_register_promote_rollback_and_audit(
    settings: Settings,
    data: TrainingData,
    mlp: TrainedModel,
    noise_gru: TrainedModel,
    report: dict,
) -> None:
    assert champion_version(settings) is None and list_versions(settings) == []
    tags = {**lineage_tags(data.manifest), **metric_tags(report["metrics"]["holdout"]["model"])}
    assert register(settings, data, mlp, tags) == 1
    assert resolve_version(settings, "challenger") == 1 and champion_version(settings) is None

    rows = holdout_rows(data)
    loaded = load_version(settings, "challenger")
    pd.testing.assert_frame_equal(loaded.predict_frame(rows), mlp.predict_frame(rows))
    served = mlflow.pyfunc.load_model(f"models:/{settings.mlflow.model_name}@challenger")
    pd.testing.assert_frame_equal(served.predict(rows), mlp.predict_frame(rows))

    promote(settings, 1, actor="alice", reason="first model", metrics={"rank_ic": 0.01})
    assert champion_version(settings) == 1
    metrics, why = champion_holdout_metrics(settings, data)
    assert why is None and metrics == report["metrics"]["holdout"]["model"]
    fewer = TrainingData(data.frame, data.columns[:-1], data.manifest, data.split)
    metrics, why = champion_holdout_metrics(settings, fewer)
    assert metrics is None and why and "feature columns" in why

    assert register(settings, data, noise_gru, lineage_tags(data.manifest)) == 2
    one_ticker = rows[rows["ticker"] == "IBM"].head(7)
    served_gru = mlflow.pyfunc.load_model(f"models:/{settings.mlflow.model_name}/2")
    assert len(served_gru.predict(one_ticker)) == 3  # rows with a full 5-row window
    promote(settings, 2, actor="bob", reason="second model")
    assert rollback(settings, actor="carol", reason="regression") == 1
    assert aliases(settings) == {"1": ["champion"], "2": ["challenger"]}

    events = audit_log(settings)
    assert [(e["event"], e["version"], e["from_version"]) for e in events] == [
        ("promote", 1, None),
        ("promote", 2, 1),
        ("rollback", 1, 2),
    ]
    assert [e["actor"] for e in events] == ["alice", "bob", "carol"]
    assert events[0]["metrics"] == {"rank_ic": 0.01} and events[0]["at"] < events[2]["at"]
    version_tags = mlflow.MlflowClient().get_model_version(settings.mlflow.model_name, "2").tags
    assert version_tags["promote.by"] == "bob" and version_tags["rollback.reason"] == "regression"

    with pytest.raises(RegistryError, match="no version 999") as error:
        promote(settings, 999, actor="dave", reason="typo")
    assert settings.mlflow.model_name in str(error.value)
    with pytest.raises(RegistryError, match="nothing to roll back"):
        rollback(settings, actor="dave", reason="again")
    with pytest.raises(RegistryError, match="no alias 'staging'"):
        load_version(settings, "staging")
    assert aliases(settings) == {"1": ["champion"], "2": ["challenger"]}
    assert len(audit_log(settings)) == 3

    listed = list_versions(settings)
    assert listed[0]["lineage"]["feature_version"] == data.manifest.version
    assert listed[0]["holdout"]["rmse"] == pytest.approx(
        report["metrics"]["holdout"]["model"]["rmse"], rel=1e-5
    )
    assert listed[1]["holdout"] == {}

    flat = {"rank_ic": None, "rank_ic_t": None, "sharpe": None, "rmse": 0.02}
    decision = quality_gate(flat, {"zero": flat}, settings.gate)
    record_rejection(settings, 2, actor="ci", decision=decision)
    rejected = audit_log(settings)[-1]
    assert rejected["event"] == "gate_rejected" and rejected["version"] == 2
    assert rejected["comparisons"]["zero"]["rank_ic"]["passed"] is False
    assert rejected["significance"]["rank_ic_t"]["passed"] is False
    version_tags = mlflow.MlflowClient().get_model_version(settings.mlflow.model_name, "2").tags
    assert version_tags["gate_rejected.by"] == "ci" and "IC" in version_tags["gate_rejected.reason"]
