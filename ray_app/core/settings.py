"""One typed settings object for the whole platform.

Values come from a YAML file and are overridden by ``RAY_APP_``-prefixed environment
variables (nested keys joined with ``__``, for example ``RAY_APP_INGEST__SOURCE=csv``).
Unknown keys and wrong types are refused with a message naming the key and the file, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from ray_app.core.errors import RayAppError
from ray_app.core.identifiers import check_ticker

ENV_PREFIX = "RAY_APP_"
CONFIG_ENV = "RAY_APP_CONFIG_FILE"
# The env secrets backend's variables (``RAY_APP_SECRET_<NAME>``): secrets, not settings.
SECRET_ENV_PREFIX = "RAY_APP_SECRET_"


class SettingsError(RayAppError, ValueError):
    """A configuration that cannot be used; the message names the key and its origin."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class YahooSettings(_Section):
    """How politely we ask Yahoo: it rate-limits aggressive clients."""

    auto_adjust: bool = Field(
        False,
        description="Ask yfinance to adjust OHLC (by default raw OHLC and `Adj Close` are kept)",
    )
    actions: bool = Field(False, description="Ask yfinance for dividends and splits columns")
    max_concurrency: int = Field(4, ge=1, description="Concurrent requests across all Ray workers")
    max_attempts: int = Field(
        5,
        ge=1,
        description="Attempts per ticker on rate limits, timeouts, connection errors and empty "
        "answers",
    )
    backoff_initial_s: float = Field(
        1.0, gt=0, description="Scale of the retry delay: exponential with full jitter"
    )
    backoff_max_s: float = Field(60.0, gt=0, description="Upper bound of one retry delay")
    timeout_s: float = Field(30.0, gt=0, description="HTTP timeout of one request")


class IngestSettings(_Section):
    """Where bars come from and how strictly they are checked."""

    source: Literal["sample", "csv", "yahoo"] = Field("sample", description="Where bars come from")
    path: Path | None = Field(None, description="Folder of per-ticker files for the csv source")
    tickers: list[str] = Field(
        default_factory=list,
        description="Tickers (stripped, upper-cased). Empty: every ticker the source has; yahoo "
        "needs them listed",
    )
    start: dt.date | None = Field(None, description="First date to fetch, inclusive")
    end: dt.date | None = Field(None, description="Last date to fetch, inclusive (null: today)")
    bad_rows: Literal["drop", "fail"] = Field(
        "drop", description="Drop invalid bars and report them, or fail the whole ticker"
    )
    max_daily_move: float = Field(
        0.5, gt=0, description="Flag an absolute daily log return above this as an implausible jump"
    )
    exchange: str = Field("XNYS", description="`exchange_calendars` code for the calendar checks")
    column_map: dict[str, str] = Field(
        default_factory=dict, description="Extra file column -> bar field mapping for odd layouts"
    )
    allow_partial: bool = Field(
        False,
        description="Exit 0 from `ingest` and `features` (and let the pipeline go on) when some "
        "tickers failed",
    )
    overlap_days: int = Field(
        5, ge=0, description="Stored bars an incremental run fetches again to catch re-adjustments"
    )
    overlap_tolerance: float = Field(
        1e-4, gt=0, description="Relative price change on the overlap that means re-adjusted"
    )
    yahoo: YahooSettings = Field(default_factory=YahooSettings)

    @field_validator("tickers")
    @classmethod
    def _tickers(cls, tickers: list[str]) -> list[str]:
        """Upper-cased, and each one a ticker: they name folders under the data root."""
        return [check_ticker(t) for t in tickers if t.strip()]


