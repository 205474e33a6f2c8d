"""Models are data: a version's files are hashed at registration, loaded from weights and
JSON (nothing unpickled), and refused when they changed or were never hashed, until an
operator backfills the hashes on purpose (recorded in the audit trail)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest

from ray_app.core.settings import Settings
from ray_app.registry.audit import audit_log
from ray_app.registry.integrity import HASH_TAG, ModelIntegrityError
from ray_app.registry.versions import load_version
from ray_app.training.train import TrainingData
from tests.integration.conftest import run_cli
from tests.integration.test_serve_registry import data, register, settings  # noqa: F401

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
