"""The platform's own client of the prediction API: the deployment's smoke prediction and the
replay's requests, sent with the key ``client_key`` finds (the secret ``api_client_key``, or
the local key of ``ray-app cluster up``).

A 401 or 403 is raised at once as ``ApiRefused``, naming the key's problem: retrying cannot
fix a wrong key, and waiting out a timeout would hide it. Other failures (a refused
connection while replicas start, a 503) are left to the caller's retry loop.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from ray_app.core.api_keys import auth_header, client_key
from ray_app.core.errors import RayAppError
from ray_app.core.settings import Settings


class ApiRefused(RayAppError):
    """The API refused this process's key (401: unknown or none; 403: its role)."""


class ApiClient:
    """Requests to ``pipeline.serve_url`` with this process's key."""

    def __init__(self, settings: Settings, timeout_s: float = 30.0) -> None:
        self.url = settings.pipeline.serve_url.rstrip("/")
        self.timeout_s = timeout_s
        self._headers = auth_header(client_key(settings))

    def get(self, path: str) -> bytes:
        return self._send(urllib.request.Request(self.url + path, headers=self._headers))

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> bytes:
        data = json.dumps(body).encode()
        sent = {"content-type": "application/json", **(headers or {}), **self._headers}
        return self._send(urllib.request.Request(self.url + path, data, sent))

    def _send(self, request: urllib.request.Request) -> bytes:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                return bytes(answer.read())
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                why = _detail(exc) if self._headers else "no key: set the secret api_client_key"
                raise ApiRefused(f"{request.full_url} refused with {exc.code}: {why}") from None
            raise


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read())["detail"])
    except (ValueError, KeyError, TypeError, OSError):
        return exc.reason if isinstance(exc.reason, str) else str(exc.code)