class FeatureSettings(_Section):
    """The feature specification; its hash versions every feature set."""

    return_horizons: list[int] = Field(
        default_factory=lambda: [1, 5, 10, 20],
        description="Horizons of `ret_{h}d` and `excess_ret_{h}d` (non-empty, each >= 1); "
        "deduplicated and sorted",
    )
    volatility_windows: list[int] = Field(
        default_factory=lambda: [5, 20, 60],
        description="Windows of `vol_{w}d` (non-empty, each >= 1)",
    )
    lags: list[int] = Field(
        default_factory=lambda: [1, 2, 3, 5],
        description="Lags of `lag_ret_{k}` (non-empty, each >= 1)",
    )
    rsi_window: int = Field(14, description="RSI window")
    macd: tuple[int, int, int] = Field((12, 26, 9), description="MACD fast, slow and signal spans")
    bollinger_window: int = Field(20, description="Window of `bb_pos_{w}`")
    atr_window: int = Field(14, description="Window of `atr_{w}`")
    volume_window: int = Field(20, description="Window of `volume_z_{w}`")
    beta_window: int = Field(60, description="Window of `beta_{w}d`")
    index_ticker: str = Field(
        "SPY",
        description="Market index for the relative features, used when it is in the data version",
    )
    alpha_features: bool = Field(
        False,
        description="Add the Alpha-style set: k-bar shape, moving-average gaps, volume ratios, "
        "price-volume correlations, range and high/low positions over `alpha_windows`, and "
        "residual momentum against the index when it is in the data version",
    )
    alpha_windows: list[int] = Field(
        default_factory=lambda: [5, 10, 20, 60],
        description="Windows of the Alpha-style features (non-empty, each >= 2); deduplicated "
        "and sorted",
    )
    cross_sectional: list[str] = Field(
        default_factory=list,
        description="Feature columns that get `<name>_csrank` and `<name>_cszscore` "
        "companions: their rank and z-score across the tickers of each day; deduplicated and "
        "sorted",
    )
    label: Literal["next_return", "next_excess_return", "next_return_csrank"] = Field(
        "next_return",
        description="What models are trained to predict: the next-day log return, its excess "
        "over the index's (needs the index in the data version), or its rank across the "
        "day's tickers (-0.5 lowest .. 0.5 highest). Evaluation's rank metrics and backtest "
        "and live monitoring always use the realised next-day return",
    )

    @field_validator("index_ticker")
    @classmethod
    def _index_ticker(cls, ticker: str) -> str:
        return check_ticker(ticker)

    @field_validator("return_horizons", "volatility_windows", "lags")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if not values or any(v < 1 for v in values):
            raise ValueError("must be a non-empty list of positive integers")
        return sorted(set(values))

    @field_validator("alpha_windows")
    @classmethod
    def _windows(cls, values: list[int]) -> list[int]:
        """A correlation or a position needs at least two days in its window."""
        if not values or any(v < 2 for v in values):
            raise ValueError("must be a non-empty list of integers >= 2")
        return sorted(set(values))

    @field_validator("cross_sectional")
    @classmethod
    def _columns(cls, names: list[str]) -> list[str]:
        """Sorted, so the same set of names is the same spec (and feature version)."""
        return sorted({n.strip() for n in names if n.strip()})


class ApiSettings(_Section):
    """Where the prediction API keeps what its replicas share (per environment; what the API
    allows is in serve_config.yaml's `args.auth`)."""

    rate_limit_redis_url: str = Field(
        "redis://127.0.0.1:6379/1",
        description="Redis counting each API key's requests across the ingress replicas, "
        "without a password (that is the secret `redis_password`)",
    )


class OnlineSettings(_Section):
    """The online feature lookup (`get_online_features`): Parquet, or Redis in front of it."""

    backend: Literal["offline", "redis"] = Field(
        "offline", description="Where `open_lookup` answers from"
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis for the `redis` backend, without a password: that is the secret "
        "`redis_password`",
    )
    redis_days: int = Field(400, ge=1, description="Trailing rows per ticker kept in Redis")


class SplitSettings(_Section):
    """Walk-forward evaluation windows; the holdout is split off first and never searched."""

    mode: Literal["expanding", "rolling"] = Field(
        "expanding", description="Walk-forward training window"
    )
    n_folds: int = Field(3, ge=1, description="Walk-forward folds")
    test_days: int = Field(126, ge=5, description="Trading days in each walk-forward test window")
    train_days: int = Field(
        756, ge=20, description="Rolling: the training window; expanding: the shortest one"
    )
    embargo_days: int | None = Field(
        None,
        ge=1,
        description="Gap between training labels and test rows; null: the minimum safe gap",
    )
    holdout_months: int = Field(
        6,
        ge=0,
        description="Most recent calendar months kept for the final verdict; 0: no holdout "
        "(and no gate)",
    )


