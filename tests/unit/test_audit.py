"""The audit trail is a hash chain: an edited, deleted or reordered entry is found, two
writers never fork it, the actor is the OS user (not LOGNAME), and an alias move is recorded
before it happens and again when it fails."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ray_app.core.settings import Settings
from ray_app.registry import audit
from ray_app.registry.versions import _audited


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_root=str(tmp_path / "data"))


def folder(settings: Settings) -> Path:
    return Path(settings.data_root, *audit.AUDIT)


def entries(settings: Settings) -> list[Path]:
    return sorted(p for p in folder(settings).glob("*.json") if p.name != audit.HEAD)


def write_events(settings: Settings, n: int) -> None:
    for i in range(n):
        audit.append(settings, "promote", "alice", {"version": i + 1, "reason": f"r{i}"})


def test_an_untouched_trail_is_intact(settings: Settings) -> None:
    write_events(settings, 4)
    report = audit.verify(settings)
    assert report.intact and report.entries == 4, report.problems
    log = audit.audit_log(settings)
    assert [e["seq"] for e in log] == [1, 2, 3, 4]
    assert log[0]["prev_hash"] == audit.GENESIS and log[1]["prev_hash"] == log[0]["hash"]


def edit(path: Path) -> None:
    entry = json.loads(path.read_text())
    entry["reason"] = "nothing to see"
    path.write_text(json.dumps(entry))


def delete(path: Path) -> None:
    path.unlink()


def swap(first: Path, second: Path) -> None:
    a, b = first.read_text(), second.read_text()
    first.write_text(b)
    second.write_text(a)


@pytest.mark.parametrize(
    ("tamper", "found"),
    [
        (lambda files: edit(files[1]), "does not match its hash (edited)"),
        (lambda files: delete(files[1]), "does not link to the entry before it"),
        (lambda files: swap(files[1], files[2]), "does not link to the entry before it"),
        (lambda files: delete(files[-1]), "entries were deleted from its end"),
    ],
    ids=["edited", "deleted", "reordered", "tail deleted"],
)
def test_tampering_is_found(settings: Settings, tamper: object, found: str) -> None:
    write_events(settings, 4)
    tamper(entries(settings))  # type: ignore[operator]
    report = audit.verify(settings)
    assert not report.intact
    assert any(found in problem for problem in report.problems), report.problems


def test_the_chain_continues_after_entries_written_before_it(settings: Settings) -> None:
    folder(settings).mkdir(parents=True)
    legacy = {"event": "promote", "model": "m", "at": "2026-01-01T00:00:00+00:00", "actor": "x"}
    (folder(settings) / "20260101T000000000000Z-0a1b.json").write_text(json.dumps(legacy))
    write_events(settings, 2)
    report = audit.verify(settings)
    assert report.intact and (report.entries, report.legacy) == (3, 1), report.problems
    assert audit.audit_log(settings)[1]["prev_hash"] == audit.entry_hash(legacy)


def test_concurrent_writers_never_fork_the_chain(settings: Settings) -> None:
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: write_events(settings, 3), range(4)))
    report = audit.verify(settings)
    assert report.intact and report.entries == 12, report.problems


def test_the_actor_is_the_os_user_whatever_logname_says(monkeypatch: pytest.MonkeyPatch) -> None:
    real = pwd.getpwuid(os.geteuid()).pw_name
    monkeypatch.setenv("LOGNAME", "mallory")
    monkeypatch.setenv("USER", "mallory")
    assert audit.checked_actor(None) == real == audit.os_user()
    assert audit.checked_actor(real) == real
    with pytest.raises(audit.ActorError, match="--actor mallory is not the OS user"):
        audit.checked_actor("mallory")


class Client:
    """What ``_audited`` asks of an MLflow client once the move is done: version tags."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.tags[key] = value


def test_a_move_is_recorded_before_it_happens_and_its_failure_after(settings: Settings) -> None:
    seen: list[int] = []

    def failing_move() -> None:
        seen.append(len(audit.audit_log(settings)))  # the entry exists before the move
        raise ConnectionError("registry unreachable")

    payload = {"version": 3, "actor": "alice", "reason": "better"}
    client = Client()
    with pytest.raises(ConnectionError):
        _audited(settings, client, "promote", 3, payload, failing_move)
    log = audit.audit_log(settings)
    assert seen == [1]
    assert [e["event"] for e in log] == ["promote", "promote_failed"]
    assert log[1]["failed_seq"] == 1 and "registry unreachable" in log[1]["reason"]
    assert client.tags == {}  # a failed move is not tagged as done
    _audited(settings, client, "promote", 3, payload)
    assert client.tags["promote.by"] == "alice" and audit.verify(settings).intact


def cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ray_app", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_audit_verify_through_the_command_line(settings: Settings) -> None:
    write_events(settings, 3)
    ok = cli(["audit", "verify", "--data-root", settings.data_root])
    assert ok.returncode == 0 and "audit trail intact: 3 entries" in ok.stdout, ok.stderr
    edit(entries(settings)[0])
    broken = cli(["audit", "verify", "--data-root", settings.data_root])
    assert broken.returncode == 1 and "BROKEN" in broken.stdout
    assert "does not match its hash (edited)" in broken.stderr


def test_a_claimed_actor_that_is_not_the_os_user_is_refused(settings: Settings) -> None:
    result = cli(
        ["promote", "--version", "1", "--reason", "x", "--actor", "mallory"],
        {"RAY_APP_DATA_ROOT": settings.data_root, "LOGNAME": "mallory"},
    )
    assert result.returncode == 2 and "--actor mallory is not the OS user" in result.stderr
    assert not folder(settings).exists()
