"""Dagster's instance: where runs, events, data versions and so staleness are kept.

It must outlive a run. Locally that is SQLite files in ``pipeline.dagster_home`` (default
``<data_root>/dagster``); on a cluster, whose RayCronJob clusters are deleted after each run,
PostgreSQL (the server behind MLflow) at the URL in ``DAGSTER_POSTGRES_URL``. Each home holds
a generated ``dagster.yaml``; `dagster dev` reads the same file through ``DAGSTER_HOME``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ray_app.core.settings import Settings, SettingsError

if TYPE_CHECKING:
    from dagster import DagsterInstance

POSTGRES_URL_ENV = "DAGSTER_POSTGRES_URL"
CONFIG_FILE = "dagster.yaml"


def dagster_home(settings: Settings) -> Path:
    """The instance folder: the setting, else ``<data_root>/dagster`` for a local root, else
    (PostgreSQL holds the state) a folder in the temporary directory for logs only."""
    cfg = settings.pipeline
    if cfg.dagster_home is not None:
        return cfg.dagster_home.expanduser().resolve()
    if "://" not in settings.data_root:
        return Path(settings.data_root).expanduser().resolve() / "dagster"
    if cfg.dagster_storage == "postgres":
        return Path(tempfile.gettempdir()) / "ray-app-dagster"
    raise SettingsError(
        f"data_root {settings.data_root} is remote and Dagster's SQLite storage would not "
        "outlive the run: set pipeline.dagster_storage: postgres (and DAGSTER_POSTGRES_URL) "
        "or pipeline.dagster_home"
    )


def instance_config(settings: Settings, home: Path) -> dict[str, Any]:
    """The ``dagster.yaml`` of ``home``: storage by ``pipeline.dagster_storage``."""
    if settings.pipeline.dagster_storage == "postgres":
        storage: dict[str, Any] = {"postgres": {"postgres_url": {"env": POSTGRES_URL_ENV}}}
    else:
        storage = {"sqlite": {"base_dir": str(home / "storage")}}
    return {"storage": storage, "telemetry": {"enabled": False}}


def ensure_home(settings: Settings) -> Path:
    """Create the home and (re)write its ``dagster.yaml``; the home's path."""
    if settings.pipeline.dagster_storage == "postgres" and not os.environ.get(POSTGRES_URL_ENV):
        raise SettingsError(
            f"pipeline.dagster_storage is postgres but {POSTGRES_URL_ENV} is not set "
            "(postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB)"
        )
    home = dagster_home(settings)
    home.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(instance_config(settings, home), sort_keys=False)
    path = home / CONFIG_FILE
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    # The UI of this instance opens on the asset graph, not on Dagster's sign-up dialog.
    nux = home / ".nux" / "nux.yaml"
    if not nux.is_file():
        nux.parent.mkdir(exist_ok=True)
        nux.write_text("seen: 1\n")
    return home


def open_instance(settings: Settings) -> DagsterInstance:
    """The persistent instance of ``settings`` (close it, or use it in a ``with`` block)."""
    from dagster import DagsterInstance

    return DagsterInstance.from_config(str(ensure_home(settings)))