class TrainSettings(_Section):
    """One training run with Ray Train."""

    model: str = Field(
        "mlp",
        description="Model family: a name in the family table (`ray_app/models/families/`; "
        "docs/training.md, Model families)",
    )
    hparams: dict[str, Any] = Field(
        default_factory=dict,
        description="The family's hyperparameters (its `Params`: docs/training.md, Model "
        "families); keys left out take the family's defaults",
    )
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data parallel)")
    use_gpu: bool | None = Field(None, description="null: use a GPU when the cluster has one")
    cpus_per_worker: float = Field(
        1.0, gt=0, description="CPUs per Ray Train worker (and per evaluation refit task)"
    )
    patience: int = Field(
        3, ge=1, description="Epochs without validation improvement before stopping"
    )
    seed: int = Field(0, description="Seed of weights, shuffling and dropout")
    torch_threads: int = Field(
        1, ge=1, description="Threads per worker (torch intra-op, LightGBM `num_threads`)"
    )


class SearchDimension(_Section):
    """One hyperparameter's range: uniform/loguniform (low, high), int (low, high), choice."""

    type: Literal["uniform", "loguniform", "int", "choice"] = Field(
        description="uniform, loguniform (low > 0), int (both bounds inclusive) or choice"
    )
    low: float | None = Field(None, description="Lower bound (uniform, loguniform, int)")
    high: float | None = Field(None, description="Upper bound, > low (uniform, loguniform, int)")
    values: list[Any] | None = Field(None, description="choice: the non-empty list to pick from")

    @model_validator(mode="after")
    def _complete(self) -> SearchDimension:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice needs a non-empty 'values' list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a {self.type} range needs low < high")
        elif self.type == "loguniform" and self.low <= 0:
            raise ValueError("a loguniform range needs low > 0")
        return self


class TuneSettings(_Section):
    """Hyperparameter search with Ray Tune + Optuna (seeded TPE)."""

    num_samples: int = Field(8, ge=1, description="Trials in the search")
    max_concurrent: int = Field(2, ge=1, description="Trials running at once")
    families: list[str] = Field(
        default_factory=list,
        description="Model families a trial may pick (each trial picks one; the space is "
        "conditional on it); empty: `train.model` only",
    )
    search_space: dict[str, dict[str, SearchDimension]] = Field(
        default_factory=dict,
        description="Per family, one entry per hyperparameter to search; a family not listed "
        "searches its default space (docs/training.md, Model families)",
    )
    scheduler: Literal["asha", "none"] = Field("asha", description="Trial scheduler")
    grace_period: int = Field(2, ge=1, description="ASHA: epochs before a trial may be stopped")
    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs per trial")
    checkpoint_every: int = Field(
        0,
        ge=0,
        description="Epochs between a trial's checkpoints; 0: none. An interrupted search "
        "keeps its finished trials and reruns the others from their last checkpoint",
    )
    seed: int = Field(0, description="Seed of Optuna's TPE sampler")


class MlflowSettings(_Section):
    """Experiment tracking and the model registry.

    The embedded default is a SQLite file and an artifact folder under the data root; with
    several Ray nodes the tracking URI must be a server (``http://...``) that every node
    reaches, since a SQLite file exists on one machine only.
    """

    tracking_uri: str | None = Field(None, description="null: sqlite:///<data_root>/mlflow.db")
    artifact_location: str | None = Field(
        None,
        description="Artifact location of new experiments; null: <data_root>/mlartifacts (with "
        "an `http` tracking URI: the server decides)",
    )
    experiment: str = Field("ray-app", description="Experiment name")
    model_name: str = Field("ray-app-daily-return", description="Registered model name")
    username: str | None = Field(
        None,
        description="Basic-auth user at an `http(s)` tracking server; its password is the secret "
        "`mlflow_password`. null: no authentication",
    )


class EvaluateSettings(_Section):
    """How predictions are scored: the long-short backtests' books and costs."""

    quantile: float = Field(
        0.2, gt=0, le=0.5, description="Fraction of tickers held long and short"
    )
    top_k: int = Field(
        10,
        ge=1,
        description="Tickers held long and short by the top-k / bottom-k book (at most half "
        "of a day's tickers)",
    )
    cost_bps: float = Field(
        5.0, ge=0, description="Transaction cost per unit of turnover, in basis points"
    )


