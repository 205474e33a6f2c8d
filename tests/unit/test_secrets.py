"""Secrets: the env and file backends, the refresh bound, placeholders, and no leaks."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from ray_app.core.secrets import (
    PLACEHOLDERS,
    EnvBackend,
    FileBackend,
    SecretError,
    Secrets,
    VaultBackend,
    open_secrets,
    redact_uris,
    redact_url,
)
from ray_app.core.settings import Settings, SettingsError, VaultSettings, load_settings
from ray_app.data.online import redis_client
from ray_app.registry.tracking import authenticate

# A value no message, repr or log line may contain.
VALUE = "s3cr3t-value-9f2c41d7"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def env_secrets(prod: bool = False, refresh_s: float = 30.0, clock: Clock | None = None) -> Secrets:
    return Secrets(EnvBackend(), refresh_s, allow_placeholders=not prod, clock=clock or Clock())


def test_env_backend_reads_its_variable_which_is_no_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAY_APP_SECRET_MLFLOW_PASSWORD", VALUE)
    secret = open_secrets(load_settings())  # a RAY_APP_SECRET_* variable is not a typo
    assert secret.get("mlflow_password").get_secret_value() == VALUE
    assert secret.optional("redis_password") is None


def test_file_backend_reads_one_file_per_secret(tmp_path: Path) -> None:
    (tmp_path / "redis_password").write_text(VALUE + "\n")
    settings = Settings(secrets={"backend": "file", "dir": tmp_path})
    secrets = open_secrets(settings)
    assert secrets.get("redis_password").get_secret_value() == VALUE
    with pytest.raises(SecretError, match=r"secret api_key_hashes is not set \(file .*api_key"):
        secrets.get("api_key_hashes")


@pytest.mark.parametrize("name", ["../etc/passwd", "Upper", "", "a/b", "x" * 65])
def test_a_name_that_is_no_identifier_is_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="is not a secret name"):
        Secrets(FileBackend(tmp_path), 1.0, allow_placeholders=True).get(name)


def test_a_value_is_reused_within_refresh_s_then_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    secrets = env_secrets(refresh_s=5.0, clock=clock)
    monkeypatch.setenv("RAY_APP_SECRET_TOKEN", "old-value-1234")
    assert secrets.get("token").get_secret_value() == "old-value-1234"
    monkeypatch.setenv("RAY_APP_SECRET_TOKEN", "new-value-5678")
    clock.now = 4.9
    assert secrets.get("token").get_secret_value() == "old-value-1234"
    clock.now = 5.0
    assert secrets.get("token").get_secret_value() == "new-value-5678"
    monkeypatch.delenv("RAY_APP_SECRET_TOKEN")
    clock.now = 10.0
    with pytest.raises(SecretError, match="RAY_APP_SECRET_TOKEN"):
        secrets.get("token")


@pytest.mark.parametrize("placeholder", sorted(PLACEHOLDERS | {"  ChangeMe ", "PASSWORD1234"}))
def test_placeholders_are_refused_outside_dev_only(
    placeholder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_APP_SECRET_MLFLOW_PASSWORD", placeholder)
    assert env_secrets(prod=False).get("mlflow_password").get_secret_value() == placeholder
    with pytest.raises(SecretError) as info:
        env_secrets(prod=True).get("mlflow_password")
    # One line naming the secret, the same whatever the value: the value is not in it.
    assert str(info.value) == (
        "secret mlflow_password (environment variable RAY_APP_SECRET_MLFLOW_PASSWORD) is empty "
        "or a well-known placeholder/default; refused outside environment dev"
    )


def test_environment_prod_comes_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_APP_ENVIRONMENT", "prod")
    monkeypatch.setenv("RAY_APP_SECRET_MLFLOW_PASSWORD", "password1234")  # MLflow's old default
    with pytest.raises(SecretError, match="mlflow_password"):
        open_secrets(load_settings()).get("mlflow_password")


@pytest.mark.parametrize(
    ("key", "url"),
    [
        ("mlflow__tracking_uri", f"http://ray-app:{VALUE}@mlflow:5000"),
        ("online__redis_url", f"redis://:{VALUE}@redis:6379/0"),
    ],
)
def test_a_password_in_a_setting_is_refused_outside_dev(
    key: str, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"RAY_APP_{key.upper()}", url)
    assert load_settings().environment == "dev"  # dev keeps its shortcuts
    monkeypatch.setenv("RAY_APP_ENVIRONMENT", "prod")
    with pytest.raises(SettingsError, match="carries a password") as info:
        load_settings()
    assert VALUE not in str(info.value)


def test_a_secret_never_shows_in_repr_str_or_logs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("RAY_APP_SECRET_MLFLOW_PASSWORD", VALUE)
    secrets = env_secrets()
    secret = secrets.get("mlflow_password")
    assert isinstance(secret, SecretStr)
    shown = [repr(secret), str(secret), f"{secret}", repr(secrets.__dict__), repr([secret])]
    assert all(VALUE not in text for text in shown)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("ray_app").info("using %s / %r", secret, secret)
        logging.getLogger("ray_app").info("secrets %s", secrets.__dict__)
    assert caplog.records and all(VALUE not in r.getMessage() for r in caplog.records)


def test_an_unreadable_secret_file_names_the_file_not_the_value(tmp_path: Path) -> None:
    (tmp_path / "redis_password").mkdir()  # reading a folder fails with an OSError
    with pytest.raises(SecretError, match=r"cannot read secret redis_password .*IsADirectory"):
        Secrets(FileBackend(tmp_path), 1, allow_placeholders=True).get("redis_password")


def test_vault_without_a_token_or_server_fails_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = VaultSettings(address="http://127.0.0.1:1", token_env="RAY_APP_TEST_NO_TOKEN")
    monkeypatch.delenv("RAY_APP_TEST_NO_TOKEN", raising=False)
    with pytest.raises(SecretError, match="no Vault token: set RAY_APP_TEST_NO_TOKEN"):
        VaultBackend(config).read("api_key_hashes")
    (tmp_path / "token").write_text(VALUE + "\n")
    config.token_file = tmp_path / "token"
    with pytest.raises(SecretError) as info:
        VaultBackend(config).read("api_key_hashes")
    assert "ConnectionError" in str(info.value) and VALUE not in str(info.value)


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url(f"redis://user:{VALUE}@h:6379/0") == "redis://user:***@h:6379/0"
    assert redact_url("http://mlflow:5000") == "http://mlflow:5000"


def test_every_uri_in_a_message_loses_its_userinfo() -> None:
    message = (
        f"cannot load 'champion': postgresql://ray:{VALUE}@db:5432/mlflow refused; "
        f"retrying http://user@mlflow:5000/api?x=a@b and s3://bucket/path"
    )
    assert redact_uris(message) == (
        "cannot load 'champion': postgresql://***@db:5432/mlflow refused; "
        "retrying http://***@mlflow:5000/api?x=a@b and s3://bucket/path"
    )


def test_a_password_with_an_unencoded_at_sign_is_stripped_whole() -> None:
    message = "postgresql://u:p@ss@host/db and redis://:a@b@c@redis:6379, mail ops@example.org"
    assert redact_uris(message) == (
        "postgresql://***@host/db and redis://***@redis:6379, mail ops@example.org"
    )


def test_mlflow_credentials_come_from_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PGPASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_APP_SECRET_MLFLOW_PASSWORD", VALUE)
    monkeypatch.setenv("RAY_APP_SECRET_MLFLOW_DB_PASSWORD", "db-" + VALUE)
    server = Settings(mlflow={"tracking_uri": "http://mlflow:5000", "username": "ray-app"})
    authenticate(server)
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "ray-app"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == VALUE
    authenticate(Settings(mlflow={"tracking_uri": "postgresql://ray-app@db:5432/mlflow"}))
    assert os.environ["PGPASSWORD"] == "db-" + VALUE
    monkeypatch.delenv("RAY_APP_SECRET_MLFLOW_PASSWORD")
    with pytest.raises(SecretError, match="secret mlflow_password is not set"):
        authenticate(server)


def test_the_redis_client_authenticates_with_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(online={"redis_url": "rediss://redis:6379/1"})
    monkeypatch.delenv("RAY_APP_SECRET_REDIS_PASSWORD", raising=False)
    assert redis_client(settings).connection_pool.connection_kwargs.get("password") is None
    monkeypatch.setenv("RAY_APP_SECRET_REDIS_PASSWORD", VALUE)
    client = redis_client(settings)
    assert client.connection_pool.connection_kwargs["password"] == VALUE
    assert VALUE not in repr(client)
