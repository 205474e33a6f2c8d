"""Model loaders: the MLflow registry's in production, anything callable in tests.

A variant replica builds its loader from ``ServeArgs.loader``, an import path of a factory
``(ServeArgs) -> ModelLoader`` (Anyscale's e2e-xgboost injects its loader the same way), so a
test or a declarative config can hand a deployment a tiny, failing or slow model without a
registry. The registry loader wraps the ``TrainedModel`` that ``registry.load_version`` returns
(the pyfunc's own model) in ``TorchModel``, which builds the torch module once instead of on
every call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from ray_app.models.networks import TrainedModel, predict
from ray_app.serving.args import ServeArgs
from ray_app.serving.predictor import ModelLoader


@dataclass
class TorchModel:
    """A ``TrainedModel`` ready to serve: module built once, inputs scaled as in training."""

    name: str
    version: int
    trained: TrainedModel
    module: nn.Module = field(init=False)

    def __post_init__(self) -> None:
        self.module = self.trained.module()

    @property
    def kind(self) -> str:
        return self.trained.kind

    @property
    def columns(self) -> list[str]:
        return self.trained.columns

    @property
    def window(self) -> int:
        return self.trained.hparams.window if self.trained.kind == "gru" else 1

    @property
    def feature_version(self) -> str:
        return self.trained.feature_version

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Scaled with the training scaler; the MLP reads the last row of each window, the GRU
        the whole window, exactly as ``TrainedModel.predict_frame`` does."""
        scaled = self.trained.scaler.transform(x).astype(np.float32)
        return predict(self.module, scaled[:, -1, :] if self.kind == "mlp" else scaled)


@dataclass(frozen=True)
class RegistryLoader:
    """Loads a version of the registered model by alias or number, on the replica's node."""

    args: ServeArgs

    def __call__(self, ref: str) -> TorchModel:
        from ray_app.registry import versions as registry  # MLflow: variants only

        settings = self.args.settings()
        version = registry.resolve_version(settings, ref)
        trained = registry.load_version(settings, version)
        return TorchModel(settings.mlflow.model_name, version, trained)


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
