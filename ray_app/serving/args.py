"""What the serving application is built from (``ServeArgs``) and what can change while it runs.

``ServeArgs`` are the ``args`` of the application in ``serve_config.yaml``: Serve hashes them
into the application's code version, so changing them replaces every replica. What a rollout
changes (weights, the shadow, a variant's model version, the feature set) lives instead in the
deployments' ``user_config`` (``IngressConfig``, ``VariantConfig``), which Serve hands to
``reconfigure()`` on the running replicas. The args only seed those configs when the file names
none.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ray_app.core.settings import Settings, load_settings

INGRESS = "Ingress"
VARIANT_NAME = r"^[a-z][a-z0-9_-]{0,30}$"
REF = r"^([a-z][a-z0-9_-]{0,62}|[1-9][0-9]{0,8})$"
DEFAULT_LOADER = "ray_app.serving.loader:RegistryLoader"
WEIGHT_TOLERANCE = 1e-6

Ref = Annotated[
    str,
    Field(
        pattern=REF,
        description="A registry alias (champion, challenger) or a version number ('7')",
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VariantSpec(_Strict):
    """One model variant: a deployment of its own serving the model ``ref`` names."""

    name: str = Field(pattern=VARIANT_NAME, description="Deployment name and routing label")
    ref: Ref
    weight: float = Field(
        ge=0.0, le=1.0, description="Share of primary traffic; the variants' weights sum to 1"
    )


class ShadowSpec(_Strict):
    """A fraction of requests mirrored to ``variant``; its answers are logged, never returned."""

    variant: str = Field(pattern=VARIANT_NAME, description="The variant that gets the mirrors")
    fraction: float = Field(gt=0.0, le=1.0, description="Share of requests mirrored")


class CacheSpec(_Strict):
    """The ingress's prediction cache, keyed by (model, version, ticker, feature date)."""

    max_size: int = Field(
        10_000,
        ge=0,
        description="Entries per ingress replica (least recently used go); 0: off",
    )
    ttl_s: float = Field(300.0, gt=0, description="Seconds an entry is served")


class CpuSpec(_Strict):
    """CPUs reserved per replica: the defaults fit the whole graph on 2 CPUs with room for
    the Serve controller, the proxy and a driver."""

    ingress: float = Field(0.25, gt=0, description="CPUs per ingress replica")
    variant: float = Field(0.25, gt=0, description="CPUs per variant replica")


class BatchSpec(_Strict):
    """``@serve.batch`` of the variants: requests that arrive together share one forward pass."""

    max_batch_size: int = Field(32, ge=1, description="`@serve.batch` size of the variants")
    batch_wait_timeout_s: float = Field(
        0.0,
        ge=0,
        description="Batch wait; 0: take what is queued (waiting only adds latency on CPU)",
    )


class ShadowLimits(_Strict):
    """Bounds that keep a slow or dead shadow away from the primary path."""

    max_in_flight: int = Field(4, ge=1, description="Mirrored requests pending per ingress replica")
    timeout_s: float = Field(2.0, gt=0, description="A mirrored request older than this is cut")


class PredictionLogSpec(_Strict):
    """How each ingress replica batches the prediction log's rows off the request path: a
    flush every ``flush_s`` seconds or ``flush_rows`` rows, whichever comes first; at most
    ``max_rows`` wait in memory, and rows beyond that are dropped and counted, never waited
    for. A crash loses at most the rows of one flush interval."""

    flush_s: float = Field(5.0, gt=0, description="Seconds between flushes of the buffer")
    flush_rows: int = Field(10_000, ge=1, description="Rows that trigger a flush before `flush_s`")
    max_rows: int = Field(
        100_000, ge=1, description="Rows the buffer holds; more are dropped and counted"
    )


class VariantConfig(_Strict):
    """``user_config`` of a variant deployment: which model it serves, how it batches."""

    ref: Ref
    max_batch_size: int = Field(32, ge=1, description="`@serve.batch` size")
    batch_wait_timeout_s: float = Field(0.0, ge=0, description="Batch wait; 0: take what is queued")


class IngressConfig(_Strict):
    """``user_config`` of the ingress: the traffic split, the shadow and the feature set."""

    weights: dict[str, float] = Field(
        description="Variant name -> share of traffic, in [0, 1], summing to 1; names exactly the "
        "deployed variants"
    )
    shadow: ShadowSpec | None = Field(
        None, description="Mirror `fraction` of requests to `variant`; null: no shadow"
    )
    feature_version: str | None = Field(
        None, description="null: follow the newest feature set, without a redeploy"
    )
    prediction_log: bool = Field(
        True, description="Record every answered prediction under <data_root>/predictions"
    )

    @model_validator(mode="after")
    def _consistent(self) -> IngressConfig:
        check_weights(self.weights)
        if self.shadow is not None and self.shadow.variant not in self.weights:
            raise ValueError(f"shadow variant {self.shadow.variant!r} is not a variant")
        return self

    def check_variants(self, names: list[str]) -> None:
        """Refuse weights that do not name exactly the deployed variants."""
        if sorted(self.weights) != sorted(names):
            raise ValueError(
                f"weights name {sorted(self.weights)} but the variants are {sorted(names)}"
            )


