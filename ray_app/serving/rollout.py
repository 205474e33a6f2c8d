"""Rollouts: change weights, the shadow or a variant's model version, then ``serve deploy``.

The file ``serve_config.yaml`` is the desired state of serving. A rollout edits only the
deployments' ``user_config`` (never the application's ``args``, which Serve hashes into the
code version: changing them would replace every replica), pins each variant to the version
number its alias points at now, writes the file and applies it with ``serve deploy``. Serve
then calls ``reconfigure()`` on the running replicas: the ingress switches weights at once,
and a variant loads its new model before dropping the old one, so traffic never stops.

``--promote`` and ``--rollback`` move the registry's ``champion`` alias first (the registry
keeps the audit log) and then pin the champion variant to the version the alias now names,
with the challenger's traffic and shadow set back to zero.
"""

from __future__ import annotations

import copy
import importlib
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ray_app.core.errors import RayAppError
from ray_app.core.raycli import failure, ray_cli, token_env
from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.serving.args import (
    INGRESS,
    IngressConfig,
    ServeArgs,
    ShadowSpec,
    VariantConfig,
)

APPLICATION = "ray-app"
CHALLENGER = "challenger"
DEFAULT_DASHBOARD = "http://localhost:8265"
HEADER = """\
# Ray Serve config of the prediction API (`serve run serve_config.yaml` locally,
# `serve deploy serve_config.yaml` on a running cluster). Written by `ray-app rollout`:
# `args` are what the application is built from (changing them restarts every replica);
# `deployments[].user_config` is what serves now (weights, shadow, pinned model versions),
# applied in place by reconfigure(). Edit the user_config, or run `ray-app rollout`.
# controller_options: HAProxy in front of replicas that answer HTTP themselves, about 5x the
# requests/s of Serve's Python proxy on 2 CPUs at a tenth of its p50. Read when the Serve
# controller starts (the first `serve run`/`serve deploy` on a cluster); HAProxy also listens
# on 8404 (stats) and 9101 (metrics) unless RAY_SERVE_HAPROXY_STATS_PORT/_METRICS_PORT say else.
# Replicas then write request logs in batches of RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE lines.
# Serve's own access log is off: the ingress writes one JSON line per request itself (request
# id, client, variant, model version, latency, status), and the hops behind it need none.
"""


class RolloutError(RayAppError):
    """A rollout that cannot be planned or applied; the message says which part and why."""


@dataclass(frozen=True)
class ServingState:
    """The application's args and the user_config of each of its deployments."""

    args: ServeArgs
    ingress: IngressConfig
    variants: dict[str, VariantConfig]


@dataclass(frozen=True)
class Change:
    """What a rollout asks for; None or empty leaves that part as it is."""

    challenger_weight: float | None = None
    shadow: str | None = None
    shadow_fraction: float | None = None
    no_shadow: bool = False
    pins: dict[str, str] = field(default_factory=dict)
    promote: bool = False
    rollback: bool = False
    feature_version: str | None = None


@dataclass(frozen=True)
class RolloutResult:
    state: ServingState
    path: Path
    registry_event: str | None
    deployed: bool


