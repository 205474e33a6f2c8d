"""ECS log lines (ray_app/core/logs.py): the formatter, the CLI's set-up, the access fields.

tests/infra/test_log_shipping.py checks that these lines map onto the index template.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from ray_app.core import logs


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    """The root logger, its handlers, level and record factory put back after the test."""
    logger = logging.getLogger()
    saved = (list(logger.handlers), logger.level, logging.getLogRecordFactory())
    yield logger
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logging.setLogRecordFactory(saved[2])


def test_a_record_is_one_ecs_json_line(root: logging.Logger) -> None:
    stream = io.StringIO()
    logs.configure("INFO", stream=stream)
    logs.configure("INFO", stream=stream)  # a second call replaces, never doubles, the handler
    try:
        raise KeyError("AAPL")
    except KeyError:
        logging.getLogger("ray_app.x").exception("no %s", "bars", extra={"request_id": "r-1"})
    (line,) = stream.getvalue().splitlines()
    doc = json.loads(line)
    assert doc["@timestamp"].endswith("Z") and doc["log.level"] == "error"
    assert (doc["message"], doc["service.name"], doc["trace.id"]) == ("no bars", "ray-app", "r-1")
    assert (doc["error.type"], doc["error.message"]) == ("KeyError", "'AAPL'")
    assert doc["log.logger"] == "ray_app.x" and doc["ecs.version"] == logs.ECS_VERSION


def test_a_uri_in_a_line_or_its_traceback_loses_its_password(root: logging.Logger) -> None:
    stream = io.StringIO()
    logs.configure("INFO", stream=stream)
    uri = "postgresql://ray:hunter2-secret@db:5432/mlflow"
    try:
        raise ConnectionError(f"could not reach {uri}")
    except ConnectionError:
        logging.getLogger("ray_app.x").exception("tracking store %s is down", uri)
    (line,) = stream.getvalue().splitlines()
    assert "hunter2-secret" not in line
    doc = json.loads(line)
    assert doc["message"] == "tracking store postgresql://***@db:5432/mlflow is down"
    assert "postgresql://***@db:5432/mlflow" in doc["error.stack_trace"]


def test_level_comes_from_the_environment(
    root: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(logs.LEVEL_ENV, "error")
    logs.configure(stream=io.StringIO())
    assert root.level == logging.ERROR


def test_timestamp_is_utc_with_milliseconds() -> None:
    assert logs.timestamp(1_764_476_270.1239) == "2025-11-30T04:17:50.123Z"


def test_access_fields_use_ecs_names_and_leave_unknowns_out() -> None:
    fields = logs.access_fields(
        request_id="r-2",
        method="POST",
        path="/v1/predict",
        status=503,
        latency_ms=1.5,
        model_version=3,
    )
    assert fields == {
        "event.dataset": "ray_app.access",
        "event.kind": "event",
        "event.category": ["web"],
        "event.outcome": "failure",
        "event.duration": 1_500_000,
        "service.name": "ray-app",
        "trace.id": "r-2",
        "http.request.method": "POST",
        "url.path": "/v1/predict",
        "http.response.status_code": 503,
        "ray_app.model.version": "3",
    }
    # Serve's JSON formatter refuses an extra field that repeats one of its own keys.
    assert not set(fields) & {"message", "levelname", "asctime", "request_id", "deployment"}


def test_extra_fields_join_the_line() -> None:
    record = logging.LogRecord("ray.serve", logging.INFO, "api.py", 1, "GET", None, None)
    setattr(record, logs.EXTRA_FIELDS, {"url.path": "/v1/models"})
    doc = json.loads(logs.EcsFormatter().format(record))
    assert doc["url.path"] == "/v1/models" and "trace.id" not in doc


def test_every_record_loses_uri_passwords_whatever_writes_it(root: logging.Logger) -> None:
    """A library's logger with a handler of its own (as MLflow's lines reach Ray's handlers in
    a worker): neither our formatter nor a filter of ours sees them, the record factory does."""
    stream = io.StringIO()
    library = logging.getLogger("mlflow.store.test")
    library.addHandler(logging.StreamHandler(stream))
    library.propagate = False
    logs.redact_every_record()
    logs.redact_every_record()  # idempotent: one factory, not two
    try:
        library.warning("connecting to %s", "postgresql://mlflow:s3cret@db:5432/mlflow")
        try:
            raise ConnectionError("https://user:s3cret@vault:8200 refused")
        except ConnectionError:
            library.exception("failed")
    finally:
        library.handlers.clear()
        library.propagate = True
    out = stream.getvalue()
    assert "s3cret" not in out
    assert "postgresql://***@db:5432/mlflow" in out and "https://***@vault:8200" in out
