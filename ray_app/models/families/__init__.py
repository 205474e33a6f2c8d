"""The table of model families: one module per family in this package, named after it and
registering itself (``register``) when imported; ``get`` imports it on first use.

The settings (``train.model``, ``tune.families``), the command line's choices, training,
Tune, the registry and serving read this table, so a new family is one file here (plus its
Ray Train loop in ``ray_app.training.families`` when it needs its own) and its tests. See
docs/training.md, "Model families".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from ray_app.core.settings import SearchDimension, Settings, SettingsError
from ray_app.models.families._family import (
    FAMILIES,
    MODEL_FILE,
    Arrays,
    Family,
    FitConfig,
    FitResult,
    LoopSession,
    Predict,
    TrainedModel,
    get,
    names,
    register,
)

__all__ = [
    "FAMILIES",
    "MODEL_FILE",
    "Arrays",
    "Family",
    "FitConfig",
    "FitResult",
    "LoopSession",
    "ModelSpec",
    "Predict",
    "TrainedModel",
    "check_settings",
    "get",
    "names",
    "register",
    "search_spaces",
    "spec",
]


@dataclass(frozen=True)
class ModelSpec:
    """What to train: a family and its validated hyperparameters."""

    kind: str
    hparams: BaseModel

    @property
    def family(self) -> Family:
        return get(self.kind)


def spec(settings: Settings, kind: str | None = None, hparams: Any = None) -> ModelSpec:
    """The model ``train`` describes, or ``kind`` with ``hparams`` (a Tune trial's, the best
    trial's); hyperparameters left out take the family's defaults (for ``train.model``, the
    values under ``train.hparams``)."""
    kind = kind or settings.train.model
    family = get(kind)
    if isinstance(hparams, BaseModel):
        hparams = hparams.model_dump()
    base = settings.train.hparams if kind == settings.train.model else {}
    return ModelSpec(kind, family.params({**base, **(hparams or {})}))


def search_spaces(settings: Settings) -> dict[str, dict[str, SearchDimension]]:
    """Per family a trial may pick (``tune.families``, default ``train.model``), the space
    searched: ``tune.search_space[family]`` or the family's default space."""
    chosen = settings.tune.families or [settings.train.model]
    return {f: settings.tune.search_space.get(f, get(f).default_space) for f in chosen}


def check_settings(settings: Settings) -> None:
    """Refuse families, hyperparameters and search spaces the table does not know, naming the
    key; entry points call it before starting Ray."""
    try:
        spec(settings)
    except SettingsError as exc:
        raise SettingsError(f"train: {exc}") from None
    unknown = sorted(set(settings.tune.search_space) - set(names()))
    for name in [*settings.tune.families, *unknown]:
        try:
            get(name)
        except SettingsError as exc:
            raise SettingsError(f"tune.families / tune.search_space: {exc}") from None
    for name, space in search_spaces(settings).items():
        fields = get(name).Params.model_fields
        typos = sorted(set(space) - set(fields))
        if typos:
            raise SettingsError(
                f"tune.search_space.{name}: unknown hyperparameter(s) {', '.join(typos)} "
                f"(known: {', '.join(fields)})"
            )
