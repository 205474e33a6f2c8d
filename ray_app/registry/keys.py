"""Audited changes to the prediction API's keys: the one place that adds and revokes them.

``ray-app keys`` (an OS user) and the admin API (an API key of role ``admin``) both come
here, so a key changes the same way whoever asks: checked, recorded in the audit trail before
the secret is written (and again when the write fails, ``audit.recorded``), then written
through the secrets backend. The env backend cannot be written; file and vault can.

A change reads the secret afresh and writes it back under the data root's ``api-keys`` lock,
so two changes on one machine (two admin calls on two replicas) never drop each other's key.
A data root on an object store has no lock: there, two changes at the same moment from two
machines can lose one (the audit trail still records both).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ray_app.core.api_keys import (
    KEY_ID,
    KeyEntry,
    Role,
    hash_api_key,
    new_api_key,
    stored_entries,
    write_entries,
)
from ray_app.core.errors import RayAppError
from ray_app.core.secrets import Secrets
from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.registry.audit import recorded

LOCK = "api-keys"
LOCK_TIMEOUT_S = 30.0  # a change holds it for one read and one write of the secret


class KeyExists(RayAppError):
    """A key id that is taken."""


class UnknownKey(RayAppError):
    """A key id that the secret does not hold."""


class KeyInfo(BaseModel):
    """A key as anyone may see it: id, role and own rate limit, never the key or its hash."""

    model_config = ConfigDict(frozen=True)

    id: str
    role: str
    rate_limit: int | None


class NewKey(KeyInfo):
    """A key just made: the only time the key itself is shown."""

    key: str


def list_keys(secrets: Secrets) -> list[KeyInfo]:
    """Every key in the secret, by id."""
    return [
        KeyInfo(id=key_id, role=entry.role.name, rate_limit=entry.rate_limit)
        for key_id, entry in sorted(stored_entries(secrets).items())
    ]


def add_key(
    settings: Settings,
    secrets: Secrets,
    key_id: str,
    role: str,
    rate_limit: int | None,
    actor: str,
) -> NewKey:
    """Make a key for ``key_id`` with ``role``, record it, then add its hash to the secret."""
    if not KEY_ID.match(key_id):
        raise RayAppError(f"key id {key_id[:64]!r}: use 1-64 of letters, digits and '._-'")
    if role not in Role.__members__:
        raise RayAppError(f"role {role[:64]!r}: use one of {', '.join(Role.__members__)}")
    if rate_limit is not None and rate_limit < 1:
        raise RayAppError(f"rate limit {rate_limit}: use at least 1 request per window")
    key = new_api_key()
    entry = KeyEntry(hash=hash_api_key(key), role=Role[role], rate_limit=rate_limit)
    with DataRoot(settings.data_root).lock(LOCK, LOCK_TIMEOUT_S):
        entries = stored_entries(secrets)
        if key_id in entries:
            raise KeyExists(f"key id {key_id} exists: revoke it first, or choose another id")
        payload = {"key_id": key_id, "role": role, "rate_limit": rate_limit}
        changed = {**entries, key_id: entry}
        recorded(settings, "api_key_added", actor, payload, lambda: write_entries(secrets, changed))
    return NewKey(id=key_id, role=role, rate_limit=rate_limit, key=key)


def revoke_key(settings: Settings, secrets: Secrets, key_id: str, actor: str) -> None:
    """Record the revocation, then remove ``key_id``'s hash from the secret (never the last)."""
    with DataRoot(settings.data_root).lock(LOCK, LOCK_TIMEOUT_S):
        entries = stored_entries(secrets)
        if entries.pop(key_id, None) is None:
            known = ", ".join(sorted(entries)) or "none"
            raise UnknownKey(f"no key {key_id[:64]!r} (keys: {known})")
        payload = {"key_id": key_id}
        recorded(
            settings, "api_key_revoked", actor, payload, lambda: write_entries(secrets, entries)
        )