class GateSettings(_Section):
    """The quality gate: margins a challenger must beat every baseline and the champion by,
    and how significant its skill must be."""

    ic_margin: float = Field(
        0.0, description="The challenger's rank IC must exceed every other's rank IC plus this"
    )
    min_rank_ic_t: float = Field(
        2.0,
        ge=0,
        description="The challenger's holdout rank IC must have a t-statistic (mean / (std / "
        "sqrt(days)) of the daily rank IC) of at least this",
    )
    sharpe_margin: float = Field(
        0.0, description="The challenger's Sharpe must exceed every other's plus this"
    )
    rmse_margin: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="The challenger's RMSE must be <= every other's RMSE x (1 - this)",
    )


class TlsSettings(_Section):
    """HTTPS for the local prediction API: a TLS-terminating HAProxy in front of Serve's HTTP
    port, started with the head (`ray-app cluster up --tls`)."""

    enabled: bool = Field(
        False,
        description="Start the HTTPS front with the head (`cluster up --tls` does it for one "
        "start); off by default because Serve's own port listens on 127.0.0.1 only",
    )
    host: str = Field("127.0.0.1", description="Address the HTTPS port listens on")
    port: int = Field(8443, ge=1, le=65535, description="The HTTPS port")
    certfile: Path | None = Field(
        None,
        description="PEM certificate (leaf first, then its chain); null: one for localhost, "
        "generated under `<state_dir>/tls` and signed by a local CA made there (ca.pem)",
    )
    keyfile: Path | None = Field(None, description="PEM private key of `certfile`")
    names: list[str] = Field(
        default_factory=list,
        description="More DNS names or IP addresses for the generated certificate (localhost, "
        "127.0.0.1 and ::1 are always in it)",
    )
    upstream_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve's HTTP port on 127.0.0.1 that the front forwards to; null: "
        "`http_options.port` of `pipeline.serve_config`",
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> TlsSettings:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("set both certfile and keyfile, or neither (a generated certificate)")
        return self


