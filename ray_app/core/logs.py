"""Log lines in ECS (Elastic Common Schema) field names: one JSON object per line.

Every line the project writes carries ``@timestamp``, ``log.level``, ``message``,
``service.name`` and, inside a request, ``trace.id`` (the request id), so Elasticsearch or
OpenSearch can search the platform's own lines and Ray's together: log-shipping/ maps the
fields of Ray's and Serve's own JSON logs onto the same names.

Nothing here runs at import. Entrypoints (the CLI, and so jobs/) call :func:`configure`. The
Serve ingress does not format its own lines: Serve's JSON formatter writes them, with the
record's ``ray_serve_extra_fields`` at the top level; :func:`access_fields` gives those extra
fields their ECS names, and :class:`EcsFormatter` writes a record carrying them the same way.
Both strip the userinfo of URIs: ``EcsFormatter`` as it formats, and each replica's
:class:`RedactUris` filter before Serve's formatters see a record.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import IO, Any

from ray_app.core.secrets import redact_uris

ECS_VERSION = "8.17.0"
SERVICE_NAME = "ray-app"
# Serve's attribute for a record's extra fields (it puts them at the top of its JSON lines).
EXTRA_FIELDS = "ray_serve_extra_fields"
SERVE_LOGGER = "ray.serve"  # the logger of Serve's replicas, whose handlers Serve sets
LEVEL_ENV = "RAY_APP_LOG_LEVEL"
ACCESS_DATASET = "ray_app.access"


def timestamp(created: float) -> str:
    """``record.created`` as ECS's ``@timestamp``: ISO 8601 in UTC, milliseconds, ``Z``."""
    moment = dt.datetime.fromtimestamp(created, tz=dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ecs_document(record: logging.LogRecord, service_name: str = SERVICE_NAME) -> dict[str, Any]:
    """The ECS fields of one log record (dotted names, as Elasticsearch accepts them)."""
    doc: dict[str, Any] = {
        "@timestamp": timestamp(record.created),
        "log.level": record.levelname.lower(),
        "message": redact_uris(record.getMessage()),
        "ecs.version": ECS_VERSION,
        "service.name": service_name,
        "log.logger": record.name,
        "log.origin.file.name": record.filename,
        "log.origin.file.line": record.lineno,
        "log.origin.function": record.funcName,
        "process.pid": record.process,
        "process.thread.name": record.threadName,
    }
    request_id = getattr(record, "request_id", None)  # set by Serve inside a request
    if request_id:
        doc["trace.id"] = request_id
    if record.exc_info and record.exc_info[0] is not None:
        kind, error, _ = record.exc_info
        doc["error.type"] = kind.__name__
        doc["error.message"] = redact_uris(str(error))
        doc["error.stack_trace"] = redact_uris(logging.Formatter().formatException(record.exc_info))
    extra = getattr(record, EXTRA_FIELDS, None)
    if isinstance(extra, dict):
        doc.update(extra)
    return doc


class EcsFormatter(logging.Formatter):
    """One ECS JSON object per record."""

    def __init__(self, service_name: str = SERVICE_NAME) -> None:
        super().__init__()
        self.service_name = service_name

    def format(self, record: logging.LogRecord) -> str:
        doc = ecs_document(record, self.service_name)
        return json.dumps(doc, default=str, ensure_ascii=False)


class RedactUris(logging.Filter):
    """Strips the userinfo from every URI in a record before any handler formats it: its
    message, its traceback and the string values of its extra fields. Serve's own formatters,
    not :class:`EcsFormatter`, write a replica's lines, so the redaction cannot live in the
    formatter there."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.msg, record.args = redact_uris(record.getMessage()), ()
        except (TypeError, ValueError):  # a bad format string: the handler reports it
            return True
        if record.exc_info and record.exc_info[0] is not None:
            # Formatters reuse exc_text rather than format the exception again.
            record.exc_text = redact_uris(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact_uris(record.stack_info)
        extra = getattr(record, EXTRA_FIELDS, None)
        if isinstance(extra, dict):
            redacted = {k: redact_uris(v) if isinstance(v, str) else v for k, v in extra.items()}
            setattr(record, EXTRA_FIELDS, redacted)
        return True


class _RedactingFactory:
    """A log record factory that redacts each record as it is made (``RedactUris``)."""

    def __init__(self, make: Callable[..., logging.LogRecord]) -> None:
        self.make = make
        self.redact = RedactUris()

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.make(*args, **kwargs)
        self.redact.filter(record)
        return record


def redact_every_record() -> None:
    """Strip the userinfo of URIs from every log record this process makes, whichever logger
    makes it and whichever handler writes it. In a Ray worker, MLflow's, SQLAlchemy's and
    urllib3's lines go to handlers Ray sets up, not ours, so a filter or formatter of ours
    would never see them. ``runtime.connect`` has Ray run this in every worker of a ray-app
    job (``worker_process_setup_hook``); ``configure`` runs it in the CLI. Idempotent."""
    make = logging.getLogRecordFactory()
    if not isinstance(make, _RedactingFactory):
        logging.setLogRecordFactory(_RedactingFactory(make))


def redact_serve_logs() -> None:
    """Redact every record of Serve's logger in this process: the replica's own lines, Serve's
    (a failed request's traceback) and the prints it redirects there. Called first by each
    replica; a filter on the logger survives Serve replacing its handlers on a new
    ``logging_config``."""
    logger = logging.getLogger(SERVE_LOGGER)
    if not any(isinstance(f, RedactUris) for f in logger.filters):
        logger.addFilter(RedactUris())


def configure(level: str | int | None = None, stream: IO[str] | None = None) -> None:
    """Send the root logger's records to ``stream`` (stderr) as ECS JSON lines, at ``level``
    (else ``RAY_APP_LOG_LEVEL``, else WARNING). Replaces the handlers an earlier call added."""
    level = level or os.environ.get(LEVEL_ENV, "WARNING").upper()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h.formatter, EcsFormatter)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(EcsFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    redact_every_record()


def access_fields(
    *,
    request_id: str,
    method: str,
    path: str,
    status: int,
    latency_ms: float,
    client_key: str | None = None,
    api_key_id: str | None = None,
    variant: str | None = None,
    model_name: str | None = None,
    model_version: int | str | None = None,
    tickers: int | None = None,
    cache_hits: int | None = None,
    error: str | None = None,
    shadow: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The extra fields of one HTTP request's access line, in ECS names; ray-app's own
    (variant, model, tickers, cache hits, shadow) under ``ray_app.``. Unknown values are left
    out rather than written as null."""
    fields: dict[str, Any] = {
        "event.dataset": ACCESS_DATASET,
        "event.kind": "event",
        "event.category": ["web"],
        "event.outcome": "success" if status < 400 else "failure",
        "event.duration": round(latency_ms * 1e6),  # nanoseconds, as ECS has it
        "service.name": SERVICE_NAME,
        "trace.id": request_id,
        "http.request.method": method,
        "url.path": path,
        "http.response.status_code": status,
        "ray_app.client_key": client_key,
        "ray_app.api_key_id": api_key_id,
        "ray_app.variant": variant,
        "ray_app.model.name": model_name,
        "ray_app.model.version": None if model_version is None else str(model_version),
        "ray_app.tickers": tickers,
        "ray_app.cache_hits": cache_hits,
        "ray_app.shadow": shadow,
        "error.message": error,
    }
    return {name: value for name, value in fields.items() if value is not None}
