"""The MLflow model registry: the only module that registers, promotes or loads models.

Versions are addressed by aliases (``challenger``, ``champion``), never by stages, which
MLflow deprecated. A new version becomes the challenger; it becomes the champion only
through ``promote``, normally after the quality gate (``ray_app.training.gate``) finds it
beats every baseline and the current champion on the holdout; this module records the
gate's verdict (``GateDecision``) but never scores a model. Each promotion, rollback and
gate rejection is recorded twice: as an entry of the hash-chained audit trail (``audit``),
written before the alias moves, and as tags on the model version (visible in the MLflow UI).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.pyfunc import PythonModel

from ray_app.core.settings import Settings
from ray_app.models.families import TrainedModel
from ray_app.models.metrics import FORMER_NAMES
from ray_app.registry import audit, integrity
from ray_app.registry.integrity import (
    ModelIntegrityError,
    RegistryError,
    check_files,
    file_hashes,
)
from ray_app.registry.tracking import connect_mlflow

CHAMPION = "champion"
CHALLENGER = "challenger"
KEY_COLUMNS = ["ticker", "date"]
# The first and last feature date of the rows a version was fitted on (drift's reference).
TRAIN_START, TRAIN_END = "train_start", "train_end"
LINEAGE_KEYS = (
    "data_version",
    "feature_version",
    "code_version",
    "git_commit",
    TRAIN_START,
    TRAIN_END,
)
HOLDOUT_PREFIX = "holdout."
PREVIOUS_CHAMPION = "previous_champion"
# Packages the pyfunc needs besides ray_app itself (which the serving image provides) and
# its family's own (``Family.requirements``).
REQUIREMENTS = ("mlflow", "pandas", "numpy", "pydantic")
MAX_TAG_CHARS = 5000


class DailyReturnModel(PythonModel):
    """The pyfunc form of a ``TrainedModel``: rows of features in, next-day predictions out.

    Only the artifact folder (``TrainedModel.save``) holds weights and scaler; this class
    is pickled without state, so loading never depends on what was in memory when logging.
    """

    model: TrainedModel

    def load_context(self, context: Any) -> None:
        self.model = TrainedModel.load(Path(context.artifacts["model"]))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """``date``, ``ticker``, ``pred`` per input row; a model with a window of several rows
        (the GRU) drops rows that lack a full window of their ticker's earlier rows."""
        missing = [c for c in (*KEY_COLUMNS, *self.model.columns) if c not in model_input]
        if missing:
            raise ValueError(f"model input lacks column(s) {', '.join(missing)}")
        return self.model.predict_frame(model_input)


def _client(settings: Settings) -> Any:
    connect_mlflow(settings)
    return mlflow.MlflowClient()


def _missing(exc: MlflowException) -> bool:
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST"


def _input_sample(example: pd.DataFrame, trained: TrainedModel) -> pd.DataFrame:
    """A few rows that the model can predict: the last rows of two tickers that have enough
    of them (a full window each when the model's window is several rows). Tickers with too
    short a history are passed over, and only the key columns are sorted, so the whole
    training frame may be given."""
    rows = max(trained.window, 2)
    keys = example[KEY_COLUMNS].reset_index(drop=True).sort_values(KEY_COLUMNS)
    tails = keys.groupby("ticker").tail(rows)
    counts = tails["ticker"].value_counts()
    chosen = tails[tails["ticker"].isin(sorted(counts[counts >= rows].index)[:2])]
    return example.iloc[chosen.index][[*KEY_COLUMNS, *trained.columns]].reset_index(drop=True)


