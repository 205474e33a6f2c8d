"""Settings: one typed object from YAML, overridden by RAY_APP_ env vars, then CLI options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ray_app.core.settings import SettingsError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_embedded_local_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_APP_DATA_ROOT", raising=False)
    settings = load_settings()
    assert settings.ingest.source == "sample"
    assert settings.data_root == "data"


def test_yaml_then_env_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "data_root: from-yaml\ningest:\n  source: csv\n  bad_rows: fail\n")
    assert load_settings(path).data_root == "from-yaml"
    monkeypatch.setenv("RAY_APP_DATA_ROOT", "from-env")
    monkeypatch.setenv("RAY_APP_INGEST__BAD_ROWS", "drop")
    settings = load_settings(path)
    assert (settings.data_root, settings.ingest.bad_rows, settings.ingest.source) == (
        "from-env",
        "drop",
        "csv",
    )
    assert load_settings(path, data_root="from-cli").data_root == "from-cli"


def test_unknown_keys_are_refused_naming_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "ingest:\n  sorce: csv\nfeatures:\n  rsi_window: 14\n")
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert "ingest.sorce: unknown key" in str(info.value)
    assert str(path) in str(info.value)


def test_wrong_types_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "features:\n  rsi_window: fourteen\n  lags: [0, 1]\n")
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    message = str(info.value)
    assert "features.rsi_window" in message and "features.lags" in message


def test_overlap_and_lock_settings_refuse_out_of_range_values(tmp_path: Path) -> None:
    text = "ingest:\n  overlap_days: -1\n  overlap_tolerance: 0\npipeline:\n  lock_timeout_s: -5\n"
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, text))
    message = str(info.value)
    for key in ("ingest.overlap_days", "ingest.overlap_tolerance", "pipeline.lock_timeout_s"):
        assert key in message and "\n" not in message


def test_bad_override_names_the_option() -> None:
    with pytest.raises(SettingsError, match=r"ingest\.source"):
        load_settings(ingest__source="nope")


@pytest.mark.parametrize("text", ["- just\n- a list\n", "key: [unclosed\n"])
def test_malformed_yaml_is_a_settings_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(SettingsError, match=r"conf\.yaml"):
        load_settings(write(tmp_path, text))


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_importing_the_package_has_no_side_effects(tmp_path: Path) -> None:
    """No folders, no Ray connection, no logging set-up until something is called."""
    code = (
        "import sys, logging, pkgutil, importlib, ray_app\n"
        "for m in pkgutil.walk_packages(ray_app.__path__, 'ray_app.'):\n"
        "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
        "assert 'ray' not in sys.modules or not sys.modules['ray'].is_initialized()\n"
        "assert not logging.getLogger().handlers\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_environment_typos_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_APP_INGEST__SORCE", "csv")
    with pytest.raises(SettingsError, match="RAY_APP_INGEST__SORCE names no setting"):
        load_settings()


def test_environment_lists_are_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_APP_INGEST__TICKERS", '["aapl", "msft"]')
    assert load_settings().ingest.tickers == ["AAPL", "MSFT"]
    monkeypatch.setenv("RAY_APP_INGEST__TICKERS", "AAPL,MSFT")
    with pytest.raises(SettingsError, match="are JSON"):
        load_settings()