def load_config(path: Path) -> dict[str, Any]:
    """The Serve config in ``path``, checked against Serve's own schema."""
    from ray.serve.schema import ServeDeploySchema

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RolloutError(f"serve config {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise RolloutError(f"serve config {path} is not valid YAML: {exc}") from None
    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as exc:
        raise RolloutError(f"serve config {path} is not a Serve config: {exc}") from None
    check_import_path(_application(config).get("import_path", ""), path)
    return config


def check_import_path(import_path: str, path: Path) -> None:
    """The application's builder must import here, or `serve deploy` fails on the cluster."""
    module, _, name = import_path.partition(":")
    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError as exc:
        found, why = None, f"module {module!r} cannot be imported ({exc})"
    else:
        why = f"{module!r} has no {name!r}"
    if found is None or not name:
        raise RolloutError(
            f"serve config {path}: import_path {import_path!r} is wrong: {why}; "
            "it should be ray_app.serving.app:build_app"
        )


def _application(config: dict[str, Any]) -> dict[str, Any]:
    for app in config.get("applications", []):
        if app.get("name") == APPLICATION:
            return app
    raise RolloutError(f"the serve config has no application named {APPLICATION!r}")


def _user_configs(app: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d["user_config"] for d in app.get("deployments", []) if "user_config" in d}


def serving_state(config: dict[str, Any]) -> ServingState:
    """What the config serves: its args, overridden by the deployments' user_config."""
    app = _application(config)
    try:
        args = ServeArgs.model_validate(app.get("args", {}))
        given = _user_configs(app)
        ingress = IngressConfig.model_validate(given.get(INGRESS, args.ingress_config()))
        ingress.check_variants([v.name for v in args.variants])
        variants = {
            v.name: VariantConfig.model_validate(given.get(v.name, args.variant_config(v)))
            for v in args.variants
        }
    except (ValidationError, ValueError) as exc:
        raise RolloutError(f"application {APPLICATION!r}: {exc}") from None
    return ServingState(args, ingress, variants)


def _weights(state: ServingState, challenger: float) -> dict[str, float]:
    """``challenger`` to the challenger, the rest to the primary, the others unchanged."""
    names = [v.name for v in state.args.variants]
    if CHALLENGER not in names:
        raise RolloutError(f"no variant named {CHALLENGER!r} (variants: {', '.join(names)})")
    weights = {**state.ingress.weights, CHALLENGER: challenger}
    primary = state.args.primary
    others = sum(w for n, w in weights.items() if n != primary)
    if others > 1.0:
        raise RolloutError(f"weights other than {primary!r}'s would sum to {others:g} > 1")
    return {**weights, primary: round(1.0 - others, 12)}


def plan(
    state: ServingState,
    change: Change,
    resolve: Callable[[str], int | None],
    latest_features: str | None = None,
) -> ServingState:
    """The state after ``change``: every variant pinned to the version number its ref names
    now (``resolve`` returns None for an alias that points nowhere yet, left as it is) and,
    unless the change names one, the ingress to the newest feature set, so that a rollout
    after the daily feature build serves the new day."""
    ingress = state.ingress
    if change.challenger_weight is not None:
        ingress = ingress.model_copy(update={"weights": _weights(state, change.challenger_weight)})
    if change.no_shadow:
        ingress = ingress.model_copy(update={"shadow": None})
    elif change.shadow is not None or change.shadow_fraction is not None:
        current = ingress.shadow
        variant = change.shadow or (current.variant if current else None)
        if variant is None:
            raise RolloutError("--shadow-fraction needs a shadow variant (--shadow NAME)")
        fraction = change.shadow_fraction or (current.fraction if current else 1.0)
        shadow = ShadowSpec(variant=variant, fraction=fraction)
        ingress = ingress.model_copy(update={"shadow": shadow})
    features = change.feature_version or latest_features
    if features is not None:
        ingress = ingress.model_copy(update={"feature_version": features})
    unknown = sorted(set(change.pins) - set(state.variants))
    if unknown:
        raise RolloutError(f"no variant named {', '.join(unknown)} to pin")
    variants = {}
    for name, cfg in state.variants.items():
        ref = change.pins.get(name, cfg.ref)
        version = resolve(ref)
        variants[name] = cfg.model_copy(update={"ref": ref if version is None else str(version)})
    try:
        checked = IngressConfig.model_validate(ingress.model_dump())
        checked.check_variants(list(variants))
    except (ValidationError, ValueError) as exc:
        raise RolloutError(f"the new ingress config is invalid: {exc}") from None
    return ServingState(state.args, checked, variants)


def render(config: dict[str, Any], state: ServingState) -> dict[str, Any]:
    """``config`` with the deployments' user_config replaced by ``state``'s."""
    out = copy.deepcopy(config)
    app = _application(out)
    wanted = {INGRESS: state.ingress.model_dump(mode="json")}
    wanted |= {n: v.model_dump(mode="json") for n, v in state.variants.items()}
    deployments = {d["name"]: d for d in app.get("deployments", [])}
    for name, user_config in wanted.items():
        deployments.setdefault(name, {"name": name})["user_config"] = user_config
    app["deployments"] = list(deployments.values())
    return out


def write_config(path: Path, config: dict[str, Any]) -> None:
    """Replace ``path`` in one rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(HEADER + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    tmp.replace(path)


def deploy(path: Path, address: str | None = None) -> None:
    """``serve deploy path`` against the cluster's dashboard; a refusal is one clear line.

    The CLI sends the token whatever the caller exported (``token_env``); its error is the
    exception it ended with, not its last log line.
    """
    address = address or os.environ.get("RAY_DASHBOARD_ADDRESS", DEFAULT_DASHBOARD)
    command = [ray_cli("serve"), "deploy", str(path), "-a", address]
    env = {**os.environ, **token_env()}
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RolloutError(f"`serve deploy` did not run: {exc}") from None
    if done.returncode != 0:
        output = f"{done.stderr}\n{done.stdout}"
        if "Connection refused" in output or "Failed to connect" in output:
            raise RolloutError(
                f"cannot reach the Ray dashboard at {address}: start the cluster "
                "(`ray start --head`) or pass its address (--address / RAY_DASHBOARD_ADDRESS);"
                f" {path} is written and will apply on the next rollout"
            )
        raise RolloutError(f"`serve deploy {path}` failed: {failure(done)}")


def _registry_move(
    settings: Settings, state: ServingState, change: Change, actor: str, reason: str
) -> tuple[Change, str | None]:
    """Promote or roll back in the registry; the change pinning the champion variant to it."""
    from ray_app.registry import versions as registry

    if change.promote and change.rollback:
        raise RolloutError("--promote and --rollback exclude each other")
    if not (change.promote or change.rollback):
        return change, None
    if change.promote:
        if CHALLENGER not in state.variants:
            raise RolloutError(f"no variant named {CHALLENGER!r} to promote")
        version = registry.resolve_version(settings, state.variants[CHALLENGER].ref)
        if registry.champion_version(settings) != version:
            registry.promote(settings, version, actor, reason)
        event = f"promoted version {version} to champion"
    else:
        version = registry.rollback(settings, actor, reason)
        event = f"rolled the champion back to version {version}"
    pins = {**change.pins, state.args.primary: str(version)}
    return replace(change, pins=pins, challenger_weight=0.0, no_shadow=True), event


def _latest_features(settings: Settings) -> str | None:
    """The newest feature set's version; None when this machine cannot see the store."""
    from ray_app.data.feature_store import FeatureSetError, feature_manifest

    try:
        return str(feature_manifest(DataRoot(settings.data_root))["version"])
    except (FeatureSetError, OSError):
        return None


def rollout(
    settings: Settings,
    path: Path,
    change: Change,
    *,
    actor: str,
    reason: str,
    address: str | None = None,
    apply: bool = True,
) -> RolloutResult:
    """Plan ``change`` against ``path``, the registry and the feature store, write the file,
    ``serve deploy`` it. Everything is checked before anything moves: the file, the weights,
    every version.
    """
    from ray_app.registry import versions as registry

    config = load_config(path)
    state = serving_state(config)

    def resolve(ref: str) -> int | None:
        try:
            return registry.resolve_version(settings, ref)
        except registry.RegistryError:
            if ref.isdigit():
                raise
            return None  # an alias not set yet (no champion): left for a later rollout

    latest = _latest_features(settings)
    try:
        plan(state, change, resolve, latest)  # refuse a bad change before the registry moves
        change, event = _registry_move(settings, state, change, actor, reason)
        new = plan(state, change, resolve, latest)
    except registry.RegistryError as exc:
        raise RolloutError(str(exc)) from None
    write_config(path, render(config, new))
    if apply:
        deploy(path, address)
    return RolloutResult(new, path, event, apply)
