"""Model loaders: the MLflow registry's in production, anything callable in tests.

A variant replica builds its loader from ``ServeArgs.loader``, an import path of a factory
``(ServeArgs) -> ModelLoader`` (Anyscale's e2e-xgboost injects its loader the same way), so a
test or a declarative config can hand a deployment a tiny, failing or slow model without a
registry. The registry loader wraps the ``TrainedModel`` that ``registry.load_version`` returns
(the pyfunc's own model) in ``ServedModel``, which builds the family's predictor (a torch
module, a LightGBM booster) once instead of on every call: every family serves the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ray_app.models.families import MODEL_FILE, Predict, TrainedModel
from ray_app.serving.args import ServeArgs
from ray_app.serving.predictor import ModelLoader


@dataclass
class ServedModel:
    """A ``TrainedModel`` ready to serve: predictor built once, inputs scaled as in training."""

    name: str
    version: int
    trained: TrainedModel
    predictor: Predict = field(init=False)

    def __post_init__(self) -> None:
        self.predictor = self.trained.predictor()

    @property
    def kind(self) -> str:
        return self.trained.kind

    @property
    def columns(self) -> list[str]:
        return self.trained.columns

    @property
    def window(self) -> int:
        return self.trained.window

    @property
    def feature_version(self) -> str:
        return self.trained.feature_version

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Scaled with the training scaler, then the family's predictor, exactly as
        ``TrainedModel.predict_frame`` does."""
        return self.predictor(self.trained.scaler.transform(x).astype(np.float32))


@dataclass(frozen=True)
class RegistryLoader:
    """Loads a version of the registered model by alias or number, on the replica's node.

    A registered version never changes, so the first load of a version keeps the model's
    folder (``TrainedModel.save``) in a node-local cache; a replica that restarts (after a
    crash: rollouts pin version numbers) then loads it from there without importing MLflow or
    asking the registry, which halves the time before it is back."""

    args: ServeArgs

    def __call__(self, ref: str) -> ServedModel:
        settings = self.args.settings()
        name = settings.mlflow.model_name
        cached = self._cached(ref) if ref.isdigit() else None
        if cached is not None and (cached / MODEL_FILE).is_file():
            return ServedModel(name, int(ref), TrainedModel.load(cached))
        from ray_app.registry import versions as registry  # MLflow: variants only

        version = registry.resolve_version(settings, ref)
        trained = registry.load_version(settings, version)
        self._keep(str(version), trained)
        return ServedModel(name, version, trained)

    def _cached(self, version: str) -> Path | None:
        """The cache folder of ``version`` of this registry's model (the data root and the
        tracking URI tell registries apart: two may number their versions alike); None when
        the cache cannot be trusted (see ``private_folder``)."""
        settings = self.args.settings()
        where = f"{settings.data_root}|{settings.mlflow.tracking_uri}|{settings.mlflow.model_name}"
        digest = hashlib.sha256(where.encode()).hexdigest()[:16]
        root = private_folder(Path(tempfile.gettempdir()) / f"ray-app-models-{os.getuid()}")
        return None if root is None else root / digest / version

    def _keep(self, version: str, trained: TrainedModel) -> None:
        """Write the folder beside its place, then rename it there: a reader never sees half
        of one, and of two replicas writing the same version one simply wins."""
        final = self._cached(version)
        if final is None or final.exists():
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
            trained.save(Path(tmp) / "model")
            with contextlib.suppress(OSError):  # another replica got there first
                (Path(tmp) / "model").rename(final)


def private_folder(path: Path) -> Path | None:
    """``path``, made if missing, when only this user can write in it; else None.

    The cache skips the registry's file-hash check (the files were checked when they were
    cached), so it is trusted only as far as this process's own files: a folder in the shared
    temp directory that another user made, or may write into, is not used.
    """
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    private = stat.S_ISDIR(info.st_mode) and not info.st_mode & 0o077
    return path if private and info.st_uid == os.getuid() else None


def import_loader(path: str) -> Callable[[ServeArgs], ModelLoader]:
    """The loader factory ``module:function`` names."""
    module, _, attr = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import the model loader {path!r}: {exc}") from None
    if not callable(factory):
        raise ValueError(f"model loader {path!r} is not callable")
    return factory
