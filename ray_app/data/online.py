"""Online feature lookup for serving: the latest feature row per ticker as of a date.

Two backends behind one interface: the offline store itself (Parquet, cached in memory per
ticker) and Redis, which keeps the trailing ``online.redis_days`` rows of every ticker in a
sorted set scored by date, so one ``ZREVRANGEBYSCORE`` answers "the last row on or before
as_of". Dates older than what Redis keeps fall back to the offline store. Redis's password
is the secret ``redis_password`` (none: Redis without auth), never part of ``redis_url``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from ray_app.core.errors import RayAppError
from ray_app.core.secrets import REDIS_PASSWORD, open_secrets
from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.feature_store import feature_manifest, partition

_EPOCH = dt.date(1970, 1, 1)


class UnknownTickerError(RayAppError, KeyError):
    """The ticker is not in the feature set."""

    def __str__(self) -> str:
        return str(self.args[0])


class NoFeaturesError(RayAppError, LookupError):
    """The ticker has no feature row on or before the requested date."""


@dataclass(frozen=True)
class FeatureRow:
    ticker: str
    date: dt.date
    values: dict[str, float]


class FeatureLookup(Protocol):
    feature_version: str
    columns: list[str]

    def get_online_features(
        self, tickers: list[str], as_of: dt.date | None = None
    ) -> dict[str, FeatureRow]:
        """One row per ticker: the newest with ``date <= as_of`` (default: the newest)."""
        ...


class OfflineFeatureLookup:
    """Lookups straight from the Parquet feature set, one cached frame per ticker."""

    def __init__(self, root: DataRoot, version: str | None = None) -> None:
        self.root = root
        self.manifest = feature_manifest(root, version)
        self.feature_version: str = self.manifest.version
        self.columns: list[str] = self.manifest.columns
        self._frames: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def tickers(self) -> list[str]:
        return sorted(self.manifest.tickers)

    def frame(self, ticker: str) -> tuple[np.ndarray, np.ndarray]:
        """(dates as datetime64[D], feature matrix) of ``ticker``, read once."""
        if ticker not in self.manifest.tickers:
            raise UnknownTickerError(
                f"unknown ticker {ticker}: not in feature set {self.feature_version}"
            )
        if ticker not in self._frames:
            data = self.root.read_parquet(*partition(self.feature_version, ticker))
            dates = data["date"].to_numpy().astype("datetime64[D]")
            self._frames[ticker] = (dates, data[self.columns].to_numpy(dtype="float64"))
        return self._frames[ticker]

    def row(self, ticker: str, as_of: dt.date | None) -> FeatureRow:
        dates, values = self.frame(ticker)
        pos = (
            len(dates) - 1
            if as_of is None
            else int(np.searchsorted(dates, np.datetime64(as_of, "D"), "right")) - 1
        )
        if pos < 0:
            raise NoFeaturesError(
                f"{ticker}: no features on or before {as_of} (first is {dates[0]})"
            )
        return FeatureRow(
            ticker,
            dates[pos].astype(dt.date),
            dict(zip(self.columns, values[pos].tolist(), strict=True)),
        )

    def get_online_features(
        self, tickers: list[str], as_of: dt.date | None = None
    ) -> dict[str, FeatureRow]:
        return {t: self.row(t, as_of) for t in tickers}


class RedisFeatureLookup:
    """Lookups from Redis, filled from the offline store by ``materialize``."""

    def __init__(self, client: Any, offline: OfflineFeatureLookup, keep_days: int) -> None:
        self.client = client
        self.offline = offline
        self.keep_days = keep_days
        self.feature_version = offline.feature_version
        self.columns = offline.columns
        self._prefix = f"ray_app:features:{self.feature_version}"

    def _key(self, ticker: str) -> str:
        return f"{self._prefix}:{ticker}"

    def materialize(self) -> int:
        """Load the trailing rows of every ticker into Redis; returns rows written."""
        written, floors = 0, {}
        pipe = self.client.pipeline(transaction=False)
        for ticker in self.offline.tickers:
            dates, values = self.offline.frame(ticker)
            tail = slice(max(0, len(dates) - self.keep_days), len(dates))
            members = {
                json.dumps({"d": str(d), "v": v.tolist()}): _score(d)
                for d, v in zip(dates[tail], values[tail], strict=False)
            }
            pipe.delete(self._key(ticker))
            pipe.zadd(self._key(ticker), members)
            floors[ticker] = str(dates[tail][0])
            written += len(members)
        pipe.hset(f"{self._prefix}:_floor", mapping=floors)
        pipe.execute()
        return written

    def is_materialized(self) -> bool:
        return bool(self.client.exists(f"{self._prefix}:_floor"))

    def get_online_features(
        self, tickers: list[str], as_of: dt.date | None = None
    ) -> dict[str, FeatureRow]:
        for ticker in tickers:
            if ticker not in self.offline.manifest.tickers:
                raise UnknownTickerError(
                    f"unknown ticker {ticker}: not in feature set {self.feature_version}"
                )
        top = "+inf" if as_of is None else _score(np.datetime64(as_of, "D"))
        pipe = self.client.pipeline(transaction=False)
        for ticker in tickers:
            pipe.zrevrangebyscore(self._key(ticker), top, "-inf", start=0, num=1)
        answers = pipe.execute()
        rows = {}
        for ticker, hit in zip(tickers, answers, strict=False):
            if hit:
                found = json.loads(hit[0])
                rows[ticker] = FeatureRow(
                    ticker,
                    dt.date.fromisoformat(found["d"]),
                    dict(zip(self.columns, found["v"], strict=True)),
                )
            else:  # older than what Redis keeps (or nothing at all): the offline store decides
                rows[ticker] = self.offline.row(ticker, as_of)
        return rows


def _score(day: np.datetime64) -> int:
    return int(day.astype("datetime64[D]").astype("int64"))


def redis_client(settings: Settings) -> Any:
    """A client of ``online.redis_url`` that authenticates with the secret ``redis_password``
    (when set; a password in the URL, allowed in dev only, wins)."""
    import redis

    password = open_secrets(settings).optional(REDIS_PASSWORD)
    return redis.Redis.from_url(
        settings.online.redis_url,
        socket_timeout=5,
        password=None if password is None else password.get_secret_value(),
    )


def _redis_lookup(settings: Settings, version: str | None) -> RedisFeatureLookup:
    offline = OfflineFeatureLookup(DataRoot(settings.data_root), version)
    return RedisFeatureLookup(redis_client(settings), offline, settings.online.redis_days)


def materialize_redis(settings: Settings, version: str | None = None) -> int:
    """Load feature set ``version`` (default newest) into Redis; returns rows written."""
    return _redis_lookup(settings, version).materialize()


def open_lookup(settings: Settings, version: str | None = None) -> FeatureLookup:
    """The lookup configured in ``settings.online`` over feature set ``version`` (or newest);
    Redis is filled on first use when ``features`` did not fill it."""
    if settings.online.backend == "offline":
        return OfflineFeatureLookup(DataRoot(settings.data_root), version)
    lookup = _redis_lookup(settings, version)
    if not lookup.is_materialized():
        lookup.materialize()
    return lookup


def as_frame(rows: dict[str, FeatureRow]) -> pd.DataFrame:
    """Lookup results as a frame: one row per ticker, ``date`` then the feature columns."""
    return pd.DataFrame([{"ticker": r.ticker, "date": r.date, **r.values} for r in rows.values()])
