"""The HTTP API (FastAPI) over a ``PredictionService``: routes, auth, limits, errors, logs.

Built per ingress replica (``make_api``) so that the schema states this deployment's limits.
Every failure is an HTTP status with a reason: 401 without a valid key, 404 for unknown
tickers, 413 for an oversized body, 422 for anything malformed, 503 when no model can answer;
a 500 means a bug, and its body names the request id to look for in the logs.

No ``from __future__ import annotations`` here: FastAPI reads the route signatures at run time,
and the request model is a local of ``make_api``.
"""

import asyncio
import contextlib
import logging
import math
import re
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any, Protocol, cast

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ray_app.core.api_keys import Caller, Role
from ray_app.core.logs import access_fields
from ray_app.core.secrets import SecretError, redact_uris
from ray_app.core.storage import DataRoot
from ray_app.data.ab_evidence import read_evidence
from ray_app.data.live_metrics import latest_gauges, read_live_metrics
from ray_app.registry.keys import KeyExists, NewKey, UnknownKey, add_key, list_keys, revoke_key
from ray_app.serving.auth import Authorizer
from ray_app.serving.schemas import (
    SCORE_DOC,
    AbEvidence,
    CacheStatus,
    Health,
    KeysResponse,
    LiveQuality,
    ModelsResponse,
    MonitoringResponse,
    NewKeyRequest,
    PredictionLogStatus,
    PredictRequest,
    PredictResponse,
    Readiness,
    ShadowStatus,
    VariantStatus,
    error_responses,
    limited_request,
)
from ray_app.serving.service import ApiError, PredictionService

logger = logging.getLogger("ray.serve")
REQUEST_ID = "x-request-id"
# The ids a client may choose; any other X-Request-ID is replaced, never echoed (the local
# HAProxy drops it first: ray_app/ops/cluster.py).
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_ID = 128

DESCRIPTION = f"""
Next-day return predictions for daily stock features, from models in the MLflow registry.

**Routing.** Requests are split between model variants by weight, sticky per key: the
`X-Client-Id` header when sent, else the request's set of tickers. While the weights stay the
same, a key always gets the same variant. A fraction of requests may be mirrored to a shadow
variant, whose answers are logged and never returned.

**Auth.** `/v1/*` needs `Authorization: Bearer <key>`: 401 without a known key, 403 when
the key's role may not call the route (`predict`: `/v1/predict`; `operator`: also
`/v1/models` and `/v1/monitoring`; `admin`: also `/v1/admin/keys`, which changes state), 429
with `Retry-After` over the key's rate limit; 503 with `Retry-After` when a replica's queue is
full. `/healthz`, `/readyz` and this schema are open.

**Score.** {SCORE_DOC}

**Headers.** Responses carry `X-Request-ID` (send 1-64 of `A-Za-z0-9._-` to choose it;
any other value is replaced), `X-Model-Variant`,
`X-Model-Name` and `X-Model-Version`.
"""


class RequestMetrics(Protocol):
    def request(self, variant: str, status: int, latency_ms: float) -> None: ...


