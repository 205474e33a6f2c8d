"""Logging a model of every family: the example rows come from the training frame, whatever
its order and however short some tickers' histories are (a GRU needs a full window)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest

from ray_app.models.families import names
from tests.unit.test_models import COLUMNS, panel, random_model


@pytest.mark.parametrize("kind", names())
def test_every_family_logs_an_example_it_can_predict(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray_app.registry.versions import log_model

    # set, not only the variable: another test may have set the process's URI already
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("log", artifact_location=str(tmp_path / "artifacts"))
    frame = panel(n_days=60)  # sorted by date: its last rows hold one row per ticker and day
    short = panel(n_days=1, tickers=("AA",))  # sorts first; too short for either family
    with mlflow.start_run(experiment_id=experiment):
        uri = log_model(
            random_model(kind, COLUMNS, window=20), pd.concat([frame.iloc[::-1], short])
        )
    example = mlflow.models.Model.load(uri).load_input_example(uri)
    assert example is not None and set(example["ticker"]) == {"AAA", "BBB"}
    assert len(mlflow.pyfunc.load_model(uri).predict(example)) == (2 if kind == "gru" else 4)
