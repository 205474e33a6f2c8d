"""The vault secrets backend against a real OpenBao (`bao server -dev`, API-compatible with
Vault): least-privilege reads, rotating the API keys while a reader runs, and no leaks."""

from __future__ import annotations

import json
import logging
import re
import secrets as token_source
import time
from pathlib import Path

import pytest

from ray_app.core.api_keys import ApiKeys, Caller, Role, hash_api_key
from ray_app.core.secrets import SecretError, open_secrets
from ray_app.core.settings import Settings
from tests.integration.vault import Bao

pytestmark = pytest.mark.integration

PATH = "ray-app"
REFRESH_S = 2.0
KEY_OLD = "k-" + token_source.token_hex(16)
KEY_NEW = "k-" + token_source.token_hex(16)
POLICY = f'path "secret/data/{PATH}" {{ capabilities = ["read"] }}'


def _write(bao: Bao, **values: object) -> None:
    bao.write(PATH, **values)


def _reader_token(bao: Bao) -> str:
    """A token that may read the one secret and nothing else, as the app's policy would."""
    return bao.token("ray-app-read", POLICY)


def _settings(bao: Bao, **vault: object) -> Settings:
    return Settings(
        environment="prod",
        secrets={
            "backend": "vault",
            "refresh_s": REFRESH_S,
            "vault": {"address": bao.address, "mount": "secret", "path": PATH, **vault},
        },
    )


def test_a_rotated_key_works_within_refresh_s_and_the_old_one_stops(
    bao: Bao, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(bao, api_key_hashes=json.dumps({"old": hash_api_key(KEY_OLD)}))
    token_file = tmp_path / "token"  # a Vault Agent's sink
    token_file.write_text(_reader_token(bao) + "\n")
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    keys = ApiKeys(open_secrets(_settings(bao, token_file=str(token_file))))
    assert keys.match(KEY_OLD) == Caller("old", Role.predict) and keys.match(KEY_NEW) is None

    # As a JSON object this time (KV v2 values may be any JSON), with a role.
    _write(bao, api_key_hashes={"new": {"hash": hash_api_key(KEY_NEW), "role": "operator"}})
    rotated = time.monotonic()
    while keys.match(KEY_NEW) is None:
        assert keys.match(KEY_OLD) is not None, "neither key worked during the rotation"
        assert time.monotonic() - rotated < REFRESH_S + 1.0, "the new key was not seen in time"
        time.sleep(0.05)
        keys.reload()  # what the ingress does every second
    seen_after = time.monotonic() - rotated
    assert keys.match(KEY_OLD) is None and keys.match(KEY_NEW) == Caller("new", Role.operator)
    assert seen_after <= REFRESH_S + 0.5
    print(f"rotation seen after {seen_after:.2f} s (refresh_s={REFRESH_S})")


def test_refusals_name_the_secret_and_leak_nothing(
    bao: Bao, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    value = "v-" + token_source.token_hex(16)
    _write(bao, mlflow_password=value, redis_password="password1234")
    reader = _reader_token(bao)
    monkeypatch.setenv("RAY_APP_TEST_VAULT_TOKEN", reader)
    errors = []
    with caplog.at_level(logging.DEBUG):
        secrets = open_secrets(_settings(bao, token_env="RAY_APP_TEST_VAULT_TOKEN"))
        assert secrets.get("mlflow_password").get_secret_value() == value
        for name, expected in [
            ("redis_password", "well-known placeholder/default; refused outside"),
            ("api_key_hashes", f"not set (Vault {bao.address}, key api_key_hashes of secret/"),
        ]:
            with pytest.raises(SecretError, match=re.escape(expected)) as info:
                secrets.get(name)
            errors.append(str(info.value))
        other = open_secrets(_settings(bao, token_env="RAY_APP_TEST_VAULT_TOKEN", path="other"))
        with pytest.raises(SecretError, match="Forbidden") as info:  # outside the policy
            other.get("mlflow_password")
        errors.append(str(info.value))
        monkeypatch.setenv("RAY_APP_TEST_VAULT_TOKEN", "not-" + reader)
        with pytest.raises(SecretError, match="Forbidden") as info:
            open_secrets(_settings(bao, token_env="RAY_APP_TEST_VAULT_TOKEN")).get("x")
        errors.append(str(info.value))
    logged = [record.getMessage() for record in caplog.records]
    for text in errors + logged:
        assert value not in text and reader not in text and "password1234" not in text


def test_an_operator_adds_and_revokes_a_key_in_vault_with_the_cli(
    bao: Bao, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ray-app keys add` patches one key of the KV v2 secret (the others stay), and a reader
    with the read-only policy matches the new key; `keys revoke` takes it out again. A token
    that may only read is refused with one line naming where."""
    from tests.conftest import ray_app_command

    _write(bao, api_key_hashes=json.dumps({"old": hash_api_key(KEY_OLD)}), mlflow_password="m-1")
    env = {
        "RAY_APP_SECRETS__BACKEND": "vault",
        "RAY_APP_SECRETS__VAULT__ADDRESS": bao.address,
        "RAY_APP_SECRETS__VAULT__PATH": PATH,
        "RAY_APP_DATA_ROOT": str(tmp_path / "data"),
        "VAULT_TOKEN": str(bao.root.token),  # an operator's token, allowed to write
    }
    added = ray_app_command(["keys", "add", "desk", "--role", "operator"], env, plain=True)
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    stored = bao.root.secrets.kv.v2.read_secret_version(path=PATH, mount_point="secret")
    assert stored["data"]["data"]["mlflow_password"] == "m-1"  # patched, not replaced
    reader = dict(env, VAULT_TOKEN=_reader_token(bao))
    monkeypatch.setenv("VAULT_TOKEN", reader["VAULT_TOKEN"])
    keys = ApiKeys(open_secrets(_settings(bao)))
    assert keys.match(key) == Caller("desk", Role.operator) and keys.match(KEY_OLD) is not None

    refused = ray_app_command(["keys", "revoke", "desk"], reader, plain=True)
    assert refused.returncode == 2
    assert f"cannot write secret api_key_hashes to Vault {bao.address}" in refused.stderr
    assert ray_app_command(["keys", "revoke", "desk"], env, plain=True).returncode == 0
    time.sleep(REFRESH_S)
    assert keys.reload() and keys.match(key) is None