def log_model(trained: TrainedModel, example: pd.DataFrame) -> str:
    """Log ``trained`` as a pyfunc named ``model`` in the active run; the model URI.

    ``example`` holds feature rows (``ticker``, ``date`` and the model's columns) from which
    the signature and input example are taken; it needs one ticker with a full window of
    rows, so pass the training frame (only a few of its rows are kept). Requirements are
    pinned to what is installed rather than inferred, which would load the model in a
    subprocess.
    """
    if mlflow.active_run() is None:
        raise RegistryError("log_model needs an active MLflow run (mlflow.start_run)")
    missing = [c for c in (*KEY_COLUMNS, *trained.columns) if c not in example]
    if missing:
        raise RegistryError(f"the example rows lack column(s) {', '.join(missing)}")
    sample = _input_sample(example, trained)
    output = trained.predict_frame(sample)
    if output.empty:
        raise RegistryError(
            f"the example rows give no prediction: a {trained.kind} model needs "
            f"{trained.window} rows of one ticker"
        )
    meta = trained.meta()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        trained.save(folder)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=DailyReturnModel(),
            artifacts={"model": str(folder)},
            signature=infer_signature(sample, output),
            input_example=sample,
            pip_requirements=[
                f"{p}=={package_version(p)}" for p in (*REQUIREMENTS, *trained.family.requirements)
            ],
            metadata={k: meta[k] for k in ("kind", "feature_version", "data_version")},
        )
    spec = {k: meta[k] for k in ("kind", "columns", "scaler", "feature_version", "data_version")}
    mlflow.log_dict(spec, "model_spec.json")
    return str(info.model_uri)


def metric_tags(
    metrics: Mapping[str, float | None], prefix: str = HOLDOUT_PREFIX
) -> dict[str, str]:
    """Metrics as version tags (``holdout.rank_ic`` -> ``"0.0123"``); undefined ones left out."""
    return {
        f"{prefix}{name}": f"{value:.6g}"
        for name, value in metrics.items()
        if value is not None and math.isfinite(value)
    }


def holdout_metrics(tags: Mapping[str, str]) -> dict[str, float]:
    """The holdout metrics a version's tags record (``metric_tags``), under today's names: a
    version registered before a metric was renamed (``ic_mean``, now ``rank_ic``) reads as
    if registered now."""
    metrics = {
        k.removeprefix(HOLDOUT_PREFIX): float(v)
        for k, v in tags.items()
        if k.startswith(HOLDOUT_PREFIX)
    }
    renamed = {FORMER_NAMES[k]: v for k, v in metrics.items() if k in FORMER_NAMES}
    kept = {k: v for k, v in metrics.items() if k not in FORMER_NAMES}
    return {**renamed, **kept}


def register_challenger(
    settings: Settings, model_uri: str, run_id: str, tags: dict[str, str]
) -> int:
    """Register ``model_uri`` as a new version carrying ``tags`` (lineage and holdout metrics,
    see ``metric_tags``) and point the ``challenger`` alias at it; the version number."""
    client = _client(settings)
    name = settings.mlflow.model_name
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not _missing(exc):
            raise
        client.create_registered_model(name)
    with tempfile.TemporaryDirectory() as tmp:
        hashes = file_hashes(_model_files(model_uri, Path(tmp)))
    created = client.create_model_version(
        name,
        source=model_uri,
        run_id=run_id,
        tags={**tags, **hashes},
        model_id=_model_id(model_uri),
    )
    client.set_registered_model_alias(name, CHALLENGER, str(created.version))
    return int(created.version)


def _model_id(model_uri: str) -> str | None:
    """The logged model's id in an MLflow 3 ``models:/m-...`` URI, linking version and model."""
    ref = model_uri.removeprefix("models:/")
    return ref if model_uri.startswith("models:/") and ref.startswith("m-") else None


def _aliases(client: Any, name: str) -> dict[str, int] | None:
    """Alias -> version of registered model ``name``; None when it is not registered."""
    try:
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        if _missing(exc):
            return None
        raise
    return {alias: int(v) for alias, v in registered.aliases.items()}


def _version(client: Any, name: str, version: int | str) -> Any:
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if _missing(exc):
            raise RegistryError(f"registered model {name!r} has no version {version}") from None
        raise


def resolve_version(settings: Settings, ref: str | int) -> int:
    """The version number ``ref`` names: an alias (``champion``) or a number (``3``, ``"3"``)."""
    client = _client(settings)
    name = settings.mlflow.model_name
    if isinstance(ref, int) or ref.isdigit():
        return int(_version(client, name, ref).version)
    aliases = _aliases(client, name)
    if aliases is None:
        raise RegistryError(f"no registered model {name!r}: register a challenger first")
    if ref not in aliases:
        known = ", ".join(sorted(aliases)) or "none"
        raise RegistryError(f"registered model {name!r} has no alias {ref!r} (aliases: {known})")
    return aliases[ref]


