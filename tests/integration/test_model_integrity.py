"""Models are data: a version's files are hashed at registration, loaded from weights and
JSON (nothing unpickled), and refused when they changed or were never hashed, until an
operator backfills the hashes on purpose (recorded in the audit trail); a running variant
asked to serve a changed version refuses it and keeps the one it serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import pytest
import requests

from ray_app.core.settings import Settings
from ray_app.registry.audit import audit_log
from ray_app.registry.integrity import HASH_TAG, ModelIntegrityError
from ray_app.registry.versions import load_version, promote
from ray_app.serving.rollout import Change, rollout
from ray_app.training.train import TrainingData
from tests.conftest import Head, local_auth
from tests.integration.conftest import run_cli
from tests.integration.test_serve_app import wait_until
from tests.integration.test_serve_registry import (
    QUESTION,
    answered,
    data,  # noqa: F401
    offline,
    ready_everywhere,
    register,
    serve_config_for,
    serving,
    settings,  # noqa: F401
    signed,
)

pytestmark = pytest.mark.integration


def weights_file(settings: Settings, version: int) -> Path:  # noqa: F811
    """The stored weights of ``version`` in the artifact store under the data root."""
    name = settings.mlflow.model_name
    source = mlflow.MlflowClient().get_model_version(name, str(version)).source
    location = mlflow.get_logged_model(source.removeprefix("models:/")).artifact_location
    path = Path(urlparse(location).path) / "artifacts" / "model" / "weights.npz"
    assert path.is_file() and path.is_relative_to(settings.data_root), path
    return path


def test_registration_hashes_the_files_and_a_changed_file_is_refused(
    settings: Settings,  # noqa: F811
    data: TrainingData,  # noqa: F811
) -> None:
    version = register(settings, data, seed=0)
    tags = mlflow.MlflowClient().get_model_version(settings.mlflow.model_name, str(version)).tags
    assert {f"{HASH_TAG}weights.npz", f"{HASH_TAG}model.json"} <= set(tags)
    assert load_version(settings, version).columns == data.columns

    path = weights_file(settings, version)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ModelIntegrityError, match=r"file\(s\) weights.npz do not match"):
        load_version(settings, version)
    result = run_cli(["models", "verify", "--data-root", settings.data_root], "", Path.cwd())
    assert result.returncode == 1 and f"version {version}: mismatch" in result.stdout


def test_an_unhashed_version_is_refused_until_an_operator_backfills_it(
    settings: Settings,  # noqa: F811
    data: TrainingData,  # noqa: F811
) -> None:
    version = register(settings, data, seed=1)
    client = mlflow.MlflowClient()
    name = settings.mlflow.model_name
    for key in ("weights.npz", "model.json"):  # as registered before hashes were recorded
        client.delete_model_version_tag(name, str(version), f"{HASH_TAG}{key}")
    with pytest.raises(ModelIntegrityError, match="no file hashes"):
        load_version(settings, version)

    args = ["models", "verify", "--data-root", settings.data_root]
    untagged = run_cli(args, "", Path.cwd())
    assert untagged.returncode == 1 and f"version {version}: untagged" in untagged.stdout
    backfilled = run_cli([*args, "--backfill"], "", Path.cwd())
    assert f"version {version}: backfilled" in backfilled.stdout, backfilled.stderr
    assert load_version(settings, version).columns == data.columns
    entry = audit_log(settings)[-1]
    assert (entry["event"], entry["version"]) == ("hashes_backfilled", version)
    assert entry["actor"] == entry["os_user"]


def ask(url: str) -> tuple[str, int, dict[str, float]]:
    """Who answered QUESTION, with which version, and what it predicted."""
    answer = requests.post(f"{url}/v1/predict", json=QUESTION, headers=local_auth(), timeout=10)
    return answered(answer.json())


def champion_status(url: str) -> dict[str, Any]:
    """The champion's entry of ``/v1/models``, as an operator reads it."""
    models = requests.get(f"{url}/v1/models", headers=local_auth(), timeout=10).json()
    return next(v for v in models["variants"] if v["name"] == "champion")  # type: ignore[no-any-return]


def test_a_running_variant_refuses_a_changed_version_and_keeps_serving(
    settings: Settings,  # noqa: F811
    data: TrainingData,  # noqa: F811
    ray_head: Head,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The shipped serve_config.yaml serves a champion; a version whose weights changed after
    registration is pinned to it as `ray-app rollout --pin champion=N` does. The variant
    refuses the version, answers on with the one it had, /v1/models gives the operator the
    reason on every ingress replica, and /readyz only its generic code."""
    good = register(settings, data, seed=2)
    promote(settings, good, "tester", "serves while a changed version is refused")
    variants = [
        {"name": "champion", "ref": "champion", "weight": 1.0},
        {"name": "challenger", "ref": str(good), "weight": 0.0},  # not the moving alias
    ]
    config_path = serve_config_for(
        settings, tmp_path_factory.mktemp("integrity"), variants=variants
    )
    expected = offline(settings, data, good)

    with serving(config_path, ray_head) as url:
        wait_until(lambda: ready_everywhere(url), 120)
        assert ask(url) == ("champion", good, expected)
        changed = register(settings, data, seed=3)
        weights = weights_file(settings, changed)
        weights.write_bytes(weights.read_bytes() + b"\0")
        rollout(settings, config_path, Change(pins={"champion": str(changed)}), **signed(ray_head))

        def refused() -> bool:
            status = champion_status(url)
            return status["ref"] == str(changed) and "do not match" in (status["error"] or "")

        wait_until(lambda: all(refused() for _ in range(4)), 60)  # both ingress replicas
        status = champion_status(url)
        assert status["model_version"] == good and status["ready"]
        assert status["error"].startswith(f"cannot load '{changed}': version {changed} of ")
        assert "file(s) weights.npz do not match the sha256" in status["error"]
        assert ask(url) == ("champion", good, expected)
        readiness = requests.get(f"{url}/readyz", timeout=10)
        assert readiness.status_code == 200
        assert readiness.json()["reasons"] == ["load_failed:champion"]
