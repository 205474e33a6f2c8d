"""API keys of the HTTP API, kept as SHA-256 hashes in the secret ``api_key_hashes``.

The secret is a JSON object ``{"<key id>": "<sha256 hex of the key>"}``: the ingress never
holds a key itself, and the id names who called (for logs and revocation) without the key.
Keys are long random tokens, so one unsalted SHA-256 is enough (no password hashing needed).
An entry's hash is ``printf %s "$KEY" | sha256sum`` (or ``hash_api_key``).

Rotation: write the new hashes to the secret; a running ``ApiKeys`` reads it again after
``secrets.refresh_s`` seconds, so a new key works, and a removed one stops working, within that.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re

from ray_app.core.secrets import API_KEY_HASHES, PLACEHOLDERS, SecretError, Secrets

_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def hash_api_key(key: str) -> str:
    """The entry for ``key`` in ``api_key_hashes``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


# A hash of "changeme" is still a placeholder key: refused where placeholders are.
_PLACEHOLDER_HASHES = frozenset(hash_api_key(p) for p in PLACEHOLDERS)


class ApiKeys:
    """The accepted keys, re-read through ``secrets`` (and so refreshed) on every call."""

    def __init__(self, secrets: Secrets) -> None:
        self.secrets = secrets
        self._parsed: tuple[str, dict[str, str]] | None = None
        self.hashes()  # fail at start, not at the first request, when the secret is unusable

    def hashes(self) -> dict[str, str]:
        """``{key id: sha256 hex}``; parsed again only when the secret's value changed."""
        raw = self.secrets.get(API_KEY_HASHES).get_secret_value()
        if self._parsed is None or self._parsed[0] != raw:
            self._parsed = (raw, self._parse(raw))
        return self._parsed[1]

    def match(self, presented: str) -> str | None:
        """The id of the key ``presented`` is, or None. Compares with every hash in constant
        time, so timing tells nothing about which entry came close."""
        digest = hash_api_key(presented)
        found = None
        for key_id, expected in self.hashes().items():
            if hmac.compare_digest(digest, expected):
                found = key_id
        return found

    def _parse(self, raw: str) -> dict[str, str]:
        try:
            entries = json.loads(raw)
        except json.JSONDecodeError:
            entries = None
        if not isinstance(entries, dict) or not entries:
            raise SecretError(
                f"secret {API_KEY_HASHES} must be a non-empty JSON object "
                '{"<key id>": "<sha256 hex>"}'
            )
        for key_id, digest in entries.items():
            if (
                not _KEY_ID.match(key_id)
                or not isinstance(digest, str)
                or not _SHA256.match(digest)
            ):
                raise SecretError(
                    f"secret {API_KEY_HASHES}: entry {key_id[:64]!r} needs an id of letters, "
                    "digits, '_.-' and a lower-case SHA-256 hex digest"
                )
            if digest in _PLACEHOLDER_HASHES and not self.secrets.allow_placeholders:
                raise SecretError(
                    f"secret {API_KEY_HASHES}: key {key_id} is a well-known placeholder; "
                    "refused outside environment dev"
                )
        return entries
