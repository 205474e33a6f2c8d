"""API key hashes and roles from the secrets backend: matching, roles, rotation within
refresh_s, refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ray_app.core.api_keys import KEY_BYTES, ApiKeys, Caller, Role, hash_api_key, new_api_key
from ray_app.core.secrets import FileBackend, SecretError, Secrets

KEY_A = "k-3f0c9d1b8e7a46b2a1c5d9e0f7b3a2c1"
KEY_B = "k-7e1d2c3b4a5968778695a4b3c2d1e0f9"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def write_hashes(folder: Path, keys: dict[str, str]) -> None:
    entries = {key_id: hash_api_key(key) for key_id, key in keys.items()}
    (folder / "api_key_hashes").write_text(json.dumps(entries))


def api_keys(folder: Path, prod: bool = False, clock: Clock | None = None) -> ApiKeys:
    secrets = Secrets(
        FileBackend(folder), 10.0, allow_placeholders=not prod, clock=clock or Clock()
    )
    return ApiKeys(secrets)


def test_a_key_matches_its_id_and_nothing_else(tmp_path: Path) -> None:
    write_hashes(tmp_path, {"alice": KEY_A, "bob": KEY_B})
    keys = api_keys(tmp_path)
    assert keys.match(KEY_A) == Caller("alice", Role.predict)
    assert keys.match(KEY_B) == Caller("bob", Role.predict)
    assert keys.match("") is None and keys.match(KEY_A + "x") is None


def test_an_entry_carries_its_role_and_roles_are_ordered(tmp_path: Path) -> None:
    entries = {
        "ops": {"hash": hash_api_key(KEY_A), "role": "operator"},
        "root": {"hash": hash_api_key(KEY_B), "role": "admin"},
    }
    (tmp_path / "api_key_hashes").write_text(json.dumps(entries))
    keys = api_keys(tmp_path)
    assert keys.match(KEY_A) == Caller("ops", Role.operator)
    assert keys.match(KEY_B) == Caller("root", Role.admin)
    assert Role.predict < Role.operator < Role.admin


def test_new_keys_hold_32_random_bytes() -> None:
    made = {new_api_key() for _ in range(100)}
    assert len(made) == 100 and KEY_BYTES == 32
    assert all(len(k) >= 43 for k in made)  # 32 bytes in URL-safe base64, unpadded


def test_a_rotation_is_seen_at_the_first_reload_after_refresh_s(tmp_path: Path) -> None:
    clock = Clock()
    write_hashes(tmp_path, {"v1": KEY_A})
    keys = api_keys(tmp_path, clock=clock)
    write_hashes(tmp_path, {"v2": KEY_B})
    clock.now = 9.9
    keys.reload()
    assert keys.match(KEY_A) == Caller("v1", Role.predict) and keys.match(KEY_B) is None
    clock.now = 10.0
    assert keys.match(KEY_A) is not None  # matching alone never reads the secret
    keys.reload()
    assert keys.match(KEY_B) == Caller("v2", Role.predict) and keys.match(KEY_A) is None


@pytest.mark.parametrize(
    "content",
    [
        f"not json {KEY_A}",
        "[]",
        "{}",
        json.dumps({"alice": KEY_A}),  # the key itself, not its hash
        json.dumps({"bad id!": hash_api_key(KEY_A)}),
        json.dumps({"alice": hash_api_key(KEY_A).upper()}),
        json.dumps({"alice": {"hash": hash_api_key(KEY_A), "role": "root"}}),
        json.dumps({"alice": {"hash": hash_api_key(KEY_A), "extra": 1}}),
    ],
)
def test_a_malformed_secret_is_refused_at_start_without_its_content(
    content: str, tmp_path: Path
) -> None:
    (tmp_path / "api_key_hashes").write_text(content)
    with pytest.raises(SecretError, match="secret api_key_hashes") as info:
        api_keys(tmp_path)
    assert KEY_A not in str(info.value) and hash_api_key(KEY_A) not in str(info.value).lower()


def test_a_placeholder_key_is_refused_outside_dev(tmp_path: Path) -> None:
    write_hashes(tmp_path, {"ops": "changeme"})
    assert api_keys(tmp_path).match("changeme") == Caller("ops", Role.predict)
    with pytest.raises(SecretError, match="key ops is a well-known placeholder"):
        api_keys(tmp_path, prod=True)


def test_a_missing_secret_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="secret api_key_hashes is not set"):
        api_keys(tmp_path)


def test_keys_are_added_listed_and_revoked_through_the_cli_and_audited(tmp_path: Path) -> None:
    """`ray-app keys` as an operator runs it, on the file backend (a mounted Secret)."""
    from ray_app.core.settings import Settings
    from ray_app.registry.audit import audit_log, os_user
    from tests.conftest import ray_app_command

    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    env = {
        "RAY_APP_SECRETS__BACKEND": "file",
        "RAY_APP_SECRETS__DIR": str(secrets_dir),
        "RAY_APP_DATA_ROOT": str(tmp_path / "data"),
    }
    added = ray_app_command(["keys", "add", "desk-1", "--role", "operator"], env, plain=True)
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert "\n" not in key and len(key) >= 43 and "shown once" in added.stderr
    assert (secrets_dir / "api_key_hashes").stat().st_mode & 0o777 == 0o600
    keys = api_keys(secrets_dir)
    assert keys.match(key) == Caller("desk-1", Role.operator)
    assert key not in (secrets_dir / "api_key_hashes").read_text()

    other = ray_app_command(["keys", "add", "bot", "--rate-limit", "5"], env, plain=True)
    listed = ray_app_command(["keys", "list"], env, plain=True)
    assert other.returncode == 0 and listed.returncode == 0
    assert listed.stdout.splitlines() == [
        "bot: predict, 5/window",
        "desk-1: operator, the API's limit",
    ]
    for args, reason in [
        (["keys", "add", "desk-1"], "key id desk-1 exists"),
        (["keys", "add", "a/b"], "key id 'a/b'"),
        (["keys", "revoke", "nobody"], "no key 'nobody' (keys: bot, desk-1)"),
    ]:
        refused = ray_app_command(args, env, plain=True)
        assert refused.returncode == 2 and reason in refused.stderr, refused.stderr
    bad_role = ray_app_command(["keys", "add", "x", "--role", "root"], env, plain=True)
    assert bad_role.returncode == 2
    assert "role 'root': use one of predict, operator, admin" in bad_role.stderr

    assert ray_app_command(["keys", "revoke", "desk-1"], env, plain=True).returncode == 0
    assert api_keys(secrets_dir).match(key) is None
    last = ray_app_command(["keys", "revoke", "bot"], env, plain=True)
    assert last.returncode == 2 and "would hold no key" in last.stderr

    log = audit_log(Settings(data_root=str(tmp_path / "data")))
    assert [e["event"] for e in log] == [
        "api_key_added",
        "api_key_added",
        "api_key_revoked",
        "api_key_revoked",
        "api_key_revoked_failed",
    ]
    assert {e["actor"] for e in log} == {os_user()} and log[0]["role"] == "operator"
    assert key not in json.dumps(log)
    verified = ray_app_command(["audit", "verify"], env, plain=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_the_env_backend_cannot_be_written(tmp_path: Path) -> None:
    from tests.conftest import ray_app_command

    env = {"RAY_APP_SECRETS__BACKEND": "env", "RAY_APP_DATA_ROOT": str(tmp_path)}
    done = ray_app_command(["keys", "add", "desk-1"], env, plain=True)
    assert done.returncode == 2
    assert "env secrets backend cannot be written: set RAY_APP_SECRET_API_KEY_HASHES" in done.stderr


def test_key_changes_from_two_processes_at_once_keep_every_key(tmp_path: Path) -> None:
    """Two admin calls on two ingress replicas (here: two processes, each with its cached
    secrets) add keys at the same moment: the data root's lock makes each change read what the
    other wrote, so no key is dropped, and the audit chain stays intact."""
    import multiprocessing

    from ray_app.core.settings import Settings
    from ray_app.registry.audit import verify

    write_hashes(tmp_path, {"root": KEY_A})
    settings = Settings(data_root=str(tmp_path / "data"))
    context = multiprocessing.get_context("spawn")
    go = context.Barrier(2)  # both start changing at the same moment, imports done
    workers = [
        context.Process(target=_add_keys, args=(tmp_path, settings, prefix, go)) for prefix in "ab"
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    stored = json.loads((tmp_path / "api_key_hashes").read_text())
    assert sorted(stored) == sorted(["root", *(f"{p}{i}" for p in "ab" for i in range(20))])
    report = verify(settings)
    assert report.intact and report.entries == 40, report.problems


def _add_keys(folder: Path, settings: object, prefix: str, go: Any) -> None:
    from ray_app.registry.keys import add_key

    secrets = Secrets(FileBackend(folder), 10.0, allow_placeholders=True)
    go.wait()
    for i in range(20):
        add_key(settings, secrets, f"{prefix}{i}", "predict", None, "api-key:root")  # type: ignore[arg-type]