class ClusterSettings(_Section):
    """The local Ray head that `ray-app cluster up` starts (KubeRay manages remote ones)."""

    state_dir: Path = Field(
        Path("~/.ray-app"), description="Where `cluster.json` (the head's address) is kept"
    )
    gcs_port: int | None = Field(
        None,
        ge=1024,
        le=65535,
        description="Head port; null: the first free from 6380 (Redis has 6379)",
    )
    dashboard_host: str = Field("127.0.0.1", description="Dashboard bind address")
    dashboard_port: int = Field(8265, ge=1024, le=65535, description="Dashboard and job API port")
    metrics_port: int = Field(8080, ge=1024, le=65535, description="Prometheus metrics export port")
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs of the head; null: every CPU of the machine"
    )
    token_path: Path = Field(Path("~/.ray/auth_token"), description="Ray token file (mode 0600)")
    api_key_path: Path = Field(
        Path("~/.ray/ray_app_api_key"),
        description="The local admin key of the prediction API (mode 0600), made by the first "
        "`cluster up`; its hash reaches Serve through the env secrets backend",
    )
    haproxy: bool | None = Field(None, description="Serve behind HAProxy; null: when available")
    haproxy_stats_host: str | None = Field(
        "127.0.0.1",
        description="IPv4 address Serve's HAProxy stats (8404) and Prometheus (9101) ports "
        "listen on; null: every address (Ray's own default, which has no setting for it)",
    )
    tls: TlsSettings = Field(default_factory=TlsSettings)

    @field_validator("haproxy_stats_host")
    @classmethod
    def _ipv4(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.IPv4Address(value)  # a ValueError names the key
        return value


class VaultSettings(_Section):
    """Where the `vault` secrets backend reads: one KV v2 secret whose keys are secret names."""

    address: str = Field("http://127.0.0.1:8200", description="Vault or OpenBao server address")
    mount: str = Field("secret", description="Mount point of the KV v2 secrets engine")
    path: str = Field("ray-app", description="The secret, under the mount, holding every key")
    token_env: str = Field(
        "VAULT_TOKEN",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the Vault token",
    )
    token_file: Path | None = Field(
        None,
        description="File holding the token (a Vault Agent sink), read when `token_env` is "
        "unset; re-read at every refresh, so a renewed token is picked up",
    )
    timeout_s: float = Field(5.0, gt=0, description="HTTP timeout of one read")


class SecretsSettings(_Section):
    """Where secrets come from. Never from settings: those are printed, logged and put in
    the environment of every Ray process."""

    backend: Literal["env", "file", "vault"] = Field(
        "env",
        description="env: `RAY_APP_SECRET_<NAME>` variables; file: one file per secret in "
        "`dir`; vault: keys of one KV v2 secret in Vault or OpenBao",
    )
    dir: Path = Field(
        Path("/run/secrets"),
        description="Folder of the `file` backend (a mounted Kubernetes Secret): file name = "
        "secret name",
    )
    vault: VaultSettings = Field(default_factory=VaultSettings)
    refresh_s: float = Field(
        30.0,
        gt=0,
        description="Seconds a value read is reused: a long-running process sees a rotated "
        "secret within this",
    )


class PipelineSettings(_Section):
    """The daily pipeline: Dagster assets, their instance storage, schedule and serving steps."""

    search: bool = Field(
        True, description="Include the search asset (off: the release trains `train.hparams`)"
    )
    deploy: bool = Field(True, description="Include the deployment asset (deploy and smoke)")
    serve_config: Path = Field(
        Path("serve_config.yaml"),
        description="Desired Serve config: the start when the cluster runs no ray-app yet",
    )
    serve_url: str = Field("http://127.0.0.1:8000", description="Where the smoke request goes")
    serve_host: str | None = Field(
        None,
        description="`http_options.host` when a deploy starts from `serve_config` (no ray-app "
        "runs yet); null: the file's (127.0.0.1). Containers set 0.0.0.0 (the Compose stack)",
    )
    smoke_timeout_s: float = Field(180.0, gt=0, description="How long the smoke step retries")
    lock_timeout_s: float = Field(
        600.0, ge=0, description="Seconds a second pipeline on the root waits (0: fails at once)"
    )
    dagster_home: Path | None = Field(
        None,
        description="Dagster's instance folder (its dagster.yaml, logs, SQLite storage); "
        "default `<data_root>/dagster` for a local data root",
    )
    dagster_storage: Literal["sqlite", "postgres"] = Field(
        "sqlite",
        description="Where Dagster keeps runs, events and staleness: SQLite files in "
        "`dagster_home`, or PostgreSQL at the URL in env `DAGSTER_POSTGRES_URL`",
    )
    schedule: str = Field(
        "30 18 * * 1-5", description="Cron of the daily schedule, after the market close"
    )
    timezone: str = Field("America/New_York", description="Time zone of `schedule`")
    sensor_interval_s: int = Field(
        300, ge=30, description="Seconds between two looks of the new-raw-data sensor"
    )
    pit_sample: int = Field(
        3, ge=1, description="Tickers the point-in-time asset check recomputes at a cut day"
    )


class MonitoringSettings(_Section):
    """Live evidence from realised returns: the A/B tests and what the pipeline does with
    them."""

    significance: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="Level of the A/B tests: Diebold-Mariano p-value and (1 - level) bootstrap "
        "interval of the rank-IC difference",
    )
    loss: Literal["squared", "absolute"] = Field(
        "squared", description="Loss of the Diebold-Mariano test: squared or absolute error"
    )
    baseline_variant: str = Field(
        "champion", description="The variant every other variant is compared with"
    )
    bootstrap_reps: int = Field(2000, ge=100, description="Stationary-bootstrap resamples")
    ab_window_days: int = Field(
        90,
        ge=7,
        description="Calendar days of logged feature dates, up to the newest, that the daily "
        "`ab_evidence` step compares (its report and the exported `ray_app_ab_*` gauges)",
    )
    auto_promote: bool = Field(
        False,
        description="The pipeline's promote step makes a challenger the champion when its "
        "paired live evidence (precomputed predictions) is `better` at `significance`",
    )


