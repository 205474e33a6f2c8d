"""Model loaders: the MLflow registry's in production, anything callable in tests.

A variant replica builds its loader from ``ServeArgs.loader``, an import path of a factory
``(ServeArgs) -> ModelLoader`` (Anyscale's e2e-xgboost injects its loader the same way), so a
test or a declarative config can hand a deployment a tiny, failing or slow model without a
registry. The registry loader loads a version's files once they match the hashes recorded at
registration (``registry.fetch_checked``, or a cached copy, see ``RegistryLoader``) as the
pyfunc's own ``TrainedModel``, and wraps it in ``ServedModel``, which builds the family's
predictor (a torch module, a LightGBM booster) once instead of on every call: every family
serves the same way.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ray_app.models.families import MODEL_FILE, Predict, TrainedModel
from ray_app.registry.integrity import ModelIntegrityError, check_files, file_hashes
from ray_app.serving.args import ServeArgs
from ray_app.serving.predictor import ModelLoader

logger = logging.getLogger("ray.serve")
# Ray's internal key-value namespace where a cluster keeps the file hashes of the versions its
# replicas downloaded and checked (see RegistryLoader).
KNOWN_HASHES = "ray-app-model-hashes"


@dataclass
class ServedModel:
    """A ``TrainedModel`` ready to serve: predictor built once, inputs scaled as in training."""

    name: str
    version: int
    trained: TrainedModel
    predictor: Predict = field(init=False)

    def __post_init__(self) -> None:
        self.predictor = self.trained.predictor()

    @functools.cached_property
    def digest(self) -> str:
        """The content hash, on first use (a variant's first table), not at every load."""
        return self.trained.digest()

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

    A registered version never changes, so the first load of a version keeps its checked files
    (the registry's own bytes) in a node-local cache, and their hashes in the cluster's
    key-value store (``KNOWN_HASHES``, Ray's GCS, not the node's disk). A replica that restarts
    (after a crash: rollouts pin version numbers) then loads the cached copy once its files
    match those hashes, without importing MLflow or asking the registry: that added 3.3 s to
    its start on an idle 2-CPU machine, and 11 s under the chaos test's load. Where the cluster
    holds no hashes for it (a new head, a node's cache that outlived its cluster), the copy is
    checked against the registry's tags instead. A copy that does not match is refused,
    dropped and downloaded again, checked in turn."""

    args: ServeArgs

    def __call__(self, ref: str) -> ServedModel:
        settings = self.args.settings()
        if ref.isdigit():
            version = int(ref)
        else:
            from ray_app.registry import versions as registry  # MLflow: variants only

            version = registry.resolve_version(settings, ref)
        trained = self._from_cache(version) or self._download(version)
        return ServedModel(settings.mlflow.model_name, version, trained)

    def _from_cache(self, version: int) -> TrainedModel | None:
        """The cached copy of ``version`` if its files match the hashes recorded for it;
        None when there is none, or it was refused (and dropped)."""
        cached = self._cached(version)
        if cached is None or not (cached / MODEL_FILE).is_file():
            return None
        expected = known_hashes(self._key(version)) or self._registry_hashes(version)
        try:
            check_files(self.args.settings().mlflow.model_name, version, expected, cached)
        except ModelIntegrityError as exc:
            logger.warning("cached copy %s refused, downloading again: %s", cached, exc)
            shutil.rmtree(cached, ignore_errors=True)
            return None
        return TrainedModel.load(cached)

    def _registry_hashes(self, version: int) -> dict[str, str]:
        from ray_app.registry import versions as registry

        return registry.recorded_hashes(self.args.settings(), version)

    def _key(self, version: int) -> str:
        """``version`` of this registry's model (the data root and the tracking URI tell
        registries apart: two may number their versions alike)."""
        settings = self.args.settings()
        where = f"{settings.data_root}|{settings.mlflow.tracking_uri}|{settings.mlflow.model_name}"
        return f"{hashlib.sha256(where.encode()).hexdigest()[:16]}/{version}"

    def _cached(self, version: int) -> Path | None:
        """The cache folder of ``version``; None when the cache cannot be trusted (see
        ``private_folder``)."""
        root = private_folder(Path(tempfile.gettempdir()) / f"ray-app-models-{os.getuid()}")
        return None if root is None else root / self._key(version)

    def _download(self, version: int) -> TrainedModel:
        """``version`` from the registry, its files checked; they are then moved into the
        cache folder whole (downloaded beside it, renamed there): a reader never sees half of
        one, and of two replicas fetching the same version one simply wins."""
        from ray_app.registry import versions as registry

        final = self._cached(version)
        if final is not None:
            final.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=final.parent if final else None) as tmp:
            folder = registry.fetch_checked(self.args.settings(), version, Path(tmp))
            trained = TrainedModel.load(folder)
            remember_hashes(self._key(version), file_hashes(folder))
            if final is not None:
                with contextlib.suppress(OSError):  # another replica got there first
                    folder.rename(final)
        return trained


def known_hashes(key: str) -> dict[str, str] | None:
    """The file hashes a replica of this Ray cluster recorded for a version it downloaded and
    checked (``remember_hashes``); None outside a Ray worker or where none did."""
    from ray.experimental import internal_kv

    if not internal_kv._internal_kv_initialized():
        return None
    raw = internal_kv._internal_kv_get(key, namespace=KNOWN_HASHES)
    return None if raw is None else dict(json.loads(raw))


def remember_hashes(key: str, hashes: dict[str, str]) -> None:
    """Keep the hashes of a version's checked files in the cluster's key-value store."""
    from ray.experimental import internal_kv

    if internal_kv._internal_kv_initialized():
        internal_kv._internal_kv_put(key, json.dumps(hashes), namespace=KNOWN_HASHES)


def private_folder(path: Path) -> Path | None:
    """``path``, made if missing, when only this user can write in it; else None.

    Cached files are checked against the registry's hashes at every load, so another user's
    files would be refused anyway; a folder in the shared temp directory that another user
    made, or may write into, is not even used (nor could a planted copy cost a download).
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
