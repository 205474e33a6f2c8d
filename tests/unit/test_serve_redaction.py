"""No password of a URI leaves a serving replica: not in the lines Serve's own formatters write
for it (ray_app's ECS formatter is not used there), not in a response.

No Ray: the real FastAPI app of an ingress replica (``make_api``) over the fake variants of
test_serve_service, its ``ray.serve`` records written by Ray's JSON and text formatters.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray._common.formatters import JSONFormatter
from ray.serve._private.logging_utils import ServeFormatter

from ray_app.core.logs import RedactUris, redact_serve_logs
from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.serving.api import make_api
from ray_app.serving.args import AuthSpec, ServeArgs
from ray_app.serving.auth import Authorizer
from ray_app.serving.ingress import Ingress
from ray_app.serving.service import ApiError
from ray_app.serving.variant import Variant
from tests.unit.asgi import asgi_post
from tests.unit.test_serve_service import FakeVariant, Linear, make

PASSWORD = "p@ss-hunter2"  # an unencoded "@" as well
URI = f"postgresql://ray:{PASSWORD}@db:5432/mlflow"
INSECURE = AuthSpec(mode="insecure", rate_limit=None)


class Metrics:
    def request(self, variant: str, status: int, latency_ms: float) -> None:
        pass

    def auth_refused(self, reason: str) -> None:
        pass


@pytest.fixture
def serve_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Serve's logger as in a replica that called ``redact_serve_logs``: JSON lines (the log
    file) and text lines (stderr) into one stream; its filters and handlers put back after."""
    logger = logging.getLogger("ray.serve")
    monkeypatch.setattr(logger, "filters", [])
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", False)
    stream = io.StringIO()
    for formatter in (JSONFormatter(), ServeFormatter("ray-app_Ingress", "x1y2")):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    redact_serve_logs()
    yield stream


def _post(tmp_path: Path, fail: Exception) -> tuple[int, dict[str, Any]]:
    """One /v1/predict to an ingress app whose service raises ``fail``."""
    service, _ = make({"champion": FakeVariant("champion", Linear(1))})

    async def predict(*_: Any) -> Any:
        raise fail

    service.predict = predict  # type: ignore[method-assign]
    settings = Settings(data_root=str(tmp_path))
    app = make_api(service, Metrics(), Authorizer(INSECURE, settings, Metrics()), DataRoot(""))
    status, body = asyncio.run(
        asgi_post(app, "/v1/predict", {"tickers": ["AAPL"]}, {"X-Request-ID": "req-7"})
    )
    return status, json.loads(body)


def test_a_500_logs_its_traceback_and_error_without_the_password(
    serve_lines: io.StringIO, tmp_path: Path
) -> None:
    status, body = _post(tmp_path, ConnectionError(f"could not reach {URI}"))
    assert (status, body) == (500, {"detail": "internal error; request id req-7"})
    written = serve_lines.getvalue()
    assert PASSWORD not in written and "ss-hunter2" not in written
    *_, traceback, access = (json.loads(line) for line in written.splitlines() if line[0] == "{")
    error = "ConnectionError: could not reach postgresql://***@db:5432/mlflow"
    assert traceback["message"] == "unhandled error in request req-7"
    assert error in traceback["exc_text"]
    assert (access["http.response.status_code"], access["error.message"]) == (500, error)


def test_a_reason_that_quotes_a_uri_answers_without_the_password(
    serve_lines: io.StringIO, tmp_path: Path
) -> None:
    status, body = _post(tmp_path, ApiError(503, f"no model to serve: {URI} refused"))
    assert status == 503
    assert body == {"detail": "no model to serve: postgresql://***@db:5432/mlflow refused"}
    assert PASSWORD not in serve_lines.getvalue()


def test_the_filter_redacts_arguments_stacks_and_extra_fields(serve_lines: io.StringIO) -> None:
    logger = logging.getLogger("ray.serve")
    extra = {"ray_serve_extra_fields": {"error.message": URI, "ray_app.tickers": 2}}
    logger.warning("reading %s", URI, stack_info=True, extra=extra)
    assert PASSWORD not in serve_lines.getvalue()
    first = json.loads(serve_lines.getvalue().splitlines()[0])
    redacted = "postgresql://***@db:5432/mlflow"
    assert first["message"] == f"reading {redacted}"
    assert (first["error.message"], first["ray_app.tickers"]) == (redacted, 2)
    # A bad format string is left for the handler to report, as logging does without a filter.
    record = logging.LogRecord("ray.serve", logging.INFO, __file__, 1, "%s %s", ("a",), None)
    assert RedactUris().filter(record) and (record.msg, record.args) == ("%s %s", ("a",))


@pytest.mark.filterwarnings("ignore:coroutine 'Ingress.__del__' was never awaited")
def test_each_replica_redacts_its_serve_logs_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = logging.getLogger("ray.serve")
    monkeypatch.setattr(logger, "filters", [])
    args = ServeArgs(data_root=str(tmp_path), auth=INSECURE)
    Variant.func_or_class("champion", args)
    assert [type(f) for f in logger.filters] == [RedactUris]
    monkeypatch.setattr(logger, "filters", [])
    ingress = Ingress.func_or_class.__bases__[0](args, {})  # the class @serve.ingress wrapped
    Variant.func_or_class("challenger", args)
    assert [type(f) for f in logger.filters] == [RedactUris]
    del ingress
    gc.collect()