class DriftSettings(_Section):
    """Daily drift of the served feature rows and predictions against the serving model's
    training window (`ray-app drift`). A statistic above its threshold marks the feature as
    drifted in the table and the report, and the thresholds are exported beside the values, so
    the Prometheus alerts compare against these settings."""

    psi_threshold: float = Field(
        0.2, gt=0, description="Population stability index above which a feature has drifted"
    )
    ks_threshold: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Two-sample Kolmogorov-Smirnov statistic above which a feature has drifted",
    )
    prediction_psi_threshold: float = Field(
        0.2, gt=0, description="PSI of the predicted returns above which predictions have drifted"
    )
    bins: int = Field(
        10, ge=2, le=100, description="PSI bins: quantiles of the training window's values"
    )
    window_days: int = Field(
        1,
        ge=1,
        description="Days of served rows (ending at the day measured) compared with the "
        "training window",
    )
    min_rows: int = Field(
        20, ge=2, description="Fewer current rows than this: the statistic is not computed"
    )
    reference_max_rows: int = Field(
        200_000,
        ge=100,
        description="Training-window rows kept for the comparison (a seeded sample beyond this)",
    )


class RaySettings(_Section):
    """How entrypoints reach Ray; None starts or joins a local instance."""

    address: str | None = Field(
        None, description="Ray cluster to join; wins over `RAY_ADDRESS` and the local head"
    )
    num_cpus: int | None = Field(
        None, ge=1, description="Start a private local Ray instance with this many CPUs"
    )


class Settings(BaseSettings):
    """Everything configurable, in one object handed down to every stage."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    environment: Literal["dev", "prod"] = Field(
        "dev",
        description="Outside `dev`, placeholder or default secrets are refused and settings "
        "may not carry passwords",
    )
    data_root: str = Field("data", description="Local folder or pyarrow filesystem URI (s3://...)")
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    online: OnlineSettings = Field(default_factory=OnlineSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    split: SplitSettings = Field(default_factory=SplitSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    tune: TuneSettings = Field(default_factory=TuneSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    secrets: SecretsSettings = Field(default_factory=SecretsSettings)

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

    @model_validator(mode="after")
    def _no_passwords_outside_dev(self) -> Settings:
        """Settings are printed and copied into every Ray process's environment, so outside
        dev a password in a URL is refused; the secrets backend holds it instead."""
        if self.environment == "dev":
            return self
        urls = {
            "mlflow.tracking_uri": (
                self.mlflow.tracking_uri,
                "mlflow_password (a server) or mlflow_db_password (a database)",
            ),
            "online.redis_url": (self.online.redis_url, "redis_password"),
        }
        for key, (url, secret) in urls.items():
            if url and urlsplit(url).password is not None:
                raise ValueError(
                    f"{key} carries a password: outside dev the secrets backend holds it, "
                    f"as {secret}"
                )
        return self


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
    check_environment(os.environ)
    try:
        settings = Settings(**(read_yaml(path) if path else {}))
        for dotted, value in overrides.items():
            if value is None:
                continue
            *parents, leaf = dotted.split("__")
            node: Any = settings
            for key in parents:
                node = node[key] if isinstance(node, dict) else getattr(node, key)
            try:
                if isinstance(node, dict):  # a mapping setting (train.hparams): its family checks
                    node[leaf] = value
                else:
                    setattr(node, leaf, value)
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"]
                key = dotted.replace("__", ".")
                raise SettingsError(f"invalid value {value!r} for {key}: {reason}") from None
    except ValidationError as exc:
        raise SettingsError(_describe(exc, origin)) from None
    except SourceError as exc:  # an env value that is not valid JSON for a list or mapping
        raise SettingsError(f"{exc} (lists and mappings in {ENV_PREFIX}* are JSON)") from None
    return settings


# Variables with the prefix that are not settings: the config file path and debug output
# (and the env secrets backend's ``RAY_APP_SECRET_*``).
_NOT_SETTINGS = {CONFIG_ENV, "RAY_APP_DEBUG"}


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse ``RAY_APP_*`` variables that name no setting, so a typo is never ignored."""
    for name in environ:
        if (
            not name.startswith(ENV_PREFIX)
            or name in _NOT_SETTINGS
            or name.startswith(SECRET_ENV_PREFIX)
        ):
            continue
        model: Any = Settings
        for part in name[len(ENV_PREFIX) :].lower().split("__"):
            fields = getattr(model, "model_fields", None)
            if fields is None:
                break  # inside a dict-valued setting: any key may be valid
            if part not in fields:
                raise SettingsError(f"environment variable {name} names no setting ({part!r})")
            model = fields[part].annotation
