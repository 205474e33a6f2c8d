"""The models layer: model families, baselines, and how predictions are scored.

Owns ``families`` (the table of model families: MLP, GRU, LightGBM, one module each, and
``TrainedModel``), ``networks`` (the scaler, the input windows, the baselines) and ``metrics``
(RMSE, IC, backtests: shared by training's evaluation and, later, live monitoring). May
import ``core`` and ``data`` (the target's name), and never Ray, so a model runs in any bare
Python process (a forbidden contract in ``.importlinter``).
"""

from __future__ import annotations

import pkgutil
from pathlib import Path

FAMILIES_PACKAGE = f"{__name__}.families"


def family_names() -> list[str]:
    """The model families' names, sorted: the modules of ``families`` not starting with
    ``_``, listed without importing anything (the command line's choices cost no numpy)."""
    found = pkgutil.iter_modules([str(Path(__file__).parent / "families")])
    return sorted(m.name for m in found if not m.name.startswith("_"))
