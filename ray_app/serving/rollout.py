"""Rollouts: change weights, the shadow or a variant's model version of the running application.

What is deployed has one truth: the cluster. A rollout reads Serve's own config of the running
applications through the dashboard's REST API (``GET /api/serve/applications/``), changes only
what it was asked to, in the deployments' ``user_config`` (never the application's ``args``,
which Serve hashes into the code version: changing them would replace every replica), and
``serve deploy``s the result. Serve then calls ``reconfigure()`` on the running replicas: the
ingress switches weights at once, and a variant loads its new model before dropping the old
one, so traffic never stops. Only when the cluster runs no ``ray-app`` yet does a rollout start
from the desired configuration, the repository's ``serve_config.yaml``, which it never
rewrites: that file keeps aliases and follow-the-newest features for every cluster.

Before anything moves, every variant's model reference must resolve in the registry: a
reference that does not would load on no replica that restarts later.

``--promote`` and ``--rollback`` move the registry's ``champion`` alias first (the registry
keeps the audit log) and then pin the champion variant to the version the alias now names,
with the challenger's traffic and shadow set back to zero.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ray_app.core.errors import RayAppError
from ray_app.core.raycli import failure, ray_cli, token_env
from ray_app.core.secrets import redact_uris
from ray_app.core.settings import Settings
from ray_app.serving.args import (
    INGRESS,
    IngressConfig,
    ServeArgs,
    ShadowSpec,
    VariantConfig,
)
from ray_app.serving.gitops import SERVE_CONFIG, GitOpsError, apply_serving_change

APPLICATION = "ray-app"
CHALLENGER = "challenger"
DEFAULT_DASHBOARD = "http://localhost:8265"
SERVE_API = "/api/serve/applications/"


class RolloutError(RayAppError):
    """A rollout that cannot be planned or applied; the message says which part and why."""


class DashboardUnreachableError(RolloutError):
    """No Ray dashboard answers at the address: no cluster runs there (or not yet)."""


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
    follow_features: bool = False  # back to null: the newest feature set
    prediction_log: bool | None = None  # turn the prediction log on or off


@dataclass(frozen=True)
class RolloutResult:
    """The state deployed (or planned), the Serve config that holds it and where it came
    from (``cluster`` or the desired file's path)."""

    state: ServingState
    config: dict[str, Any]
    source: str
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


def with_host(config: dict[str, Any], host: str | None) -> dict[str, Any]:
    """``config`` with ``http_options.host`` set to ``host`` (the environment's overlay:
    ``pipeline.serve_host``, e.g. 0.0.0.0 in a container); unchanged for None. Serve reads its
    HTTP options when it starts, so only a deploy that starts from the file takes it."""
    if host is None:
        return config
    out = copy.deepcopy(config)
    out["http_options"] = {**(out.get("http_options") or {}), "host": host}
    return out


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


def _shadow(ingress: IngressConfig, change: Change) -> ShadowSpec | None:
    """The shadow after ``change``; the fraction defaults to the current one, else 1."""
    current = ingress.shadow
    if change.no_shadow:
        return None
    if change.shadow is None and change.shadow_fraction is None:
        return current
    variant = change.shadow or (current.variant if current else None)
    if variant is None:
        raise RolloutError("--shadow-fraction needs a shadow variant (--shadow NAME)")
    fraction = change.shadow_fraction or (current.fraction if current else 1.0)
    return ShadowSpec(variant=variant, fraction=fraction)


def plan(state: ServingState, change: Change) -> ServingState:
    """The state after ``change`` and nothing else: what is not asked for stays as it is
    (model references, and the feature set, which stays null, following the newest, unless
    ``feature_version`` pins one)."""
    update: dict[str, Any] = {"shadow": _shadow(state.ingress, change)}
    if change.challenger_weight is not None:
        update["weights"] = _weights(state, change.challenger_weight)
    if change.feature_version is not None and change.follow_features:
        raise RolloutError("--feature-version and --follow-features exclude each other")
    if change.feature_version is not None or change.follow_features:
        update["feature_version"] = change.feature_version
    if change.prediction_log is not None:
        update["prediction_log"] = change.prediction_log
    unknown = sorted(set(change.pins) - set(state.variants))
    if unknown:
        raise RolloutError(f"no variant named {', '.join(unknown)} to pin")
    variants = {
        name: cfg.model_copy(update={"ref": change.pins.get(name, cfg.ref)})
        for name, cfg in state.variants.items()
    }
    try:
        checked = IngressConfig.model_validate({**state.ingress.model_dump(), **update})
        checked.check_variants(list(variants))
        variants = {n: VariantConfig.model_validate(v.model_dump()) for n, v in variants.items()}
    except (ValidationError, ValueError) as exc:
        raise RolloutError(f"the new config is invalid: {exc}") from None
    return ServingState(state.args, checked, variants)


def check_refs(
    state: ServingState, resolve: Callable[[str], int], ignore: Collection[str] = ()
) -> dict[str, int]:
    """The version every variant's reference names now (but those in ``ignore``); refuses,
    naming the variant and the reference, when one does not resolve (``resolve`` raises
    LookupError)."""
    versions = {}
    for name, cfg in state.variants.items():
        if name in ignore:
            continue
        try:
            versions[name] = resolve(cfg.ref)
        except LookupError as exc:
            raise RolloutError(
                f"variant {name!r}: model reference {cfg.ref!r} does not resolve ({exc}); "
                "nothing was changed"
            ) from None
    return versions


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


def dashboard_address(address: str | None) -> str:
    """``address``, else ``RAY_DASHBOARD_ADDRESS``, else the local default."""
    return address or os.environ.get("RAY_DASHBOARD_ADDRESS", DEFAULT_DASHBOARD)


def auth_headers(settings: Settings) -> dict[str, str]:
    """Ray's token, where Ray's own clients look for it: ``RAY_AUTH_TOKEN``, the file
    ``RAY_AUTH_TOKEN_PATH`` names, else the cluster settings' token file."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", settings.cluster.token_path)).expanduser()
    if token is None and path.is_file():
        token = path.read_text(encoding="utf-8").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def running_config(address: str, headers: dict[str, str]) -> dict[str, Any] | None:
    """The Serve config the cluster runs now, from the dashboard's REST API: its HTTP options,
    proxy location and every application's deployed config (``serve deploy`` replaces all
    applications, so the others go back unchanged); None when no ``ray-app`` runs."""
    request = urllib.request.Request(address.rstrip("/") + SERVE_API, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            details = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        raise RolloutError(
            f"the Ray dashboard at {address} refused to show what Serve runs: HTTP {exc.code} "
            f"{exc.reason} (token auth: set RAY_AUTH_TOKEN_PATH)"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise DashboardUnreachableError(
            f"cannot reach the Ray dashboard at {address} ({exc}): start the cluster or pass "
            "its address (--address / RAY_DASHBOARD_ADDRESS)"
        ) from None
    apps = [a["deployed_app_config"] for a in details.get("applications", {}).values()]
    apps = [a for a in apps if a]
    if not any(a.get("name") == APPLICATION for a in apps):
        return None
    kept = {k: details[k] for k in ("proxy_location", "http_options") if details.get(k)}
    return {**kept, "applications": apps}


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
                "(`ray-app cluster up`) or pass its address (--address / RAY_DASHBOARD_ADDRESS);"
                " nothing was deployed"
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


def _resolver(settings: Settings) -> Callable[[str], int]:
    def resolve(ref: str) -> int:
        from ray_app.registry import versions as registry

        return registry.resolve_version(settings, ref)

    return resolve


def _deploy_config(config: dict[str, Any], address: str) -> None:
    """``serve deploy`` ``config`` from a file of its own, which nothing else reads."""
    with tempfile.TemporaryDirectory(prefix="ray-app-rollout-") as folder:
        path = Path(folder) / "serve_config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        deploy(path, address)


def rollout(
    settings: Settings,
    path: Path,
    change: Change,
    *,
    actor: str,
    reason: str,
    address: str | None = None,
    apply: bool = True,
    gitops: Path | None = None,
) -> RolloutResult:
    """Plan ``change`` against what the cluster runs (or, when it runs no ``ray-app`` yet, the
    desired config in ``path``), check every variant's model reference, move the registry if
    asked, and ``serve deploy``. Everything is checked before anything moves. Without
    ``apply``, a cluster that cannot be reached is no error: the plan starts from ``path``.

    With ``gitops`` (a git checkout of the repository Argo CD syncs to a RayService), git owns
    what serves: the plan starts from that checkout's ``serve_config.yaml``, and the change is
    committed there (``gitops.apply_serving_change``) instead of deployed; pushing is the
    caller's. Every rollout that moves something is an entry of the audit trail, written
    before the deploy or the commit; one that fails adds a ``rollout_failed`` entry.
    """
    from ray_app.registry import versions as registry

    address = dashboard_address(address)
    if gitops is not None:
        running, desired = None, load_config(gitops / SERVE_CONFIG)
    else:
        desired = load_config(path)
        try:
            running = running_config(address, auth_headers(settings))
        except RolloutError:
            if apply:
                raise
            running = None
    config = running or with_host(desired, None if gitops else settings.pipeline.serve_host)
    state = serving_state(config)
    resolve = _resolver(settings)
    try:
        # Refuse a bad change before the registry moves; a promotion or rollback pins the
        # primary to the version it moves the champion to, so the primary's ref is moot.
        moving = {state.args.primary} if change.promote or change.rollback else set()
        check_refs(plan(state, change), resolve, moving)
        change, event = _registry_move(settings, state, change, actor, reason)
        new = plan(state, change)
        check_refs(new, resolve)
    except registry.RegistryError as exc:
        raise RolloutError(str(exc)) from None
    rendered = render(config, new)
    if apply:
        if gitops is not None:
            target, act = f"git commit in {gitops}", partial(_commit, gitops, new, reason)
        else:
            act = partial(_deploy_config, rendered, address)
            target = f"serve deploy to {redact_uris(address)}"
        _audited(settings, new, actor, reason, target, act)
    source = str(gitops) if gitops else "cluster" if running else str(path)
    return RolloutResult(new, rendered, source, event, apply)


def _commit(checkout: Path, state: ServingState, reason: str) -> None:
    """Commit ``state``'s user_config to ``checkout``."""
    configs = {INGRESS: state.ingress.model_dump(mode="json")}
    configs |= {name: v.model_dump(mode="json") for name, v in state.variants.items()}
    try:
        apply_serving_change(checkout, configs, commit=True, message=f"rollout: {reason}")
    except GitOpsError as exc:
        raise RolloutError(str(exc)) from None


def _audited(
    settings: Settings,
    state: ServingState,
    actor: str,
    reason: str,
    target: str,
    act: Callable[[], None],
) -> None:
    """``act`` (the deploy or the commit to ``target``), recorded in the audit trail first, as
    the registry's moves are (``audit.recorded``): a failure adds a ``rollout_failed`` entry."""
    from ray_app.registry import audit

    payload = {
        "reason": reason,
        "target": target,
        "weights": state.ingress.weights,
        "shadow": state.ingress.shadow.model_dump() if state.ingress.shadow else None,
        "feature_version": state.ingress.feature_version,
        "refs": {name: v.ref for name, v in state.variants.items()},
    }
    audit.recorded(settings, "rollout", actor, payload, act)
