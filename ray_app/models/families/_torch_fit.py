"""The torch side of the torch families: building a module, the epoch loop with early
stopping, and the containers the families' modules are made of; no Ray. Only training imports
this module (``TorchFamily`` reaches it lazily): serving runs the families' NumPy forward.

The loop reports each epoch (with its state, the best epoch's weights included) through a
``LoopSession``: Ray Train checkpoints it so an interrupted run resumes where it stopped, Tune
trials report it to the scheduler.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ray_app.models.families._family import Arrays, FitConfig, LoopSession

if TYPE_CHECKING:
    from ray_app.models.families._torch import TorchFamily, TorchParams

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class LastRow(nn.Module):
    """``net`` on the last row of each (rows, window, features) input (or on rows)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[:, -1] if x.dim() == 3 else x).squeeze(-1)


class LastStep(nn.Module):
    """A recurrent ``gru`` over (batch, window, features); ``head`` on the last step's state."""

    def __init__(self, gru: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.gru = gru
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def zero_start(layer: nn.Linear) -> nn.Linear:
    """Zero the output layer, so an untrained model predicts 0 (the random-walk forecast):
    daily log returns are ~0.01, and a default-initialised head starts ~10x off and spends
    its first epochs only shrinking its outputs."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """A float32 tensor sharing ``a``'s memory when it can; copies read-only arrays (pandas
    hands those out under copy-on-write), which torch refuses to share."""
    return torch.from_numpy(np.require(a, dtype=np.float32, requirements=["W"]))


def make_loader(
    x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool, seed: int = 0
) -> DataLoader[Any]:
    """Batches of float32 tensors; shuffled (within the training window only) by its own
    seeded generator, so the order is the same on every run."""
    dataset = TensorDataset(as_tensor(x), as_tensor(y))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def make_optimizer(model: nn.Module, hparams: TorchParams) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=hparams.lr, weight_decay=hparams.weight_decay)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def fit_epoch(
    model: nn.Module, loader: DataLoader[Any], optimizer: torch.optim.Optimizer, loss_fn: LossFn
) -> float:
    """One pass over ``loader``; the mean training loss per sample."""
    model.train()
    device, total, count = _device(model), 0.0, 0
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(yb)
        count += len(yb)
    return total / max(count, 1)


@torch.no_grad()
def evaluate_loss(model: nn.Module, loader: DataLoader[Any], loss_fn: LossFn) -> float:
    """The mean loss per sample over ``loader``, dropout off and no gradients."""
    model.eval()
    device, total, count = _device(model), 0.0, 0
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        total += loss_fn(model(xb), yb).item() * len(yb)
        count += len(yb)
    return total / max(count, 1)


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Predicted log returns for the windows in ``x``, as float64."""
    model.eval()
    device = _device(model)
    tensor = as_tensor(x)
    starts = range(0, len(tensor), batch_size)
    parts = [model(tensor[i : i + batch_size].to(device)).cpu() for i in starts]
    return torch.cat(parts).numpy().astype(np.float64) if parts else np.empty(0)


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel wrapper (or the model itself)."""
    inner = getattr(model, "module", model)
    return inner if isinstance(inner, nn.Module) else model


def build(family: TorchFamily, n_features: int, params: TorchParams, seed: int) -> nn.Module:
    """``family``'s module, freshly initialised under ``seed``; torch's global random state
    is left untouched."""
    if n_features < 1:
        raise ValueError(f"n_features must be at least 1, got {n_features}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return family.module(n_features, params)


def train_loop(
    family: TorchFamily,
    arrays: Arrays,
    params: TorchParams,
    config: FitConfig,
    session: LoopSession,
) -> dict[str, Any]:
    """Epochs with early stopping on validation loss; returns the last state (the best
    epoch's weights under ``best_state``).

    Each data-parallel worker trains on its own shard of the training rows; validation is
    measured on all of them. Without validation rows the training loss stands in.
    """
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed + session.rank)
    shard = slice(session.rank, None, session.world)
    model = session.prepare(build(family, arrays.x_train.shape[-1], params, config.seed))
    optimizer, loss_fn = make_optimizer(model, params), nn.MSELoss()
    val_loader = make_loader(arrays.x_val, arrays.y_val, 8192, shuffle=False)
    state = session.restore() or {
        "epoch": 0,
        "best_loss": float("inf"),
        "best_epoch": 0,
        "bad": 0,
        "history": [],
    }
    if "model" in state:
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    while state["epoch"] < params.epochs and state["bad"] < config.patience:
        loader = make_loader(
            arrays.x_train[shard],
            arrays.y_train[shard],
            params.batch_size,
            shuffle=True,
            seed=config.seed + state["epoch"],
        )
        train_loss = fit_epoch(model, loader, optimizer, loss_fn)
        has_val = len(arrays.y_val) > 0
        val_loss = evaluate_loss(model, val_loader, loss_fn) if has_val else train_loss
        state["epoch"] += 1
        if val_loss < state["best_loss"]:
            best = copy.deepcopy(_unwrap(model).state_dict())
            state.update(best_loss=val_loss, best_epoch=state["epoch"], bad=0, best_state=best)
        else:
            state["bad"] += 1
        state.update(model=_unwrap(model).state_dict(), optimizer=optimizer.state_dict())
        metrics = {
            "epoch": state["epoch"],
            "train_loss": train_loss,
            "val_loss": val_loss,
            "best_val_loss": state["best_loss"],
            "best_epoch": state["best_epoch"],
        }
        state["history"].append(metrics)
        session.report(metrics, state)
    return state
