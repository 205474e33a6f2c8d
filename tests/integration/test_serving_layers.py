"""Serving after the package was split into layers.

A version registered before the split pickled its pyfunc class as
``ray_app.registry.DailyReturnModel``; it must still serve (from its weights and JSON) and
still load as a pyfunc for users of ``mlflow.pyfunc.load_model`` (through the alias). And a
Serve replica that has loaded a model through the registry holds none of the training
modules: measured inside the running replicas, where an import test in this process could
not fail (the registry is imported lazily, by the variant, only when it loads a model).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
import requests

from ray_app.registry import versions as registry
from ray_app.registry.tracking import connect_mlflow
from ray_app.serving.variant import PICKLES
from ray_app.training.train import TrainingData, fit_in_process
from tests.conftest import local_auth
from tests.integration.test_serve_app import wait_until
from tests.integration.test_serve_registry import config_path, data, settings, url  # noqa: F401

pytestmark = pytest.mark.integration
OLD_PATH = "ray_app.registry"


@pytest.fixture(scope="module")
def versions(settings: registry.Settings, data: TrainingData) -> Iterator[list[int]]:  # noqa: F811
    """One version logged exactly as before the split (the class pickled under its old
    module path), made champion and challenger at once."""
    assert data.split.holdout is not None
    model = fit_in_process(data, settings, data.split.holdout.train_mask, None)
    moved = registry.DailyReturnModel.__module__
    registry.DailyReturnModel.__module__ = OLD_PATH
    try:
        with mlflow.start_run(experiment_id=connect_mlflow(settings)) as run:
            uri = registry.log_model(model, data.frame.tail(200))
    finally:
        registry.DailyReturnModel.__module__ = moved
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    pickled = (folder / "python_model.pkl").read_bytes()
    assert OLD_PATH.encode() in pickled and moved.encode() not in pickled
    version = registry.register_challenger(settings, uri, run.info.run_id, {})
    registry.promote(settings, version, "tester", "registered before the layers")
    yield [version]


def on_replicas(prefix: str, ask: Any) -> dict[str, Any]:
    """``ask()`` run inside each replica of the application, by replica."""
    import ray

    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{prefix}#")
    ]
    return {
        name: ray.get(ray.get_actor(name, namespace="serve").__ray_call__.remote(lambda _: ask()))
        for name in names
    }


def test_a_version_pickled_under_the_old_path_loads_and_serves(
    url: str,  # noqa: F811
    versions: list[int],
    settings: registry.Settings,  # noqa: F811
) -> None:
    uri = f"models:/{settings.mlflow.model_name}/{versions[0]}"
    assert isinstance(
        mlflow.pyfunc.load_model(uri).unwrap_python_model(), registry.DailyReturnModel
    )

    def ask() -> requests.Response:
        body = {"tickers": ["AAPL", "MSFT"]}
        return requests.post(f"{url}/v1/predict", json=body, headers=local_auth(), timeout=10)

    # every ingress replica (two, HAProxy picks one per request) has seen the model
    wait_until(lambda: all(ask().status_code == 200 for _ in range(8)), 90)
    answer = ask()
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == versions[0]
    assert len(answer.json()["predictions"]) == 2


def test_no_serve_replica_imports_training(url: str, versions: list[int]) -> None:  # noqa: F811
    wait_until(lambda: requests.get(f"{url}/readyz", timeout=10).status_code == 200, 90)
    loaded = on_replicas(
        "ray-app", lambda: sorted(m for m in sys.modules if m.startswith("ray_app"))
    )
    print({name.split("#")[1]: len(modules) for name, modules in loaded.items()})
    assert {name.split("#")[1] for name in loaded} >= {"Ingress", "champion", "challenger"}
    variant = next(m for name, m in loaded.items() if "#champion#" in name)
    assert "ray_app.registry.versions" in variant  # it did load its model through the registry
    for name, modules in loaded.items():
        training = [m for m in modules if m.startswith("ray_app.training")]
        assert not training, f"{name} imported {training}"
    pickles = on_replicas("ray-app", lambda: os.environ.get(PICKLES))
    assert {v for n, v in pickles.items() if "#Ingress#" not in n} == {"false"}, pickles