def check_weights(weights: dict[str, float]) -> None:
    """Weights in [0, 1] that sum to 1, so a share reads the same everywhere."""
    bad = {name: w for name, w in weights.items() if not 0.0 <= w <= 1.0}
    if bad:
        raise ValueError(f"weights must lie in [0, 1]: {bad}")
    total = math.fsum(weights.values())
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise ValueError(f"weights must sum to 1, got {total:g} ({weights})")


class RateLimitSpec(_Strict):
    """Requests per API key, counted in Redis (the setting `api.rate_limit_redis_url`) so that
    the limit holds across every ingress replica: at most ``requests`` in each ``window_s``
    window, or the key's own `rate_limit`; each replica syncs its count every 50 ms (see
    `ray_app.serving.auth`), and counts alone while Redis cannot be reached."""

    requests: int = Field(1000, ge=1, description="Requests a key may make in one window")
    window_s: int = Field(1, ge=1, le=3600, description="Window length in seconds")


class AuthSpec(_Strict):
    """Who may call the API: keys with roles from the secret `api_key_hashes`, or nobody
    checked at all (`insecure`, only on purpose: it is logged and shown in /v1/models)."""

    mode: Literal["keys", "insecure"] = Field(
        "keys",
        description="keys: `/v1/*` needs `Authorization: Bearer <key>` of a role that may call "
        "it; insecure: no check (local experiments only)",
    )
    rate_limit: RateLimitSpec | None = Field(
        default_factory=RateLimitSpec, description="Per-key limit; null: none"
    )


def _default_variants() -> list[VariantSpec]:
    return [
        VariantSpec(name="champion", ref="champion", weight=1.0),
        VariantSpec(name="challenger", ref="challenger", weight=0.0),
    ]


class ServeArgs(_Strict):
    """The typed ``args`` of ``build_app``: settings, variants, limits and resources."""

    config: str | None = Field(
        None,
        description="ray-app settings YAML to load on each replica (`RAY_APP_*` variables apply)",
    )
    data_root: str | None = Field(None, description="Overrides `data_root` of the settings")
    mlflow_tracking_uri: str | None = Field(None, description="Overrides `mlflow.tracking_uri`")
    model_name: str | None = Field(None, description="Overrides `mlflow.model_name`")
    feature_version: str | None = Field(
        None,
        description="Feature set to serve; null: the newest (seeds the ingress `user_config`)",
    )
    variants: list[VariantSpec] = Field(
        default_factory=_default_variants,
        min_length=1,
        description="One deployment each; the first is the primary. Names unique",
    )
    shadow: ShadowSpec | None = Field(
        None, description="Mirror `fraction` of requests to `variant`; null: no shadow"
    )
    cache: CacheSpec = Field(default_factory=CacheSpec)
    batch: BatchSpec = Field(default_factory=BatchSpec)
    shadow_limits: ShadowLimits = Field(default_factory=ShadowLimits)
    prediction_log: PredictionLogSpec = Field(default_factory=PredictionLogSpec)
    num_cpus: CpuSpec = Field(default_factory=CpuSpec)
    max_tickers: int = Field(50, ge=1, le=1000, description="Tickers per request")
    max_body_bytes: int = Field(65_536, ge=1024, description="Larger request bodies get 413")
    auth: AuthSpec = Field(default_factory=AuthSpec)
    refresh_s: float = Field(
        1.0,
        gt=0,
        description="How often the ingress re-asks the variants what they serve",
    )
    features_poll_s: float = Field(
        30.0,
        gt=0,
        description="While feature_version is null: how often the ingress reads the feature "
        "store's latest pointer; a new set is served within this plus the time to read it and "
        "precompute its predictions",
    )
    live_metrics_poll_s: float = Field(
        60.0,
        gt=0,
        description="How often the ingress reads the monitor's live metrics "
        "(<data_root>/monitoring/live_metrics.parquet) into its `app_live_*` gauges",
    )
    precompute: bool = Field(
        True,
        description="Have each variant predict every feature row once per model version and "
        "feature set, and answer from memory; false: a request the cache misses calls a variant",
    )
    loader: str = Field(
        DEFAULT_LOADER,
        pattern=r"^[\w.]+:\w+$",
        description="`module:callable`: a factory taking `ServeArgs` and returning the model "
        "loader (tests inject fakes)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ServeArgs:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        self.ingress_config()  # the weights and the shadow must make a valid config
        return self

    def settings(self) -> Settings:
        """The platform settings on this node: the file, the environment, then these args."""
        return load_settings(
            Path(self.config) if self.config else None,
            data_root=self.data_root,
            mlflow__tracking_uri=self.mlflow_tracking_uri,
            mlflow__model_name=self.model_name,
        )

    def ingress_config(self) -> IngressConfig:
        return IngressConfig(
            weights={v.name: v.weight for v in self.variants},
            shadow=self.shadow,
            feature_version=self.feature_version,
        )

    def variant_config(self, variant: VariantSpec) -> VariantConfig:
        return VariantConfig(
            ref=variant.ref,
            max_batch_size=self.batch.max_batch_size,
            batch_wait_timeout_s=self.batch.batch_wait_timeout_s,
        )

    @property
    def primary(self) -> str:
        """The first variant: the one traffic falls back to (by convention the champion)."""
        return self.variants[0].name
