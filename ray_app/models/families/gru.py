"""The GRU family: a recurrent net over each ticker's last ``window`` feature rows."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ray_app.models.families._family import register
from ray_app.models.families._torch import TorchFamily, TorchParams, Weights, linear, sigmoid

if TYPE_CHECKING:
    from torch import nn


class GruFamily(TorchFamily):
    name = "gru"

    def window(self, params: TorchParams) -> int:
        return params.window

    def module(self, n_features: int, params: TorchParams) -> nn.Module:
        """A stacked GRU over (batch, window, features); Dropout and a zero-started Linear on
        the last step's state predict the log return."""
        from torch import nn

        from ray_app.models.families._torch_fit import LastStep, zero_start

        # torch applies GRU dropout between stacked layers only, and warns when there are none.
        between = params.dropout if params.num_layers > 1 else 0.0
        gru = nn.GRU(
            n_features, params.hidden_size, params.num_layers, batch_first=True, dropout=between
        )
        head = nn.Sequential(
            nn.Dropout(params.dropout), zero_start(nn.Linear(params.hidden_size, 1))
        )
        return LastStep(gru, head)

    def forward(self, weights: Weights, params: TorchParams, x: np.ndarray) -> np.ndarray:
        """torch's GRU equations, layer by layer: gates r, z, n from the input and the state
        (``weight_ih``/``weight_hh`` stack them in that order), then h = (1 - z) n + z h."""
        seq = x
        for layer in range(params.num_layers):
            w = {
                k: weights[f"gru.{k}_l{layer}"]
                for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            }
            inputs = seq @ w["weight_ih"].T + w["bias_ih"]  # every step at once
            h: np.ndarray = np.zeros((len(x), params.hidden_size), np.float32)
            steps = []
            for t in range(seq.shape[1]):
                ir, iz, in_ = np.split(inputs[:, t], 3, axis=1)
                hr, hz, hn = np.split(h @ w["weight_hh"].T + w["bias_hh"], 3, axis=1)
                r, z = sigmoid(ir + hr), sigmoid(iz + hz)
                h = (1.0 - z) * np.tanh(in_ + r * hn) + z * h
                steps.append(h)
            seq = np.stack(steps, axis=1)
        return linear(seq[:, -1], weights, "head.1")[:, 0]


FAMILY = register(GruFamily())
