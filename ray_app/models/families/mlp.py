"""The MLP family: a feed-forward net on the current row's features (window 1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ray_app.models.families._family import register
from ray_app.models.families._torch import TorchFamily, TorchParams, Weights, linear

if TYPE_CHECKING:
    from torch import nn


class MlpFamily(TorchFamily):
    name = "mlp"

    def window(self, params: TorchParams) -> int:
        return 1

    def module(self, n_features: int, params: TorchParams) -> nn.Module:
        """``num_layers`` of Linear, ReLU and Dropout, then a zero-started Linear to one
        predicted log return, on each input's last row."""
        from torch import nn

        from ray_app.models.families._torch_fit import LastRow, zero_start

        layers: list[nn.Module] = []
        width = n_features
        for _ in range(params.num_layers):
            layers += [nn.Linear(width, params.hidden_size), nn.ReLU(), nn.Dropout(params.dropout)]
            width = params.hidden_size
        layers.append(zero_start(nn.Linear(width, 1)))
        return LastRow(nn.Sequential(*layers))

    def forward(self, weights: Weights, params: TorchParams, x: np.ndarray) -> np.ndarray:
        h = x[:, -1]
        for layer in range(params.num_layers):  # net.{3i} is Linear; ReLU and Dropout follow
            h = np.maximum(linear(h, weights, f"net.{3 * layer}"), 0.0)
        return linear(h, weights, f"net.{3 * params.num_layers}")[:, 0]


FAMILY = register(MlpFamily())
