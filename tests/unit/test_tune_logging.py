"""What a search logs to MLflow per epoch, and which epochs its trials checkpoint."""

from __future__ import annotations

from typing import Any

import numpy as np

from ray_app.training.train import RaySession
from ray_app.training.tune import metric_values


def test_a_tune_result_becomes_one_flat_batch_of_numbers() -> None:
    result = {
        "val_loss": np.float32(0.5),
        "epoch": 3,
        "done": False,
        "trial_id": "a1b2",
        "config": {"lr": 0.01, "model": "mlp"},
    }
    assert metric_values(result) == {
        "val_loss": 0.5,
        "epoch": 3.0,
        "done": 0.0,
        "config/lr": 0.01,
    }


class FakeTune:
    """``ray.tune``'s reporting surface: records which reports carried a checkpoint."""

    class Checkpoint:
        @staticmethod
        def from_directory(folder: str) -> str:
            return folder

    def __init__(self) -> None:
        self.reports: list[tuple[int, bool]] = []

    def report(self, metrics: dict[str, Any], checkpoint: Any = None) -> None:
        self.reports.append((metrics["epoch"], checkpoint is not None))


def test_trials_checkpoint_every_n_epochs_or_never() -> None:
    for every, wanted in ((0, []), (1, [1, 2, 3, 4]), (2, [2, 4])):
        api = FakeTune()
        session = RaySession(api, distributed=False, checkpoint_every=every)
        for epoch in range(1, 5):
            session.report({"epoch": epoch}, {"epoch": epoch, "model": {}})
        assert [epoch for epoch, saved in api.reports if saved] == wanted
