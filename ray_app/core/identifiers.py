"""The identifiers that become file paths: tickers and data or feature versions.

A ticker names a partition folder (``raw/ticker=AAPL``) and a version names a manifest
(``raw/manifests/<version>.json``), so each is checked against one rule before it reaches a
path: the settings, the command line, the data sources and the HTTP API all use these.
"""

from __future__ import annotations

import re

from ray_app.core.errors import RayAppError

TICKER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.\-]{0,15}$"
VERSION_PATTERN = r"^[0-9a-f]{16}$"
_TICKER = re.compile(TICKER_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)


class InvalidIdentifierError(RayAppError, ValueError):
    """A ticker or version that does not follow its rule; the message names the value."""


def check_ticker(value: str) -> str:
    """``value`` stripped and upper-cased, when it is a ticker: a letter or digit, then up
    to 15 letters, digits, dots or dashes (BRK-B, BF.B, 7203.T). Never a path separator."""
    ticker = value.strip().upper()
    if not _TICKER.match(ticker):
        raise InvalidIdentifierError(
            f"{value!r} is not a ticker: use 1-16 letters, digits, '.' or '-', "
            "starting with a letter or digit"
        )
    return ticker


def check_version(value: str, what: str = "version") -> str:
    """``value`` when it has the form of a data or feature version (16 lowercase hex digits,
    the start of a content hash), so it can name a file under the data root."""
    if not _VERSION.match(value):
        raise InvalidIdentifierError(
            f"{what} {value!r} is not a version: expected 16 hex digits such as 3f2a9c0d1e4b5a67"
        )
    return value
