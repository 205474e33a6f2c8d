"""An ASGI app called in process, as an HTTP server calls it: no server, no HTTP client."""

from __future__ import annotations

import json
from typing import Any


async def asgi_post(
    app: Any, path: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, bytes]:
    """POST ``body`` to ``app``; the response's status and body."""
    sent = json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(sent))]
        + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("10.0.0.7", 50000),
        "server": ("10.0.0.1", 8000),
    }
    messages = [{"type": "http.request", "body": sent, "more_body": False}]
    status, answer = 0, b""

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, answer
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            answer += message.get("body", b"")

    await app(scope, receive, send)
    return status, answer
