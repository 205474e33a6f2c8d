"""The prediction API's request and response bodies (v1), as the OpenAPI schema shows them."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from ray_app.core.api_keys import KEY_ID, Role
from ray_app.core.identifiers import TICKER_PATTERN
from ray_app.registry.keys import KeyInfo

ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

SCORE_DOC = (
    "The predicted return in units of the ticker's recent volatility: predicted_return / "
    "vol_20d, where vol_20d is the standard deviation of its daily log returns over the 20 "
    "trading days up to feature_date. A signal-to-noise ratio comparable across tickers "
    "(+0.1 is a tenth of a typical day's move up); null when the feature set has no vol_20d."
)

Ticker = Annotated[str, Field(pattern=TICKER_PATTERN, examples=["AAPL"])]
Direction = Literal["up", "down", "flat"]


class PredictRequest(BaseModel):
    """Tickers to predict the next trading day's return for, as of a date."""

    model_config = ConfigDict(extra="forbid", title="PredictRequest")

    tickers: list[Ticker] = Field(min_length=1, description="Distinct tickers, any case")
    as_of: dt.date | None = Field(
        None,
        description="Use the newest features dated on or before this day (YYYY-MM-DD); "
        "default: the newest. Not in the future, not before the feature set's first day.",
    )

    @field_validator("as_of", mode="before")
    @classmethod
    def _iso_day(cls, value: Any) -> Any:
        """Only a YYYY-MM-DD string: pydantic would also read numbers as Unix times."""
        if value is not None and not (isinstance(value, str) and ISO_DATE.match(value)):
            raise ValueError("as_of must be a date string YYYY-MM-DD")
        return value

    @field_validator("tickers")
    @classmethod
    def _distinct(cls, tickers: list[str]) -> list[str]:
        upper = [t.upper() for t in tickers]
        repeated = sorted({t for t in upper if upper.count(t) > 1})
        if repeated:
            raise ValueError(f"tickers repeat: {', '.join(repeated)}")
        return upper


def limited_request(max_tickers: int) -> type[PredictRequest]:
    """``PredictRequest`` with this deployment's ticker limit, so the schema states it."""
    field = (
        list[Ticker],
        Field(min_length=1, max_length=max_tickers, description="Distinct tickers, any case"),
    )
    return create_model("PredictRequest", __base__=PredictRequest, tickers=field)


class TickerPrediction(BaseModel):
    ticker: str
    predicted_return: float = Field(description="Predicted next-day log return")
    direction: Direction = Field(description="Sign of predicted_return")
    score: float | None = Field(description=SCORE_DOC)
    feature_date: dt.date = Field(description="Date of the feature row the prediction used")


class PredictResponse(BaseModel):
    request_id: str = Field(description="Also in the X-Request-ID response header")
    variant: str = Field(description="The variant that answered (also X-Model-Variant)")
    model_name: str = Field(description="Registered model name (also X-Model-Name)")
    model_version: int = Field(description="Registered model version (also X-Model-Version)")
    predictions: list[TickerPrediction]


class VariantStatus(BaseModel):
    name: str
    ref: str | None = Field(description="Registry alias or version the variant follows")
    weight: float = Field(description="Share of primary traffic")
    shadow_fraction: float = Field(description="Share of requests mirrored to it")
    ready: bool
    model_name: str | None
    model_version: int | None
    kind: str | None
    feature_version: str | None = Field(description="Feature set the model was trained on")
    loaded_at: dt.datetime | None
    error: str | None = Field(description="Why it has no model, or why the last load failed")
    precomputed: bool = Field(
        description="The ingress holds this model's predictions for every feature row"
    )


class ShadowStatus(BaseModel):
    variant: str
    fraction: float
    in_flight: int
    precomputed: int = Field(description="Mirrors answered by the shadow's precomputed table")
    sent: int = Field(description="Mirrors sent to the shadow variant")
    dropped: int = Field(description="Mirrors skipped because too many were pending")
    ok: int
    error: int
    timeout: int


class CacheStatus(BaseModel):
    size: int
    max_size: int
    ttl_s: float
    hits: int
    misses: int
    precomputed: int = Field(description="Predictions answered from precomputed tables instead")


class PredictionLogStatus(BaseModel):
    enabled: bool = Field(description="Whether answered predictions are being recorded")
    buffered: int = Field(description="Rows waiting for the next flush")
    written: int = Field(description="Rows this replica wrote since it started")
    dropped: int = Field(description="Rows this replica dropped (buffer full or a failed write)")


class ModelsResponse(BaseModel):
    primary: str = Field(description="Variant that traffic falls back to; readiness needs it")
    auth: Literal["keys", "insecure"] = Field(
        description="keys: every /v1 call needs a key; insecure: nobody is checked"
    )
    routing: str
    variants: list[VariantStatus]
    shadow: ShadowStatus | None
    feature_version: str
    feature_dates: tuple[dt.date, dt.date] = Field(description="First and last feature date")
    cache: CacheStatus
    prediction_log: PredictionLogStatus | None = Field(
        None, description="This replica's prediction log; null where there is none"
    )


class LiveQuality(BaseModel):
    """A variant's served predictions scored against realised returns, newest scored day."""

    variant: str
    window: str = Field(description="1d, 20d or 60d: that day, or the trailing trading days")
    metrics: dict[str, float | None] = Field(
        description="directional_accuracy, ic, rank_ic, mae, long_short; null: undefined"
    )
    pending_days: int = Field(description="Days served whose next-day outcome is not in yet")


class AbEvidence(BaseModel):
    """One challenger against the baseline, paired on the same ticker-days."""

    day: dt.date = Field(description="Newest feature date the comparison covers")
    source: str = Field(description="precomputed (every ticker-day) or served (the log)")
    variant: str
    baseline: str
    days: int
    ticker_days: int
    loss_diff: float | None = Field(description="Mean daily loss, variant minus baseline")
    dm_p_value: float | None = Field(description="Diebold-Mariano test of the loss difference")
    rank_ic_diff: float | None
    rank_ic_diff_low: float | None
    rank_ic_diff_high: float | None
    verdict: str


class MonitoringResponse(BaseModel):
    live: list[LiveQuality]
    ab: list[AbEvidence] = Field(description="Empty before the first daily A/B step")


class NewKeyRequest(BaseModel):
    """A key to make: its id, role and, where it needs its own quota, its rate limit."""

    model_config = ConfigDict(extra="forbid", title="NewKeyRequest")

    id: str = Field(pattern=KEY_ID.pattern, description="1-64 of A-Za-z0-9._-", examples=["desk"])
    role: Literal[tuple(Role.__members__)] = Field(  # type: ignore[valid-type]
        Role.predict.name, description="What the key may call"
    )
    rate_limit: int | None = Field(
        None, ge=1, description="Requests per window (default: the API's own limit)"
    )


class KeysResponse(BaseModel):
    """Every API key by id, with its role and own rate limit; never a key or its hash."""

    keys: list[KeyInfo]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    reasons: list[str] = Field(
        description="Reason codes, `code` or `code:variant`: features_not_loaded, "
        "no_model, missing_columns (503 when they concern the primary), load_failed (a variant "
        "that kept its model: 200); empty when all is well. Details: /v1/models"
    )


class ErrorBody(BaseModel):
    detail: Any = Field(description="The reason, or the list of validation errors")


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route answers with."""
    return {status: {"model": ErrorBody} for status in statuses}
