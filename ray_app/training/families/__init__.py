"""Each model family's Ray Train loop: one module per loop, named by ``Family.ray_loop``.

A module here provides ``fit(settings, model, arrays, columns, name) -> FitResult``: it runs
the family on Ray Train's workers (``train.num_workers``) and returns the best step's weights
and every step's metrics. The torch families share ``torch``; ``lightgbm`` has its own. A new
family reuses one of them, or adds its module here.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from ray_app.core.settings import Settings
from ray_app.models.families import Arrays, FitResult, ModelSpec


class RayLoop(Protocol):
    def fit(
        self, settings: Settings, model: ModelSpec, arrays: Arrays, columns: list[str], name: str
    ) -> FitResult: ...


def ray_loop(model: ModelSpec) -> RayLoop:
    """The Ray Train loop of ``model``'s family."""
    loop: Any = importlib.import_module(f"{__name__}.{model.family.ray_loop}")
    return loop
