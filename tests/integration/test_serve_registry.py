"""Serving models from the MLflow registry, and rollouts that move them, under load.

Two tiny MLPs are fitted and registered (the second becomes the challenger); the application
is the repository's serve_config.yaml pointed at this module's data root. It starts before
any champion exists, is made ready by a promotion plus a rollout, and then goes through a
canary split with a shadow, a promotion and a rollback while clients keep sending requests.
Every change goes through ``ray-app rollout``'s function, which reads what the cluster runs
through Serve's REST API and runs `serve deploy` against the session head's dashboard, as a
user's rollout does; the desired file is never rewritten.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import requests
import torch
import yaml

from ray_app.core.settings import Settings
from ray_app.registry.tracking import connect_mlflow, tracking_uri
from ray_app.registry.versions import (
    champion_version,
    load_version,
    log_model,
    promote,
    register_challenger,
)
from ray_app.serving.rollout import (
    Change,
    RolloutError,
    auth_headers,
    deploy,
    rollout,
    running_config,
    serving_state,
)
from ray_app.training.train import TrainingData, fit_in_process, load_training_data
from tests.conftest import Head, sample_feature_set
from tests.integration.test_serve_app import (
    SERVE_CONFIG,
    TICKERS,
    fast_serve_env,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    torch.set_num_threads(1)
    return sample_feature_set(
        tmp_path_factory.mktemp("serve-registry") / "data",
        ingest={"source": "sample", "tickers": TICKERS},
        split={"n_folds": 1, "test_days": 60, "holdout_months": 3},
        train={"hparams": {"epochs": 1, "hidden_size": 8}},
    )


@pytest.fixture(scope="module")
def data(settings: Settings) -> TrainingData:
    return load_training_data(settings)


def register(settings: Settings, data: TrainingData, seed: int) -> int:
    assert data.split.holdout is not None
    seeded = settings.model_copy(deep=True)
    seeded.train.seed = seed
    model = fit_in_process(data, seeded, data.split.holdout.train_mask, None)
    with mlflow.start_run(experiment_id=connect_mlflow(settings)) as run:
        uri = log_model(model, data.frame.tail(200))
    return register_challenger(settings, uri, run.info.run_id, {})


@pytest.fixture(scope="module")
def versions(settings: Settings, data: TrainingData) -> list[int]:
    return [register(settings, data, seed) for seed in (0, 1)]


@pytest.fixture(scope="module")
def config_path(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's serve_config.yaml on a free port, reading this module's store."""
    path = tmp_path_factory.mktemp("serve-config") / "serve_config.yaml"
    shutil.copy(SERVE_CONFIG, path)
    config = yaml.safe_load(path.read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": free_port()}
    config["controller_options"]["runtime_env"]["env_vars"] = fast_serve_env()
    args = config["applications"][0]["args"]
    args.update(data_root=settings.data_root, mlflow_tracking_uri=tracking_uri(settings))
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def url(versions: list[int], config_path: Path, ray_head: Head) -> Iterator[str]:
    from ray import serve

    deploy(config_path, ray_head.dashboard)  # starts Serve with the file's options
    yield f"http://127.0.0.1:{yaml.safe_load(config_path.read_text())['http_options']['port']}"
    serve.shutdown()


def signed(head: Head) -> dict[str, str]:
    """How these tests sign their rollouts and where they send them."""
    return {"actor": "tester", "reason": "test", "address": head.dashboard}


def served(url: str) -> dict[str, Any]:
    variants = requests.get(f"{url}/v1/models", timeout=10).json()["variants"]
    return {v["name"]: v["model_version"] for v in variants}


def test_without_a_champion_nothing_is_served_until_one_is_promoted(
    url: str,
    settings: Settings,
    versions: list[int],
    config_path: Path,
    data: TrainingData,
    ray_head: Head,
) -> None:
    wait_until(lambda: served(url)["challenger"] == versions[1], 90)
    ready = requests.get(f"{url}/readyz", timeout=10)
    assert ready.status_code == 503 and ready.json()["reasons"] == ["no_model:champion"]
    refused = requests.post(f"{url}/v1/predict", json={"tickers": ["AAPL"]}, timeout=10)
    assert refused.status_code == 503 and "no model to serve" in refused.json()["detail"]

    desired = config_path.read_text()
    with pytest.raises(RolloutError) as no_champion:  # the reproduction: nothing moves
        rollout(settings, config_path, Change(challenger_weight=0.2), **signed(ray_head))
    assert "variant 'champion': model reference 'champion' does not resolve" in str(
        no_champion.value
    )
    promote(settings, versions[0], "tester", "first champion")
    pin = Change(pins={"champion": str(versions[0])})
    result = rollout(settings, config_path, pin, **signed(ray_head))
    assert result.deployed and result.source == "cluster"
    assert {n: v.ref for n, v in result.state.variants.items()} == {
        "champion": str(versions[0]),
        "challenger": "challenger",  # not asked: left as it runs
    }
    assert config_path.read_text() == desired  # the desired config is never rewritten
    wait_until(lambda: requests.get(f"{url}/readyz", timeout=10).status_code == 200, 60)

    body = requests.post(
        f"{url}/v1/predict", json={"tickers": ["AAPL", "MSFT"], "as_of": "2012-06-01"}, timeout=10
    ).json()
    assert (body["variant"], body["model_version"]) == ("champion", versions[0])
    rows = data.frame[data.frame["date"] == pd.Timestamp("2012-06-01")]
    expected = load_version(settings, versions[0]).predict_frame(rows).set_index("ticker")["pred"]
    for pred in body["predictions"]:
        assert pred["predicted_return"] == pytest.approx(expected[pred["ticker"]], rel=1e-5)


def test_canary_promotion_and_rollback_under_load(
    url: str, settings: Settings, versions: list[int], config_path: Path, ray_head: Head
) -> None:
    stop, outcomes = threading.Event(), []

    def client(offset: int) -> None:
        with requests.Session() as session:
            i = offset
            while not stop.is_set():
                body = {"tickers": [TICKERS[i % 4]], "as_of": f"2012-0{1 + i % 9}-15"}
                answer = session.post(f"{url}/v1/predict", json=body, timeout=30)
                outcomes.append((answer.status_code, answer.json().get("model_version")))
                i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    steps = [
        Change(challenger_weight=0.1, shadow="challenger", shadow_fraction=0.5),
        Change(promote=True),
        Change(rollback=True),
    ]
    champions = []
    try:
        for step in steps:
            rollout(settings, config_path, step, **signed(ray_head))
            wanted = champion_version(settings)
            wait_until(lambda: served(url)["champion"] == wanted, 60)  # noqa: B023
            champions.append(wanted)
            time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert champions == [versions[0], versions[1], versions[0]]
    statuses = [status for status, _ in outcomes]
    assert len(statuses) > 50 and set(statuses) == {200}
    assert {version for _, version in outcomes} == set(versions)
    running = running_config(ray_head.dashboard, auth_headers(settings))
    assert running is not None
    assert serving_state(running).ingress.weights == {"champion": 1.0, "challenger": 0.0}
