"""API keys of the HTTP API, kept as SHA-256 hashes with a role in the secret ``api_key_hashes``.

The secret is a JSON object ``{"<key id>": {"hash": "<sha256 hex>", "role": "<role>"}}``,
with an optional ``"rate_limit"`` (requests per window) where one key needs its own quota;
a bare ``"<sha256 hex>"`` value is a key of role ``predict`` (the least). The ingress never
holds a key itself, and the id names who called (in access logs, the audit trail and
revocation) without the key. Keys are ``new_api_key()`` tokens, 32 random bytes, so one
unsalted SHA-256 is enough (no password hashing needed). An entry's hash is
``printf %s "$KEY" | sha256sum`` (or ``hash_api_key``).

Roles are ordered, each allowing what the ones below it allow: ``predict`` calls
``/v1/predict``; ``operator`` also reads ``/v1/models`` and the monitoring view; ``admin``
also calls the endpoints that change state.

Rotation: write the new hashes to the secret. The ingress calls ``ApiKeys.reload`` every
second, and the secret is read again once ``secrets.refresh_s`` has passed, so a new key
works, and a removed one stops working, within ``refresh_s`` plus a second.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from secrets import token_urlsafe

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ray_app.core.secrets import (
    API_CLIENT_KEY,
    API_KEY_HASHES,
    PLACEHOLDERS,
    SecretError,
    Secrets,
    open_secrets,
)
from ray_app.core.settings import Settings

KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
KEY_BYTES = 32


class Role(enum.IntEnum):
    """What a key may do; a higher role may do everything a lower one may."""

    predict = 1
    operator = 2
    admin = 3


class KeyEntry(BaseModel):
    """One key in ``api_key_hashes``: the hash of the key and its role."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hash: str
    role: Role = Role.predict
    rate_limit: int | None = Field(
        None, ge=1, description="Requests per window for this key; null: the API's own limit"
    )

    @field_validator("role", mode="before")
    @classmethod
    def _by_name(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return Role[value]
            except KeyError:
                raise ValueError(f"role must be one of {[r.name for r in Role]}") from None
        return value

    @field_validator("hash")
    @classmethod
    def _sha256(cls, value: str) -> str:
        if not _SHA256.match(value):
            raise ValueError("hash must be a lower-case SHA-256 hex digest")
        return value

    def as_json(self) -> dict[str, str | int]:
        limit = {} if self.rate_limit is None else {"rate_limit": self.rate_limit}
        return {"hash": self.hash, "role": self.role.name, **limit}


@dataclass(frozen=True)
class Caller:
    """Who a request authenticated as: the key's id (never the key) and its role."""

    key_id: str
    role: Role
    rate_limit: int | None = None


def new_api_key() -> str:
    """A fresh key: ``KEY_BYTES`` random bytes, URL-safe text."""
    return token_urlsafe(KEY_BYTES)


def hash_api_key(key: str) -> str:
    """The ``hash`` of ``key`` in ``api_key_hashes``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


# A hash of "changeme" is still a placeholder key: refused where placeholders are.
_PLACEHOLDER_HASHES = frozenset(hash_api_key(p) for p in PLACEHOLDERS)


class ApiKeys:
    """The accepted keys: read at start, read again on ``reload`` (a rotation), matched
    without any I/O, so a request never waits for the secrets backend."""

    def __init__(self, secrets: Secrets) -> None:
        self.secrets = secrets
        self._parsed: tuple[str, dict[str, KeyEntry]] = ("", {})
        self.reload()  # fail at start, not at the first request, when the secret is unusable

    def reload(self) -> dict[str, KeyEntry]:
        """``{key id: entry}`` from the secret as ``secrets`` has it now (a backend read at
        most every ``secrets.refresh_s``); parsed again only when its value changed."""
        raw = self.secrets.get(API_KEY_HASHES).get_secret_value()
        if self._parsed[0] != raw:
            self._parsed = (raw, self._parse(raw))
        return self._parsed[1]

    def match(self, presented: str) -> Caller | None:
        """Who ``presented`` authenticates, or None. Compares with every hash in constant
        time, so timing tells nothing about which entry came close."""
        digest = hash_api_key(presented)
        found = None
        for key_id, entry in self._parsed[1].items():
            if hmac.compare_digest(digest, entry.hash):
                found = Caller(key_id, entry.role, entry.rate_limit)
        return found

    def _parse(self, raw: str) -> dict[str, KeyEntry]:
        try:
            loaded = json.loads(raw)
        except json.JSONDecodeError:
            loaded = None
        if not isinstance(loaded, dict) or not loaded:
            raise SecretError(
                f"secret {API_KEY_HASHES} must be a non-empty JSON object "
                '{"<key id>": {"hash": "<sha256 hex>", "role": "predict|operator|admin"}}'
            )
        return {key_id: self._entry(key_id, value) for key_id, value in loaded.items()}

    def _entry(self, key_id: str, value: object) -> KeyEntry:
        try:
            if not KEY_ID.match(key_id):
                raise ValueError("bad id")
            entry = KeyEntry.model_validate({"hash": value} if isinstance(value, str) else value)
        except (ValueError, ValidationError):  # the message would quote the value
            raise SecretError(
                f"secret {API_KEY_HASHES}: entry {key_id[:64]!r} needs an id of letters, "
                "digits, '_.-', a lower-case SHA-256 hex digest, a role of predict, "
                "operator or admin, and an optional rate_limit of at least 1"
            ) from None
        if entry.hash in _PLACEHOLDER_HASHES and not self.secrets.allow_placeholders:
            raise SecretError(
                f"secret {API_KEY_HASHES}: key {key_id} is a well-known placeholder; "
                "refused outside environment dev"
            )
        return entry


def stored_entries(secrets: Secrets) -> dict[str, KeyEntry]:
    """The keys in the secret now (none when it is not set yet), read from the backend
    whatever ``secrets`` cached, for changing them."""
    value = secrets.optional(API_KEY_HASHES, fresh=True)
    return {} if value is None else ApiKeys(secrets).reload()


def write_entries(secrets: Secrets, entries: dict[str, KeyEntry]) -> None:
    """Replace the secret with ``entries`` (at least one: an API with no key refuses all)."""
    if not entries:
        raise SecretError(f"secret {API_KEY_HASHES} would hold no key; revoke after adding one")
    body = {key_id: entry.as_json() for key_id, entry in sorted(entries.items())}
    secrets.set(API_KEY_HASHES, json.dumps(body))


def client_key(settings: Settings) -> str | None:
    """The key the platform's own requests send (the deployment's smoke prediction, the
    replay): the secret ``api_client_key``, else the local key ``ray-app cluster up`` made
    (``cluster.api_key_path``), else None (an API without keys, or no key here)."""
    value = open_secrets(settings).optional(API_CLIENT_KEY)
    if value is not None:
        return value.get_secret_value()
    path = settings.cluster.api_key_path.expanduser()
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def auth_header(key: str | None) -> dict[str, str]:
    """The ``Authorization`` header that sends ``key``; none without one."""
    return {"Authorization": f"Bearer {key}"} if key else {}
