"""The pipeline's serving end: ``serve deploy`` of the registry's versions, their tables
precomputed first, then one request.

The deployment asset (ray_app/orchestration) calls these after a release; ``make run`` ends
with the prediction the smoke request proves can be made.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from ray_app.core.errors import RayAppError
from ray_app.core.settings import Settings
from ray_app.serving.client import ApiClient

if TYPE_CHECKING:
    from ray_app.serving.precompute import Precomputed
    from ray_app.serving.rollout import ServingState


@dataclass(frozen=True)
class Deployment:
    """What ``deploy_serving`` pinned, the tables it precomputed for the pins, and a note
    when no champion exists yet."""

    served: dict[str, str]
    tables: list[Precomputed]
    note: str

    @property
    def detail(self) -> str:
        pins = ", ".join(f"{k}={v}" for k, v in self.served.items())
        tables = "".join(f"; {t.detail}" for t in self.tables)
        return f"serve deploy {pins}{self.note}{tables}"


def dashboard(settings: Settings) -> str:
    return f"http://{settings.cluster.dashboard_host}:{settings.cluster.dashboard_port}"


def deploy_serving(settings: Settings) -> Deployment:
    """``serve deploy`` with the variants pinned to the versions their aliases name now, so
    every replica, restarted or not, loads the same model; the feature set is left to follow
    the newest. The pinned versions' tables are precomputed on the cluster first
    (``serving.precompute``), so the variants start answering from tables read back.

    Before any model has passed the gate there is no champion: the champion variant then
    serves the newest challenger's version (a reference that resolves), and the note says so
    (the registry is not changed).
    """
    from ray_app.registry.versions import champion_version, resolve_version
    from ray_app.serving.rollout import CHALLENGER, Change, rollout

    challenger = resolve_version(settings, CHALLENGER)
    champion, note = champion_version(settings), ""
    if champion is None:
        champion = challenger
        note = f" (no champion yet: serving challenger v{challenger}, not past the gate)"
    change = Change(pins={"champion": str(champion), CHALLENGER: str(challenger)})
    deploy = partial(
        rollout,
        settings,
        settings.pipeline.serve_config,
        change,
        actor="pipeline",
        reason="daily pipeline",
        address=dashboard(settings),
    )
    tables = _precompute(deploy(apply=False).state)
    result = deploy()
    return Deployment({name: cfg.ref for name, cfg in result.state.variants.items()}, tables, note)


def _precompute(state: ServingState) -> list[Precomputed]:
    """The tables of the versions ``state`` pins, unless its variants do not precompute."""
    from ray_app.serving.precompute import precompute_tables

    if not state.args.precompute:
        return []
    refs = {name: cfg.ref for name, cfg in state.variants.items()}
    return precompute_tables(state.args, refs, state.ingress.feature_version)


def smoke_request(settings: Settings, ticker: str) -> str:
    """One prediction for ``ticker`` through the public HTTP API with the platform's key,
    retried while replicas start; RayAppError when none comes within
    ``pipeline.smoke_timeout_s``, or at once when the key is refused."""
    client = ApiClient(settings, timeout_s=10)
    deadline, last = time.monotonic() + settings.pipeline.smoke_timeout_s, ""
    while time.monotonic() < deadline:
        try:
            reply = json.loads(client.post("/v1/predict", {"tickers": [ticker]}))
            first = reply["predictions"][0]
            served = f"{reply['variant']} v{reply['model_version']}"
            return f"{ticker}: {first['predicted_return']:+.5f} from {served}"
        except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            last = str(exc)
            time.sleep(2)
    raise RayAppError(
        f"no prediction from {client.url}/v1/predict within "
        f"{settings.pipeline.smoke_timeout_s:.0f} s: {last}"
    )


def write_signals(settings: Settings, feature_version: str, variants: list[str]) -> str:
    """The day's signal file (every ticker's prediction from each of ``variants``, as of the
    newest feature date), once each has precomputed ``feature_version``; waits up to
    ``pipeline.smoke_timeout_s`` for them."""
    from ray_app.core.storage import DataRoot
    from ray_app.data.signals import (
        ServedTable,
        daily_signals,
        read_scores,
        served_tables,
        write_daily,
    )

    root = DataRoot(settings.data_root)
    deadline = time.monotonic() + settings.pipeline.smoke_timeout_s

    def ready() -> list[ServedTable]:
        tables = [t for t in served_tables(root) if t.variant in variants]
        done = {t.variant for t in tables if t.feature_version == feature_version}
        return tables if done == set(variants) else []

    while not (tables := ready()):
        if time.monotonic() > deadline:
            raise RayAppError(
                f"variant(s) {', '.join(variants)} have not precomputed feature set "
                f"{feature_version} within {settings.pipeline.smoke_timeout_s:.0f} s: no "
                "signal file (`ray-app signals --date D` writes it once they have)"
            )
        time.sleep(2)
    day = max(
        read_scores(root, t.model_name, t.model_version, feature_version)["feature_date"].max()
        for t in tables
    )
    frame = daily_signals(root, day, sorted(variants))
    return f"{len(frame)} signal(s) as of {day} in {write_daily(root, day, frame)}"
