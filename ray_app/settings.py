"""One typed settings object for the whole platform.

Values come from a YAML file and are overridden by ``RAY_APP_``-prefixed environment
variables (nested keys joined with ``__``, for example ``RAY_APP_INGEST__SOURCE=csv``).
Unknown keys and wrong types are refused with a message naming the key and the file, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ray_app.errors import RayAppError

ENV_PREFIX = "RAY_APP_"
CONFIG_ENV = "RAY_APP_CONFIG_FILE"


class SettingsError(RayAppError, ValueError):
    """A configuration that cannot be used; the message names the key and its origin."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class YahooSettings(_Section):
    """How politely we ask Yahoo: it rate-limits aggressive clients."""

    auto_adjust: bool = Field(
        False, description="Adjust OHLC in yfinance (we keep raw + Adj Close)"
    )
    actions: bool = Field(False, description="Ask yfinance for dividends and splits columns")
    max_concurrency: int = Field(4, ge=1, description="Concurrent requests across all Ray workers")
    max_attempts: int = Field(
        5, ge=1, description="Attempts per ticker on rate limits and timeouts"
    )
    backoff_initial_s: float = Field(1.0, gt=0, description="First retry delay, doubled each time")
    backoff_max_s: float = Field(60.0, gt=0, description="Upper bound of one retry delay")
    timeout_s: float = Field(30.0, gt=0, description="HTTP timeout of one request")


class IngestSettings(_Section):
    """Where bars come from and how strictly they are checked."""

    source: Literal["sample", "csv", "yahoo"] = "sample"
    path: Path | None = Field(None, description="Folder of per-ticker files for the csv source")
    tickers: list[str] = Field(
        default_factory=list, description="Empty: every ticker the source has"
    )
    start: dt.date | None = None
    end: dt.date | None = None
    bad_rows: Literal["drop", "fail"] = Field(
        "drop", description="Drop invalid bars and report them, or fail the whole ticker"
    )
    max_daily_move: float = Field(
        0.5, gt=0, description="Flag |log return| above this as an implausible one-day jump"
    )
    exchange: str = Field("XNYS", description="exchange_calendars code used for gap checks")
    column_map: dict[str, str] = Field(
        default_factory=dict, description="Extra file column -> bar field mapping for odd layouts"
    )
    allow_partial: bool = Field(False, description="Exit 0 even when some tickers failed")
    yahoo: YahooSettings = Field(default_factory=YahooSettings)

    @field_validator("tickers")
    @classmethod
    def _upper(cls, tickers: list[str]) -> list[str]:
        return [t.strip().upper() for t in tickers if t.strip()]


class FeatureSettings(_Section):
    """The feature specification; its hash versions every feature set."""

    return_horizons: list[int] = Field(default_factory=lambda: [1, 5, 10, 20])
    volatility_windows: list[int] = Field(default_factory=lambda: [5, 20, 60])
    lags: list[int] = Field(default_factory=lambda: [1, 2, 3, 5])
    rsi_window: int = 14
    macd: tuple[int, int, int] = (12, 26, 9)
    bollinger_window: int = 20
    atr_window: int = 14
    volume_window: int = 20
    beta_window: int = 60
    index_ticker: str = Field("SPY", description="Market index for relative features, if present")

    @field_validator("return_horizons", "volatility_windows", "lags")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if not values or any(v < 1 for v in values):
            raise ValueError("must be a non-empty list of positive integers")
        return sorted(set(values))


class OnlineSettings(_Section):
    """The online feature lookup used by serving."""

    backend: Literal["offline", "redis"] = "offline"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_days: int = Field(400, ge=1, description="Trailing days of rows kept per ticker in Redis")


class RaySettings(_Section):
    """How entrypoints reach Ray; None starts or joins a local instance."""

    address: str | None = None
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local instance")


class Settings(BaseSettings):
    """Everything configurable, in one object handed down to every stage."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    data_root: str = Field("data", description="Local folder or pyarrow filesystem URI (s3://...)")
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    online: OnlineSettings = Field(default_factory=OnlineSettings)
    ray: RaySettings = Field(default_factory=RaySettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment first, then the YAML values passed as init arguments."""
        return (env_settings, init_settings)


def _describe(error: ValidationError, origin: str) -> str:
    parts = []
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        reason = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{key}: {reason}")
    return f"invalid configuration in {origin}: " + "; ".join(parts)


def read_yaml(path: Path) -> dict[str, Any]:
    """The YAML mapping in ``path``; anything else is a SettingsError naming the file."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SettingsError(f"configuration file {path} does not exist") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SettingsError(f"configuration file {path} is not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SettingsError(f"configuration file {path} must hold a mapping at the top level")
    return loaded


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``path`` (if given) under the environment, then explicit overrides.

    ``overrides`` come from command-line options and win over both; nested keys are joined
    with ``__`` (``ingest__source="csv"``). ``None`` means "not given".
    """
    origin = f"{path} (or {ENV_PREFIX}* environment variables)" if path else "the environment"
    try:
        settings = Settings(**(read_yaml(path) if path else {}))
        for dotted, value in overrides.items():
            if value is None:
                continue
            *parents, leaf = dotted.split("__")
            node: Any = settings
            for key in parents:
                node = getattr(node, key)
            try:
                setattr(node, leaf, value)
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"]
                key = dotted.replace("__", ".")
                raise SettingsError(f"invalid value {value!r} for {key}: {reason}") from None
    except ValidationError as exc:
        raise SettingsError(_describe(exc, origin)) from None
    return settings
