"""The audit trail: promotions, rollbacks, gate rejections, backfills of model file hashes,
rollouts and API key changes (from the command line or the admin API) as hash-chained entries.

Each event is one JSON file under ``<data_root>/registry/audit`` (one object per event, so
the trail works on object stores and S3 Object Lock can keep each entry immutable). Entries
form a chain: each carries its sequence number, the previous entry's hash and its own hash
(SHA-256 over its canonical JSON without the ``hash`` field), and ``head.json`` names the
newest. ``verify`` recomputes the chain, so an edited, deleted or reordered entry is found.

Who acted is an authenticated identity: a component (``quality-gate``, ``pipeline``), an API
key's id, or the OS user the process runs as, read from its uid (``getpass.getuser`` reads
``LOGNAME`` first, which anyone can set). Appends hold the data root's ``audit`` lock, so two
writers never fork the chain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray_app.core.errors import RayAppError
from ray_app.core.secrets import redact_uris
from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot

AUDIT = ("registry", "audit")
HEAD = "head.json"
LOCK = "audit"
GENESIS = "0" * 64
CHAIN_FIELDS = ("seq", "prev_hash", "hash")


class ActorError(RayAppError):
    """A claimed actor that is not who runs the command."""


def os_user() -> str:
    """The user this process runs as, from its effective uid (not from the environment)."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid with no passwd entry (containers): the number is the identity
        return f"uid:{uid}"


def checked_actor(claimed: str | None) -> str:
    """``claimed`` when it is the OS user running the command (default: that user)."""
    real = os_user()
    if claimed is not None and claimed != real:
        raise ActorError(
            f"--actor {claimed} is not the OS user running this command ({real}): the audit "
            "trail records who acted, so run it as that user or leave --actor out"
        )
    return real


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 over the entry's canonical JSON, its own ``hash`` left out."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _file_name(at: dt.datetime, seq: int) -> str:
    """Time first, so a listing is in time order, as the entries written before the chain."""
    return f"{at.strftime('%Y%m%dT%H%M%S%fZ')}-{seq:08d}.json"


def _names(root: DataRoot) -> list[str]:
    return [n for n in root.list_files(*AUDIT) if n.endswith(".json") and n != HEAD]


def _tail(root: DataRoot) -> tuple[int, str, dt.datetime | None]:
    """(seq, hash, time) of the newest entry; legacy entries (no chain) hash as they are."""
    head = root.read_json(*AUDIT, HEAD)
    if head is not None:
        return int(head["seq"]), str(head["hash"]), dt.datetime.fromisoformat(head["at"])
    names = _names(root)
    if not names:
        return 0, GENESIS, None
    last = root.read_json(*AUDIT, names[-1]) or {}
    return len(names), last.get("hash") or entry_hash(last), None


def append(settings: Settings, event: str, actor: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Write one event at the end of the chain, and return it as written.

    ``actor`` is who acted (see the module docstring); the OS user is recorded beside it.
    """
    root = DataRoot(settings.data_root)
    with root.lock(LOCK, timeout_s=60):
        seq, prev_hash, last_at = _tail(root)
        at = _now()
        if last_at is not None and at <= last_at:  # a clock that went back keeps the order
            at = last_at + dt.timedelta(microseconds=1)
        entry = {
            "event": event,
            "model": settings.mlflow.model_name,
            "at": at.isoformat(timespec="microseconds"),
            **payload,
            "actor": actor,
            "os_user": os_user(),
            "seq": seq + 1,
            "prev_hash": prev_hash,
        }
        entry["hash"] = entry_hash(entry)
        root.write_json(entry, *AUDIT, _file_name(at, seq + 1))
        root.write_json({k: entry[k] for k in ("seq", "hash", "at")}, *AUDIT, HEAD)
    return entry


def recorded(
    settings: Settings,
    event: str,
    actor: str,
    payload: dict[str, Any],
    change: Callable[[], None],
) -> dict[str, Any]:
    """Append the event, then make the ``change``: the entry comes first so that no change
    goes unrecorded; a change that fails is recorded by a second entry (``<event>_failed``,
    naming the first's ``seq`` and the error, URIs without their userinfo) and re-raised. The
    first entry, as written."""
    entry = append(settings, event, actor, payload)
    try:
        change()
    except Exception as exc:
        failure: dict[str, Any] = {k: payload[k] for k in ("version", "key_id") if k in payload}
        failure.update(failed_seq=entry["seq"], reason=redact_uris(str(exc)))
        append(settings, f"{event}_failed", actor, failure)
        raise
    return entry


def audit_log(settings: Settings) -> list[dict[str, Any]]:
    """Every recorded event, oldest first."""
    root = DataRoot(settings.data_root)
    return [e for n in _names(root) if (e := root.read_json(*AUDIT, n)) is not None]


@dataclass
class AuditReport:
    """What ``verify`` found: entries checked, entries from before the chain, problems."""

    entries: int = 0
    legacy: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


def verify(settings: Settings) -> AuditReport:
    """Recompute the chain: every hash, every link, the sequence and the head.

    Entries written before the chain existed (no ``hash``) can only be counted: they are
    reported as legacy, and the first chained entry links to the last of them.
    """
    root = DataRoot(settings.data_root)
    report = AuditReport()
    prev_hash, seq = GENESIS, 0
    for name in _names(root):
        entry = root.read_json(*AUDIT, name) or {}
        report.entries += 1
        if "hash" not in entry:
            report.legacy += 1
            prev_hash, seq = entry_hash(entry), seq + 1
            continue
        report.problems += _check(name, entry, prev_hash, seq + 1)
        prev_hash, seq = str(entry.get("hash")), int(entry.get("seq", seq + 1))
    head = root.read_json(*AUDIT, HEAD)
    if head is not None and (head.get("seq"), head.get("hash")) != (seq, prev_hash):
        report.problems.append(
            f"{HEAD} names entry {head.get('seq')} but the chain ends at entry {seq}: "
            "entries were deleted from its end"
        )
    return report


def _check(name: str, entry: dict[str, Any], prev_hash: str, seq: int) -> list[str]:
    problems = []
    if entry_hash(entry) != entry.get("hash"):
        problems.append(f"{name}: its content does not match its hash (edited)")
    if entry.get("prev_hash") != prev_hash:
        problems.append(
            f"{name}: does not link to the entry before it (an entry was deleted, inserted "
            "or moved)"
        )
    if entry.get("seq") != seq:
        problems.append(f"{name}: is entry {entry.get('seq')} where entry {seq} was expected")
    return problems
