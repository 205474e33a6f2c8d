"""The GRU family: a recurrent net over each ticker's last ``window`` feature rows."""

from __future__ import annotations

import torch
from torch import nn

from ray_app.models.families._family import register
from ray_app.models.families._torch import TorchFamily, TorchParams, zero_start


class GRURegressor(nn.Module):
    """GRU over (batch, window, features); the last step's state predicts the log return."""

    def __init__(self, n_features: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        # torch applies GRU dropout between stacked layers only, and warns when there are none.
        between = dropout if num_layers > 1 else 0.0
        self.gru = nn.GRU(n_features, hidden_size, num_layers, batch_first=True, dropout=between)
        self.head = nn.Sequential(nn.Dropout(dropout), zero_start(nn.Linear(hidden_size, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


class GruFamily(TorchFamily):
    name = "gru"

    def window(self, params: TorchParams) -> int:
        return params.window

    def module(self, n_features: int, params: TorchParams) -> nn.Module:
        return GRURegressor(n_features, params.hidden_size, params.num_layers, params.dropout)


FAMILY = register(GruFamily())
