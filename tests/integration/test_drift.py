"""Drift on the bundled sample: a registered model, its tagged training window, the feature
store, and `ray-app drift` as a user runs it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.drift_table import PREDICTION, read_drift
from ray_app.data.feature_store import load_feature_set
from ray_app.monitoring.drift import run_drift
from ray_app.registry.tracking import connect_mlflow, lineage_tags
from ray_app.registry.versions import (
    TRAIN_END,
    TRAIN_START,
    load_version,
    log_model,
    promote,
    register_challenger,
    resolve_version,
)
from ray_app.training.train import fit_in_process, load_training_data
from tests.conftest import ray_app_command, sample_feature_set

pytestmark = pytest.mark.integration
DAY = dt.date(2013, 3, 1)  # the sample's last day


@pytest.fixture(scope="module")
def settings(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The sample's feature set and one champion, registered as a release registers it: with
    its lineage and the first and last date of the rows it was fitted on."""
    torch.set_num_threads(1)
    settings = sample_feature_set(
        tmp_path_factory.mktemp("drift") / "data",
        split={"n_folds": 1, "test_days": 60, "holdout_months": 3},
        train={"hparams": {"epochs": 1, "hidden_size": 8}},
        drift={"window_days": 20},
    )
    data = load_training_data(settings)
    fold = data.tune_fold
    model = fit_in_process(data, settings, fold.train_mask, fold.test_mask)
    tags = {
        **lineage_tags(data.manifest),
        TRAIN_START: fold.train.start.date().isoformat(),
        TRAIN_END: fold.train.end.date().isoformat(),
    }
    with mlflow.start_run(experiment_id=connect_mlflow(settings)) as run:
        uri = log_model(model, data.frame.tail(200))
    version = register_challenger(settings, uri, run.info.run_id, tags)
    promote(settings, version, "tester", "drift test")
    return settings


def test_cli_measures_the_days_feature_rows_without_a_prediction_log(settings: Settings) -> None:
    done = ray_app_command(
        ["drift", "--date", DAY.isoformat()],
        {"RAY_APP_DATA_ROOT": settings.data_root, "RAY_APP_DRIFT__WINDOW_DAYS": "20"},
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"drift on {DAY} (feature_rows)" in done.stdout
    table = read_drift(DataRoot(settings.data_root))
    assert table is not None
    frame, _ = load_feature_set(DataRoot(settings.data_root), training=False)
    assert set(table["n_current"]) == {20 * frame["ticker"].nunique()}  # 20 days of tickers
    assert table["variant"].unique().tolist() == ["champion"]
    assert table["psi"].notna().all() and table["ks"].between(0, 1).all()
    (prediction,) = table[table["kind"] == PREDICTION].to_dict("records")
    assert prediction["n_reference"] > 1000  # the model's predictions over its window
    report = Path(done.stdout.split("report: ")[1].split()[0])
    assert report.is_file() and "<h2>champion: ray-app-daily-return v" in report.read_text()


def test_served_rows_come_from_the_log_per_variant_and_shifted_predictions_drift(
    settings: Settings,
) -> None:
    """Rows drawn from the training window itself do not drift; the same rows with every
    prediction shifted by five percent do, and only for the variant that served them."""
    version = str(resolve_version(settings, "champion"))
    frame, _ = load_feature_set(DataRoot(settings.data_root), training=False)
    model = load_version(settings, "champion")
    rows = frame[frame["date"] < "2012-01-01"].sample(400, random_state=0)
    preds = model.predict_frame(frame).merge(rows[["ticker", "date"]], on=["ticker", "date"])

    def log_row(variant: str, role: str, shift: float) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "variant": variant,
                "role": role,
                "model_name": settings.mlflow.model_name,
                "model_version": version,
                "ticker": preds["ticker"],
                "feature_date": preds["date"].dt.date,
                "predicted_return": preds["pred"] + shift,
            }
        )

    def read_log(_root: DataRoot, start: dt.date, end: dt.date) -> pd.DataFrame:
        assert (start, end) == (DAY - dt.timedelta(days=19), DAY)
        return pd.concat(
            [
                log_row("champion", "served", 0.0),
                log_row("challenger", "served", 0.05),
                log_row("challenger", "shadow", 9.0),  # mirrored answers are not served rows
            ]
        )

    result = run_drift(settings, DAY, read_log)
    assert result.source == "prediction_log"
    table = result.table.set_index(["variant", "name"])
    assert set(table["n_current"]) == {len(preds)}
    features = table[table["kind"] != PREDICTION]
    assert not features["drifted"].any(), features.sort_values("psi").tail(3)
    assert table.loc[("champion", "predicted_return"), "psi"] < 0.2
    assert table.loc[("challenger", "predicted_return"), "drifted"]
    drifted = result.drifted[["variant", "name"]].to_records(index=False).tolist()
    assert drifted == [("challenger", "predicted_return")]
    assert np.isclose(
        table.loc[("champion", "ret_1d"), "psi"], table.loc[("challenger", "ret_1d"), "psi"]
    )


def test_a_versions_training_window_is_scored_once_then_read_back(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference (the training window's rows and the model's predictions over them) is
    what a daily run spent its time on; a version's is kept under the data root and read back
    with the same statistics, and built anew when the row limit changes."""
    from ray_app.monitoring import drift

    first = run_drift(settings, DAY).table
    kept = list(Path(settings.data_root, *drift.REFERENCES).rglob("*.parquet"))
    assert [p.name for p in kept] == [f"{resolve_version(settings, 'champion')}.parquet"]

    def rebuilt(*_args: object) -> drift.Reference:
        raise AssertionError("the kept reference was built again")

    monkeypatch.setattr(drift, "_build_reference", rebuilt)
    again = run_drift(settings, DAY).table
    pd.testing.assert_frame_equal(first, again)
    fewer = settings.model_copy(deep=True)
    fewer.drift.reference_max_rows = 500
    with pytest.raises(AssertionError, match="built again"):
        run_drift(fewer, DAY)


def test_only_recent_rows_are_read_unless_a_models_window_reaches_further(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The day's rows and a model's input windows need the newest rows only; a model whose
    window reaches past them gets the whole set, and the statistics are the same."""
    from ray_app.monitoring import drift

    real, sinces = drift.load_feature_set, []

    def spy(*args: object, **kwargs: object) -> tuple[pd.DataFrame, object]:
        sinces.append(kwargs.get("since"))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(drift, "load_feature_set", spy)
    recent = run_drift(settings, DAY).table
    assert len(sinces) == 1 and sinces[0] is not None
    monkeypatch.setattr(drift, "HISTORY_SESSIONS", 0)  # every model reads further back
    whole = run_drift(settings, DAY).table
    assert sinces[1:] == [sinces[0], None]
    pd.testing.assert_frame_equal(recent, whole)
