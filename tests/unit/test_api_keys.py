"""API key hashes from the secrets backend: matching, rotation within refresh_s, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_app.core.api_keys import ApiKeys, hash_api_key
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
    assert keys.match(KEY_A) == "alice" and keys.match(KEY_B) == "bob"
    assert keys.match("") is None and keys.match(KEY_A + "x") is None
    assert keys.hashes() == {"alice": hash_api_key(KEY_A), "bob": hash_api_key(KEY_B)}


def test_a_rotation_is_seen_within_refresh_s(tmp_path: Path) -> None:
    clock = Clock()
    write_hashes(tmp_path, {"v1": KEY_A})
    keys = api_keys(tmp_path, clock=clock)
    write_hashes(tmp_path, {"v2": KEY_B})
    clock.now = 9.9
    assert keys.match(KEY_A) == "v1" and keys.match(KEY_B) is None
    clock.now = 10.0
    assert keys.match(KEY_B) == "v2" and keys.match(KEY_A) is None


@pytest.mark.parametrize(
    "content",
    [
        f"not json {KEY_A}",
        "[]",
        "{}",
        json.dumps({"alice": KEY_A}),  # the key itself, not its hash
        json.dumps({"bad id!": hash_api_key(KEY_A)}),
        json.dumps({"alice": hash_api_key(KEY_A).upper()}),
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
    assert api_keys(tmp_path).match("changeme") == "ops"
    with pytest.raises(SecretError, match="key ops is a well-known placeholder"):
        api_keys(tmp_path, prod=True)


def test_a_missing_secret_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="secret api_key_hashes is not set"):
        api_keys(tmp_path)