def _model_files(model_uri: str, into: Path) -> Path:
    """The folder of a logged model's weights and JSON description (``TrainedModel.save``)."""
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(into)))
    return root / "artifacts" / "model"


def fetch_checked(settings: Settings, version: int, into: Path) -> Path:
    """The folder of ``version``'s weights and JSON description, downloaded under ``into``
    and checked against the hashes recorded at registration (ModelIntegrityError if not)."""
    client = _client(settings)
    name = settings.mlflow.model_name
    tags = dict(_version(client, name, version).tags)
    folder = _model_files(f"models:/{name}/{version}", into)
    check_files(name, version, tags, folder)
    return folder


def recorded_hashes(settings: Settings, version: int) -> dict[str, str]:
    """The file hashes recorded for ``version`` at registration (``integrity``): what a copy
    of its files kept elsewhere (a serving node's cache) must match. One call, no download."""
    client = _client(settings)
    return integrity.recorded(_version(client, settings.mlflow.model_name, version).tags)


def load_version(settings: Settings, ref: str | int) -> TrainedModel:
    """The model behind an alias or version number, loaded from its weights and JSON
    description (``weights_only``: nothing is unpickled) after its files are checked against
    the hashes recorded at registration. Serving and evaluation load models only here (or,
    serving, from a cached copy checked against ``recorded_hashes``)."""
    version = resolve_version(settings, ref)
    with tempfile.TemporaryDirectory() as tmp:
        return TrainedModel.load(fetch_checked(settings, version, Path(tmp)))


@dataclass
class VersionCheck:
    """One version's files against its recorded hashes: ``ok``, ``mismatch``, ``untagged``
    (registered before hashes were recorded) or ``backfilled`` (just recorded)."""

    version: int
    status: str
    detail: str = ""


def verify_versions(settings: Settings, backfill: bool, actor: str) -> list[VersionCheck]:
    """Check every version's files; with ``backfill``, record hashes for untagged versions.

    Backfilling trusts the files as they are now, so it is a deliberate operator action: each
    one is written to the audit trail with the actor before its tags are set.
    """
    client = _client(settings)
    name = settings.mlflow.model_name
    checks = []
    for row in list_versions(settings):
        version = int(row["version"])
        tags = dict(_version(client, name, version).tags)
        untagged = not integrity.recorded(tags)
        with tempfile.TemporaryDirectory() as tmp:
            folder = _model_files(f"models:/{name}/{version}", Path(tmp))
            if untagged and backfill:
                _backfill(settings, client, version, file_hashes(folder), actor)
                checks.append(VersionCheck(version, "backfilled"))
                continue
            try:
                check_files(name, version, tags, folder)
                checks.append(VersionCheck(version, "ok"))
            except ModelIntegrityError as exc:
                checks.append(
                    VersionCheck(version, "untagged" if untagged else "mismatch", str(exc))
                )
    return checks


def _backfill(
    settings: Settings, client: Any, version: int, hashes: dict[str, str], actor: str
) -> None:
    name = settings.mlflow.model_name

    def tag() -> None:
        for key, digest in hashes.items():
            client.set_model_version_tag(name, str(version), key, digest)

    payload = {"version": version, "actor": actor, "reason": "file hashes backfilled"}
    _audited(settings, client, "hashes_backfilled", version, {**payload, "hashes": hashes}, tag)


def champion_version(settings: Settings) -> int | None:
    """The version the ``champion`` alias points at; None before the first promotion."""
    aliases = _aliases(_client(settings), settings.mlflow.model_name)
    return None if aliases is None else aliases.get(CHAMPION)