class BodyLimit:
    """Refuses bodies over ``max_bytes`` with 413 before the app parses them, whether the
    client declared the length or streamed the body in chunks."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, send, 413 if declared.isdigit() else 400)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._refuse(scope, send, 413)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send, status: int) -> None:
        reason = (
            f"request body larger than {self.max_bytes} bytes"
            if status == 413
            else "invalid Content-Length header"
        )
        await JSONResponse({"detail": reason}, status_code=status)(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class InternalErrors:
    """Anything unforeseen as a 500 that names the request id, with the traceback in the log
    (which the replica's filter redacts: ``redact_serve_logs``) and not in the response.

    The error stops here. Starlette's own 500 handler re-raises it, and Serve then logs it
    again in the replica and, as a ``RayTaskError`` quoting the message, in the proxy, where
    no filter of ours runs. Inside ``AccessLog``, so the access line carries the error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_started(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_started)
        except Exception as exc:
            state = scope["state"]
            logger.exception("unhandled error in request %s", state["request_id"])
            state["error"] = f"{type(exc).__name__}: {exc}"
            if not started:
                detail = f"internal error; request id {state['request_id']}"
                await JSONResponse({"detail": detail}, status_code=500)(scope, receive, send)


class AccessLog:
    """One structured log line and the metrics of every API request: request id, API key id,
    client key, variant, model version, status and latency; never the API key itself."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = dict(scope["headers"])
        given = headers.get(REQUEST_ID.encode(), b"").decode("latin-1")
        if not VALID_REQUEST_ID.fullmatch(given):
            given = ""
        state = scope.setdefault("state", {})
        state["request_id"] = given or uuid.uuid4().hex
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if not given:  # Serve's proxy adds the header when it set the id itself
                    message.setdefault("headers", []).append(
                        (b"x-request-id", state["request_id"].encode())
                    )
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self._record(scope, headers, state, status, (time.perf_counter() - start) * 1e3)

    def _record(
        self,
        scope: Scope,
        headers: dict[bytes, bytes],
        state: dict[str, Any],
        status: int,
        latency_ms: float,
    ) -> None:
        path = scope["path"]
        if not path.startswith("/v1/"):
            return
        variant = state.get("variant", "none")
        self.metrics.request(variant, status, latency_ms)
        record = access_fields(  # ECS names (ray_app/core/logs.py)
            request_id=state["request_id"],
            method=scope["method"],
            path=path,
            status=status,
            latency_ms=latency_ms,
            client_key=headers.get(b"x-client-id", b"").decode("latin-1")[:MAX_ID] or None,
            api_key_id=state.get("api_key_id"),
            variant=variant,
            model_name=state.get("model_name"),
            model_version=state.get("model_version"),
            tickers=state.get("tickers"),
            cache_hits=state.get("cache_hits"),
            error=state.get("error"),
            shadow=state.get("shadow") or None,
        )
        logger.info(
            "%s %s %s %.1fms id=%s",
            scope["method"],
            path,
            status,
            latency_ms,
            state["request_id"],
            extra={"ray_serve_extra_fields": record},
        )


def make_api(
    service: PredictionService, metrics: RequestMetrics, auth: Authorizer, root: DataRoot
) -> FastAPI:
    """The FastAPI app of one ingress replica."""
    app = FastAPI(title="ray-app prediction API", version="1.0", description=DESCRIPTION)
    app.add_middleware(BodyLimit, max_bytes=service.args.max_body_bytes)
    app.add_middleware(InternalErrors)  # the last added is the outermost
    app.add_middleware(AccessLog, metrics=metrics)
    _errors(app)
    bearer = HTTPBearer(auto_error=False, description="An API key")

    def allowed(role: Role) -> Any:
        """The dependency of a route that needs ``role`` (or a higher one)."""

        async def check(  # async: FastAPI runs a plain def in a thread pool, per request
            request: Request,
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        ) -> Caller:
            caller = auth.caller(credentials.credentials if credentials else None)
            if caller is None:
                auth.metrics.auth_refused("unauthenticated")
                raise HTTPException(
                    401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"}
                )
            request.state.api_key_id = caller.key_id
            if caller.role < role:
                auth.metrics.auth_refused("forbidden")
                raise HTTPException(
                    403,
                    f"API key {caller.key_id} has role {caller.role.name}; this needs {role.name}",
                )
            limiter = auth.limiter
            wait = limiter.retry_after(caller) if limiter else None
            if limiter is not None and wait is not None:
                auth.metrics.auth_refused("rate_limited")
                raise HTTPException(
                    429,
                    f"API key {caller.key_id} is over its limit of {limiter.limit(caller)} "
                    f"requests per {limiter.spec.window_s} s",
                    headers={"Retry-After": str(wait)},
                )
            return caller

        return Depends(check)

    body_model = limited_request(service.args.max_tickers)

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=error_responses(400, 401, 403, 404, 413, 422, 429, 503),
        dependencies=[allowed(Role.predict)],
        summary="Predict next-day returns",
    )
    async def predict(
        body: body_model,  # type: ignore[valid-type]
        request: Request,
        response: Response,
        x_client_id: Annotated[
            str | None, Header(max_length=MAX_ID, description="Sticky routing key")
        ] = None,
    ) -> PredictResponse:
        state, wanted = request.state, cast(PredictRequest, body)
        state.tickers = len(wanted.tickers)
        answer = await service.predict(wanted, x_client_id, state.request_id)
        out = answer.response
        state.variant, state.model_name, state.model_version = (
            out.variant,
            out.model_name,
            out.model_version,
        )
        state.cache_hits, state.shadow = answer.cache_hits, answer.shadow
        response.headers["X-Model-Variant"] = out.variant
        response.headers["X-Model-Name"] = out.model_name
        response.headers["X-Model-Version"] = str(out.model_version)
        return out

    @app.get(
        "/v1/models",
        response_model=ModelsResponse,
        responses=error_responses(401, 403, 429, 503),
        dependencies=[allowed(Role.operator)],
        summary="Variants, versions, weights and the shadow",
    )
    async def models() -> ModelsResponse:
        await service.refresh()  # operators asking want the current answer
        return models_status(service, auth.spec.mode)

    @app.get(
        "/v1/monitoring",
        response_model=MonitoringResponse,
        responses=error_responses(401, 403, 429),
        dependencies=[allowed(Role.operator)],
        summary="Live quality against realised returns, and the newest A/B evidence",
    )
    async def monitoring() -> MonitoringResponse:
        return await asyncio.to_thread(monitoring_view, root)

    _admin_routes(app, auth, allowed(Role.admin))

    @app.get("/healthz", response_model=Health, summary="Liveness: the replica answers")
    async def healthz() -> Health:
        return Health()

    @app.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness}},
        summary="Readiness: features loaded and the primary variant has a model; reason codes "
        "for every variant",
    )
    async def readyz() -> JSONResponse:
        await service.fresh()  # probes come often and must be quick: reask in the background
        ready, reasons = service.readiness()
        body = Readiness(ready=ready, reasons=reasons)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    return app


def _admin_routes(app: FastAPI, auth: Authorizer, admin: Any) -> None:
    """The routes that change state: the API keys, changed as ``ray-app keys`` changes them
    (``ray_app.registry.keys``: audited first, with the calling key's id as the actor)."""
    responses = error_responses(401, 403, 409, 429)

    def changes() -> tuple[Any, Any]:
        if auth.keys is None:
            raise ApiError(409, "auth.mode is insecure: this API checks no keys to change")
        return auth.settings, auth.keys.secrets

    @app.get("/v1/admin/keys", response_model=KeysResponse, responses=responses, summary="API keys")
    async def keys(_: Annotated[Caller, admin]) -> KeysResponse:
        return KeysResponse(keys=await asyncio.to_thread(list_keys, changes()[1]))

    @app.post(
        "/v1/admin/keys",
        status_code=201,
        response_model=NewKey,
        responses=error_responses(401, 403, 409, 422, 429),
        summary="Make an API key; the answer is the only time the key is shown",
    )
    async def add(body: NewKeyRequest, caller: Annotated[Caller, admin]) -> NewKey:
        settings, secrets = changes()
        actor = f"api-key:{caller.key_id}"
        with _conflicts():
            return await asyncio.to_thread(
                add_key, settings, secrets, body.id, body.role, body.rate_limit, actor
            )

    @app.delete(
        "/v1/admin/keys/{key_id}",
        status_code=204,
        responses=error_responses(401, 403, 404, 409, 429),
        summary="Revoke an API key: every replica refuses it within secrets.refresh_s + 1 s",
    )
    async def revoke(key_id: str, caller: Annotated[Caller, admin]) -> Response:
        settings, secrets = changes()
        with _conflicts():
            await asyncio.to_thread(
                revoke_key, settings, secrets, key_id, f"api-key:{caller.key_id}"
            )
        return Response(status_code=204)


@contextlib.contextmanager
def _conflicts() -> Iterator[None]:
    """A key change's refusals as HTTP statuses: a taken id or a secret that cannot be written
    (the env backend, the last key) is 409, an unknown id 404."""
    try:
        yield
    except UnknownKey as exc:
        raise ApiError(404, str(exc)) from None
    except (KeyExists, SecretError) as exc:
        raise ApiError(409, str(exc)) from None


def _errors(app: FastAPI) -> None:
    """Service errors as their status and reason, without the userinfo of any URI in it: a
    reason may quote an exception."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        request.state.error = reason = redact_uris(exc.reason)
        return JSONResponse({"detail": reason}, status_code=exc.status)

    app.add_exception_handler(ApiError, api_error)


def models_status(service: PredictionService, auth_mode: str) -> ModelsResponse:
    """What ``/v1/models`` shows: each variant's model and share, the shadow, the cache."""
    config, table, gate = service.config, service.table, service.gate
    if config is None or table is None:
        raise ApiError(503, "the ingress is not configured yet")
    shadow = config.shadow
    variants = [
        VariantStatus(
            name=info.name,
            ref=info.ref,
            weight=config.weights[name],
            shadow_fraction=shadow.fraction if shadow and shadow.variant == name else 0.0,
            ready=info.ready,
            model_name=info.model,
            model_version=info.version,
            kind=info.kind,
            feature_version=info.feature_version,
            loaded_at=info.loaded_at,
            error=info.error,
            precomputed=service.precomputes(name),
        )
        for name, info in service.infos.items()
    ]
    stats = service.cache.stats
    return ModelsResponse(
        primary=service.args.primary,
        auth=auth_mode,
        routing="sticky weighted split by X-Client-Id, else by the request's tickers",
        variants=variants,
        shadow=None
        if shadow is None or gate is None
        else ShadowStatus(
            variant=shadow.variant,
            fraction=shadow.fraction,
            in_flight=gate.in_flight,
            **gate.counts,
        ),
        feature_version=table.feature_version,
        feature_dates=(table.first_date, table.last_date),
        cache=CacheStatus(
            size=len(service.cache),
            max_size=service.cache.max_size,
            ttl_s=service.cache.ttl_s,
            hits=stats.hits,
            misses=stats.misses,
            precomputed=service.precomputed_answers,
        ),
        prediction_log=None
        if service.log is None
        else PredictionLogStatus(enabled=config.prediction_log, **service.log.status()),
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def monitoring_view(root: DataRoot) -> MonitoringResponse:
    """What ``/v1/monitoring`` shows: the monitor's newest live metrics per variant and
    window, and the A/B evidence of the newest daily step (the tables the gauges come from)."""
    live = [
        LiveQuality(
            variant=gauge.variant,
            window=gauge.window,
            metrics={name: _finite(value) for name, value in gauge.values.items()},
            pending_days=gauge.pending_days,
        )
        for gauge in latest_gauges(read_live_metrics(root))
    ]
    evidence = read_evidence(root)
    rows = [] if evidence is None else evidence.to_dict("records")
    ab = [
        AbEvidence.model_validate(
            {k: _finite(v) if isinstance(v, float) else v for k, v in row.items()}
        )
        for row in rows
    ]
    return MonitoringResponse(live=live, ab=ab)
