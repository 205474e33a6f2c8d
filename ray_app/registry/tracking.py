"""MLflow set-up: where runs and models are recorded, and the tags that carry lineage.

Only the driver talks to MLflow (Ray workers report to Ray, the driver logs), so a
tracking server needs to be reachable from the head node only; but with several Ray nodes
the embedded SQLite default does not work (evaluation and serving replicas elsewhere read
the registry), which ``connect_mlflow`` refuses with a message saying so.

Credentials come from the secrets backend, never from the tracking URI (which is a setting,
printed and copied into every Ray process): ``mlflow_password`` with ``mlflow.username`` for
a server running MLflow's basic-auth app, ``mlflow_db_password`` for a PostgreSQL store.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from ray_app.core.errors import RayAppError
from ray_app.core.secrets import (
    MLFLOW_DB_PASSWORD,
    MLFLOW_PASSWORD,
    open_secrets,
    redact_url,
)
from ray_app.core.settings import Settings
from ray_app.data.manifests import FeatureManifest

PACKAGE = Path(__file__).resolve().parents[1]  # ray_app/, whose source code_version hashes


class TrackingError(RayAppError):
    """MLflow is misconfigured or unreachable."""


def _local_root(settings: Settings) -> Path:
    if "://" in settings.data_root:
        raise TrackingError(
            f"data_root {settings.data_root} is remote: set mlflow.tracking_uri to a server "
            "(http://...) and mlflow.artifact_location to shared storage"
        )
    return Path(settings.data_root).expanduser().resolve()


def tracking_uri(settings: Settings) -> str:
    """The configured tracking URI, or a SQLite file under the data root."""
    if settings.mlflow.tracking_uri:
        return settings.mlflow.tracking_uri
    return f"sqlite:///{_local_root(settings) / 'mlflow.db'}"


def artifact_location(settings: Settings) -> str | None:
    """Where new experiments keep artifacts; None lets a tracking server decide."""
    if settings.mlflow.artifact_location:
        return settings.mlflow.artifact_location
    if settings.mlflow.tracking_uri and settings.mlflow.tracking_uri.startswith("http"):
        return None
    return (_local_root(settings) / "mlartifacts").as_uri()


def is_shared(uri: str) -> bool:
    """Whether every node of a cluster can reach ``uri`` (a server, not a local file)."""
    return uri.split(":", 1)[0] in {"http", "https", "databricks", "postgresql", "mysql"}


def authenticate(settings: Settings) -> None:
    """Hand MLflow the store's credentials through the environment, where MLflow's client
    (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``, read at every request) and libpq
    (``PGPASSWORD``) look; the URI stays free of them."""
    uri = tracking_uri(settings)
    scheme = uri.split(":", 1)[0]
    secrets = open_secrets(settings)
    if scheme in {"http", "https"} and settings.mlflow.username:
        password = secrets.get(MLFLOW_PASSWORD)
        os.environ["MLFLOW_TRACKING_USERNAME"] = settings.mlflow.username
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password.get_secret_value()
    elif scheme.startswith("postgresql"):
        db_password = secrets.optional(MLFLOW_DB_PASSWORD)
        if db_password is not None:
            os.environ["PGPASSWORD"] = db_password.get_secret_value()


def connect_mlflow(settings: Settings, nodes: int = 1) -> str:
    """Point MLflow at the configured store and return the experiment id.

    Fails fast, before any run is opened, when the server is unreachable or the store
    cannot serve a multi-node cluster.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(settings)
    if nodes > 1 and not is_shared(uri):
        raise TrackingError(
            f"the Ray cluster has {nodes} nodes but MLflow tracks to {uri}, which only this "
            "machine sees: set mlflow.tracking_uri to a tracking server (http://...)"
        )
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    authenticate(settings)
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.get_experiment_by_name(settings.mlflow.experiment)
        if experiment is not None:
            return str(experiment.experiment_id)
        return str(
            mlflow.create_experiment(
                settings.mlflow.experiment, artifact_location=artifact_location(settings)
            )
        )
    except (MlflowException, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(
            f"MLflow at {redact_url(uri)} is unreachable or refused: {first_line}"
        ) from None


def code_version() -> str:
    """A hash of the package's source: the same code gives the same version on any node,
    with or without a git checkout (``ray job submit`` uploads no .git folder)."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def git_commit() -> str | None:
    """The checkout's commit when there is one (with a -dirty suffix for local changes)."""
    try:
        head = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=PACKAGE,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() or None


def lineage_tags(feature_manifest: FeatureManifest) -> dict[str, str]:
    """Tags every run and model version carries: data, feature set and code versions."""
    tags = {
        "data_version": feature_manifest.data_version,
        "feature_version": feature_manifest.version,
        "code_version": code_version(),
    }
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
    return tags
