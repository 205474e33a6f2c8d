"""When new bars can exist: the exchange calendar, and a cheap look at what a source offers.

The daily schedule and the RayCronJob both ask ``is_session`` before they run, so the laptop
and the cluster agree on holidays. ``source_state`` is the data version of the source itself
(what it could deliver now, without fetching it): a new one means new raw data has landed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from functools import lru_cache
from importlib import metadata
from typing import Any

import pandas as pd

from ray_app.core.settings import IngestSettings
from ray_app.data.validation import exchange_sessions


def is_session(day: dt.date, exchange: str) -> bool:
    """Whether ``exchange`` trades on ``day`` (weekends and holidays are not sessions)."""
    return pd.Timestamp(day) in exchange_sessions(exchange)


@lru_cache(maxsize=4)
def _closes(exchange: str) -> pd.Series:
    import exchange_calendars as xcals

    return xcals.get_calendar(exchange, start="2000-01-03").closes


def last_closed_session(exchange: str, now: dt.datetime) -> dt.date:
    """The newest session of ``exchange`` whose close is at or before ``now`` (aware)."""
    closes = _closes(exchange)
    closed = closes[closes <= pd.Timestamp(now)]
    return closed.index[-1].date()


def source_state(cfg: IngestSettings, now: dt.datetime | None = None) -> str:
    """A digest of what the configured source offers now, read without fetching bars.

    - ``sample``: the installed sample package's version (its bars never change);
    - ``csv``: every data file's name, size and modification time in the folder;
    - ``yahoo``: the newest closed session of ``ingest.exchange`` (Yahoo has a new bar for
      each one).

    ``ingest.end`` clips what is asked for, so it is part of the digest.
    """
    state: dict[str, Any] = {"source": cfg.source, "end": str(cfg.end)}
    if cfg.source == "sample":
        state["package"] = metadata.version("bokeh-sampledata")
    elif cfg.source == "csv":
        folder = cfg.path
        files = sorted(folder.iterdir()) if folder is not None and folder.is_dir() else []
        state["files"] = [
            [p.name, p.stat().st_size, p.stat().st_mtime_ns]
            for p in files
            if p.is_file() and not p.name.startswith(".")
        ]
    else:
        moment = now or dt.datetime.now(dt.timezone.utc)
        state["session"] = last_closed_session(cfg.exchange, moment).isoformat()
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]
