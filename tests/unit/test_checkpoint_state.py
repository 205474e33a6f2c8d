"""Training checkpoints load with ``weights_only=True``: plain state loads, code does not."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from ray_app.training.train import load_state


class Payload:
    """Any class a pickle could name: loading it would import and run code."""


def test_plain_training_state_loads(tmp_path: Path) -> None:
    state = {"epoch": 3, "history": [{"val_loss": 0.1}], "model": {"w": torch.ones(2)}}
    torch.save(state, tmp_path / "state.pt")
    loaded = load_state(tmp_path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.ones(2))


def test_a_checkpoint_that_holds_objects_is_refused(tmp_path: Path) -> None:
    torch.save({"epoch": 1, "extra": Payload()}, tmp_path / "state.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_state(tmp_path)