@dataclass
class GateDecision:
    """The quality gate's verdict as the registry records it: passed, one reason per failed
    check, every comparison (other -> metric -> values, margin, threshold, passed) and the
    checks of the challenger alone (metric -> value, threshold, passed: the minimum t)."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    comparisons: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    significance: dict[str, dict[str, Any]] = field(default_factory=dict)


def _audited(
    settings: Settings,
    client: Any,
    event: str,
    tagged: int,
    payload: dict[str, Any],
    move: Callable[[], None] = lambda: None,
) -> None:
    """Append the event to the audit trail, then ``move`` the alias, then tag version
    ``tagged`` with the event. The entry comes first so that no move goes unrecorded; a move
    that fails is recorded by a second entry (``<event>_failed``) and re-raised."""
    entry = audit.recorded(settings, event, payload["actor"], payload, move)
    tags = {"by": payload["actor"], "at": entry["at"], "reason": payload["reason"]}
    if payload.get("metrics"):
        tags["metrics"] = json.dumps(payload["metrics"], sort_keys=True)
    name = settings.mlflow.model_name
    for key, value in tags.items():
        client.set_model_version_tag(name, str(tagged), f"{event}.{key}", value[:MAX_TAG_CHARS])


def promote(
    settings: Settings,
    version: int,
    actor: str,
    reason: str,
    metrics: Mapping[str, float | None] | None = None,
) -> None:
    """Point ``champion`` at ``version``, remembering the champion it replaces for rollback.

    The version is checked first, so a bad number leaves the registry and the trail as they
    were.
    """
    client = _client(settings)
    name = settings.mlflow.model_name
    _version(client, name, version)
    previous = (_aliases(client, name) or {}).get(CHAMPION)
    if previous == version:
        raise RegistryError(f"version {version} is already the champion of {name!r}")

    def move() -> None:
        client.set_registered_model_alias(name, CHAMPION, str(version))
        client.set_model_version_tag(name, str(version), PREVIOUS_CHAMPION, str(previous or ""))

    payload = {
        "version": version,
        "from_version": previous,
        "actor": actor,
        "reason": reason,
        "metrics": dict(metrics or {}),
    }
    _audited(settings, client, "promote", version, payload, move)


def rollback(settings: Settings, actor: str, reason: str) -> int:
    """Point ``champion`` back at the champion the current one replaced; that version.

    Repeated rollbacks walk further back through the promotions that led here.
    """
    client = _client(settings)
    name = settings.mlflow.model_name
    current = (_aliases(client, name) or {}).get(CHAMPION)
    if current is None:
        raise RegistryError(f"registered model {name!r} has no champion to roll back")
    previous = _version(client, name, current).tags.get(PREVIOUS_CHAMPION, "")
    if not previous.isdigit():
        raise RegistryError(
            f"champion v{current} of {name!r} replaced no earlier champion: nothing to roll back to"
        )
    restored = int(_version(client, name, previous).version)
    payload = {"version": restored, "from_version": current, "actor": actor, "reason": reason}
    _audited(
        settings,
        client,
        "rollback",
        current,
        payload,
        lambda: client.set_registered_model_alias(name, CHAMPION, str(restored)),
    )
    return restored


def record_rejection(settings: Settings, version: int, actor: str, decision: GateDecision) -> None:
    """Record that ``version`` failed the quality gate, with the gate's reasons and numbers."""
    client = _client(settings)
    _version(client, settings.mlflow.model_name, version)
    payload = {
        "version": version,
        "actor": actor,
        "reason": "; ".join(decision.reasons),
        "comparisons": decision.comparisons,
        "significance": decision.significance,
    }
    _audited(settings, client, "gate_rejected", version, payload)


def version_lineage(settings: Settings, ref: str | int) -> tuple[int, dict[str, str]]:
    """The version ``ref`` names and its lineage tags (feature version, training window...);
    a version registered before a tag existed lacks that key."""
    client = _client(settings)
    version = resolve_version(settings, ref)
    tags = dict(_version(client, settings.mlflow.model_name, version).tags)
    return version, {k: tags[k] for k in LINEAGE_KEYS if k in tags}


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    """Every version of the registered model, oldest first, with its aliases, run, lineage
    and holdout metrics (for ``ray-app models``); empty before the first registration."""
    client = _client(settings)
    name = settings.mlflow.model_name
    aliases = _aliases(client, name)
    if aliases is None:
        return []
    rows = []
    for mv in client.search_model_versions(f"name='{name}'"):
        tags = dict(mv.tags)
        rows.append(
            {
                "version": int(mv.version),
                "aliases": sorted(a for a, v in aliases.items() if v == int(mv.version)),
                "run_id": mv.run_id,
                "created": dt.datetime.fromtimestamp(
                    mv.creation_timestamp / 1000, dt.timezone.utc
                ).isoformat(timespec="seconds"),
                "lineage": {k: tags[k] for k in LINEAGE_KEYS if k in tags},
                "holdout": holdout_metrics(tags),
            }
        )
    return sorted(rows, key=lambda r: r["version"])
