"""What the PyTorch families share, without importing torch: hyperparameters, the search
space, the weights on disk and the forward pass that serves them.

A torch family (``mlp``, ``gru``) says which ``nn.Module`` it trains (``module``, built with
torch, which only training imports: ``_torch_fit``) and how that module's forward pass runs
on its weights in NumPy (``forward``). Serving, evaluation and the registry predict through
``forward``: a variant replica that restarts after a crash then imports no torch, which was
more than half of the time before it answered again. A unit test holds each family's
``forward`` to its module's output.

Weights are saved as a NumPy ``.npz`` of the state dict's arrays (read with pickles
refused); versions registered before hold ``weights.pt``, which still load, through torch.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ray_app.core.settings import SearchDimension
from ray_app.models.families._family import (
    Arrays,
    Family,
    FitConfig,
    FitResult,
    LoopSession,
    Predict,
    TrainedModel,
)

if TYPE_CHECKING:
    from torch import nn

WEIGHTS_FILE = "weights.npz"
LEGACY_WEIGHTS_FILE = "weights.pt"  # torch.save of the state dict, before weights.npz
Weights = Mapping[str, np.ndarray]


class TorchParams(BaseModel):
    """Hyperparameters of a torch family; scalars only, so a Tune search space maps onto them.
    The fields are those of the versions registered before families existed, which load as
    they are."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    hidden_size: int = Field(64, ge=1, description="Width of every hidden layer / GRU state")
    num_layers: int = Field(2, ge=1, description="Hidden layers of the MLP, stacked GRU layers")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout")
    lr: float = Field(1e-3, gt=0.0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW decoupled weight decay")
    batch_size: int = Field(256, ge=1, description="Batch size")
    epochs: int = Field(
        10,
        ge=1,
        description="Upper bound on epochs (and ASHA's `max_t`); early stopping usually ends "
        "sooner",
    )
    window: int = Field(20, ge=1, description="GRU only: past feature rows per ticker in one input")


def torch_space() -> dict[str, SearchDimension]:
    return {
        "lr": SearchDimension(type="loguniform", low=1e-4, high=1e-2),
        "hidden_size": SearchDimension(type="choice", values=[16, 32, 64]),
        "dropout": SearchDimension(type="uniform", low=0.0, high=0.3),
        "weight_decay": SearchDimension(type="loguniform", low=1e-6, high=1e-2),
    }


def as_arrays(weights: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A state dict as float32 NumPy arrays: tensors (fresh from training) or arrays (loaded)."""
    return {
        k: np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=np.float32)
        for k, v in weights.items()
    }


def linear(x: np.ndarray, weights: Weights, name: str) -> np.ndarray:
    """``nn.Linear`` called ``name`` applied to ``x``."""
    return x @ weights[f"{name}.weight"].T + weights[f"{name}.bias"]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # no overflow warning for large negative x


class TorchFamily(Family):
    """A family whose model is an ``nn.Module`` over windows (rows, window, features)."""

    Params: ClassVar[type[BaseModel]] = TorchParams
    ray_loop: ClassVar[str] = "torch"
    requirements: ClassVar[tuple[str, ...]] = ("torch",)
    default_space: ClassVar[dict[str, SearchDimension]] = torch_space()

    @abstractmethod
    def module(self, n_features: int, params: TorchParams) -> nn.Module:
        """A freshly initialised module (under the caller's seed); imports torch."""

    @abstractmethod
    def forward(self, weights: Weights, params: TorchParams, x: np.ndarray) -> np.ndarray:
        """What ``module``'s ``forward`` computes in eval mode, in NumPy: one prediction per
        window of ``x`` (rows, window, features)."""

    def build(self, n_features: int, params: TorchParams, seed: int = 0) -> nn.Module:
        """A freshly initialised model; the same seed gives the same weights, leaving torch's
        global random state untouched."""
        from ray_app.models.families._torch_fit import build

        return build(self, n_features, params, seed)

    def fit(
        self, arrays: Arrays, params: TorchParams, config: FitConfig, session: LoopSession
    ) -> FitResult:
        return self.result(self.train_loop(arrays, params, config, session))

    @staticmethod
    def result(state: dict[str, Any]) -> FitResult:
        """The fit a loop state describes (from a run or a Ray Train checkpoint)."""
        weights = state.get("best_state", state.get("model", {}))
        return FitResult(weights, state["best_epoch"], state["history"])

    def train_loop(
        self, arrays: Arrays, params: TorchParams, config: FitConfig, session: LoopSession
    ) -> dict[str, Any]:
        """Epochs with early stopping on validation loss (``_torch_fit.train_loop``)."""
        from ray_app.models.families._torch_fit import train_loop

        return train_loop(self, arrays, params, config, session)

    def predictor(self, model: TrainedModel) -> Predict:
        weights, params = as_arrays(model.weights), model.hparams
        assert isinstance(params, TorchParams)
        return lambda x: self.forward(weights, params, np.asarray(x, np.float32)).astype(np.float64)

    def save_weights(self, weights: Any, folder: Path) -> None:
        np.savez(folder / WEIGHTS_FILE, allow_pickle=False, **as_arrays(weights))

    def load_weights(self, folder: Path) -> Any:
        if not (folder / WEIGHTS_FILE).is_file() and (folder / LEGACY_WEIGHTS_FILE).is_file():
            import torch  # a version registered before weights.npz

            state = torch.load(folder / LEGACY_WEIGHTS_FILE, map_location="cpu", weights_only=True)
            return as_arrays(state)
        with np.load(folder / WEIGHTS_FILE, allow_pickle=False) as saved:
            return {k: saved[k] for k in saved.files}

    def fixed_length(self, params: TorchParams, best_epoch: int) -> TorchParams:
        return params.model_copy(update={"epochs": max(1, best_epoch)})

    def max_steps(self, params: TorchParams) -> int:
        return params.epochs
