"""The MLP family: a feed-forward net on the current row's features (window 1)."""

from __future__ import annotations

import torch
from torch import nn

from ray_app.models.families._family import register
from ray_app.models.families._torch import TorchFamily, TorchParams, zero_start


class MLP(nn.Module):
    """Feed-forward net on one feature vector -> one predicted log return; reads the last row
    of each (rows, window, features) input."""

    def __init__(self, n_features: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_size), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_size
        layers.append(zero_start(nn.Linear(width, 1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[:, -1] if x.dim() == 3 else x).squeeze(-1)


class MlpFamily(TorchFamily):
    name = "mlp"

    def window(self, params: TorchParams) -> int:
        return 1

    def module(self, n_features: int, params: TorchParams) -> nn.Module:
        return MLP(n_features, params.hidden_size, params.num_layers, params.dropout)


FAMILY = register(MlpFamily())
