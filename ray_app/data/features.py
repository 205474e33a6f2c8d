"""Per-ticker technical features and the next-day target, strictly point in time.

Every feature on day t is a function of bars up to and including t: rolling windows look
back, exponential averages run forward from the first bar, and the market index is joined
"as of" t. Cutting the history at any day therefore leaves every earlier row unchanged
(tests prove it on real data). The target is the next bar's log return; the newest row has
none and is kept for serving, marked ``has_target = False``.

The spec also names the cross-sectional companions (``ray_app.data.cross_section`` computes
them across each day's tickers, after this per-ticker pass) and the label models are trained
on: ``target_ret`` itself, its excess over the index (made here), or its rank across the
day's tickers (made with the companions). ``target_ret`` stays the realised return whatever
the label: evaluation's backtest and the live monitor score against it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import pandas as pd

from ray_app.core.settings import FeatureSettings

if TYPE_CHECKING:
    from numpy.typing import ArrayLike
    from pandas.api.typing import Rolling

TARGET = "target_ret"
TARGET_DIR = "target_dir"
KEYS = ["ticker", "date"]
EXCESS_TARGET = "target_excess_ret"
RANK_TARGET = "target_ret_csrank"
LABEL_COLUMNS: dict[str, str] = {
    "next_return": TARGET,
    "next_excess_return": EXCESS_TARGET,
    "next_return_csrank": RANK_TARGET,
}
LABEL = "label"
"""The column models fit: ``load_feature_set`` copies the set's label column (its manifest's
``target``) under this one name, so no model code depends on which label a set chose."""
CS_SUFFIXES = ("_csrank", "_cszscore")
ALPHA_WINDOWED = (
    "ma_gap",
    "volume_ratio",
    "corr_pv",
    "corr_rv",
    "range_pos",
    "since_high",
    "since_low",
)
# Options added after feature sets were first built: left at their defaults they are not
# hashed, so every feature version built before them keeps its name.
LATER_OPTIONS = ("alpha_features", "alpha_windows", "cross_sectional", "label")


def label_column(spec: FeatureSettings) -> str:
    """The stored column holding the label ``spec`` chose (``target_ret`` by default)."""
    return LABEL_COLUMNS[spec.label]


def _alpha_names(spec: FeatureSettings) -> list[str]:
    names = ["kbar_body", "kbar_range", "kbar_upper", "kbar_lower", "kbar_close_pos"]
    for kind in ALPHA_WINDOWED:
        names += [f"{kind}_{w}" for w in spec.alpha_windows]
    return names


def ticker_feature_names(spec: FeatureSettings, with_market: bool) -> list[str]:
    """The columns ``compute_features`` makes from one ticker's bars, in a stable order."""
    names = [f"ret_{h}d" for h in spec.return_horizons]
    names += [f"vol_{w}d" for w in spec.volatility_windows]
    names += [f"lag_ret_{k}" for k in spec.lags]
    names += [
        f"rsi_{spec.rsi_window}",
        "macd",
        "macd_signal",
        "macd_hist",
        f"bb_pos_{spec.bollinger_window}",
        f"atr_{spec.atr_window}",
        f"volume_z_{spec.volume_window}",
        "day_of_week",
        "month",
    ]
    if spec.alpha_features:
        names += _alpha_names(spec)
    if with_market:
        names += [f"excess_ret_{h}d" for h in spec.return_horizons]
        names += ["market_ret_1d", f"beta_{spec.beta_window}d"]
        if spec.alpha_features:
            names += [f"resid_mom_{w}" for w in spec.alpha_windows]
    return names


def cross_sectional_names(spec: FeatureSettings) -> list[str]:
    """The companions of ``spec.cross_sectional``: ``<name>_csrank``, ``<name>_cszscore``."""
    return [f"{name}{suffix}" for name in spec.cross_sectional for suffix in CS_SUFFIXES]


def feature_names(spec: FeatureSettings, with_market: bool) -> list[str]:
    """Every feature column of a set built with ``spec``, in a stable order: the per-ticker
    ones, then the cross-sectional companions."""
    return ticker_feature_names(spec, with_market) + cross_sectional_names(spec)


def needs_cross_section(spec: FeatureSettings) -> bool:
    """Whether a build needs the pass over each day's tickers after the per-ticker one."""
    return bool(spec.cross_sectional) or spec.label == "next_return_csrank"


def check_spec(spec: FeatureSettings, with_market: bool) -> None:
    """ValueError for a spec that cannot be built with (or without) the index: companions of
    columns it does not make, or the excess label without the index to measure it against."""
    known = ticker_feature_names(spec, with_market)
    unknown = [n for n in spec.cross_sectional if n not in known]
    if unknown:
        market = "" if with_market else " (the market features need the index in the data)"
        raise ValueError(
            f"features.cross_sectional names column(s) {', '.join(unknown)} that the spec does "
            f"not make{market}"
        )
    if spec.label == "next_excess_return" and not with_market:
        raise ValueError(
            f"features.label next_excess_return needs the index {spec.index_ticker} in the "
            "data version"
        )


def _hashed_spec(spec: FeatureSettings) -> dict[str, object]:
    dump, defaults = spec.model_dump(mode="json"), FeatureSettings().model_dump(mode="json")
    return {k: v for k, v in dump.items() if k not in LATER_OPTIONS or v != defaults[k]}


def spec_hash(spec: FeatureSettings, with_market: bool) -> str:
    """Hash of everything that changes the feature values or the label (and of the code's
    columns); options in ``LATER_OPTIONS`` count only when set."""
    payload = {
        "spec": _hashed_spec(spec),
        "with_market": with_market,
        "columns": feature_names(spec, with_market),
        "schema": 1,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


Bars: TypeAlias = pd.DataFrame | Mapping[str, np.ndarray]
"""One ticker's bars, sorted by date: a frame, or its columns as arrays (``read_bar_columns``,
which the feature pass reads without building a frame). Both give the same values."""


@dataclass(frozen=True)
class Prices:
    """One ticker's bars, adjusted, as NumPy arrays: the features' arithmetic runs on these.

    Element-wise steps (diffs, logs, ratios) are NumPy's own, and only the window kernels
    (rolling, ewm) go through pandas. On 5,000 bars pandas' overhead per operation was
    about half of a ticker's feature time; NumPy computes the same IEEE operations in the
    same order, so every value is bit for bit what the Series form gave.
    """

    date: np.ndarray  # datetime64[ns]
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    @classmethod
    def of(cls, bars: Bars) -> Prices:
        """OHLC scaled by the adjustment factor, so splits and dividends are not moves."""
        factor = _factor(bars)
        return cls(
            date=np.asarray(bars["date"]),
            open=np.asarray(bars["open"]) * factor,
            high=np.asarray(bars["high"]) * factor,
            low=np.asarray(bars["low"]) * factor,
            close=np.asarray(bars["close"]) * factor,
            volume=np.asarray(bars["volume"], dtype="float64"),
        )


def adjusted(bars: pd.DataFrame) -> pd.DataFrame:
    """``Prices.of(bars)`` as a frame of bar columns (the live monitor reads it)."""
    px = Prices.of(bars)
    return pd.DataFrame(
        {
            "date": px.date,
            "open": px.open,
            "high": px.high,
            "low": px.low,
            "close": px.close,
            "volume": bars["volume"].to_numpy(),
        }
    )


def _factor(bars: Bars) -> np.ndarray:
    """The adjustment factor of each bar (dividends and splits since)."""
    return np.asarray(bars["adj_close"]) / np.asarray(bars["close"])


def _adjusted_close(bars: Bars) -> np.ndarray:
    """The close of ``adjusted(bars)`` alone (the index needs no other column)."""
    return np.asarray(bars["close"]) * _factor(bars)


def _diff(x: np.ndarray, n: int = 1) -> np.ndarray:
    """``x[t] - x[t - n]``, NaN for the first ``n`` days (``Series.diff``)."""
    out = np.full(len(x), np.nan)
    out[n:] = x[n:] - x[: len(x) - n]
    return out


def _shift(x: np.ndarray, n: int) -> np.ndarray:
    """``x[t - n]`` (``n`` < 0: a later day), NaN where there is none (``Series.shift``)."""
    out = np.full(len(x), np.nan)
    if n >= 0:
        out[n:] = x[: len(x) - n]
    else:
        out[:n] = x[-n:]
    return out


def _positive(x: np.ndarray) -> np.ndarray:
    """``x`` with negatives set to 0, NaN kept (``Series.clip(lower=0)``)."""
    return np.where(x < 0, 0.0, x)


def _rolling(x: np.ndarray, window: int) -> Rolling:
    """pandas' full windows over ``x``: its kernels, so the values equal the Series form."""
    return pd.Series(x, copy=False).rolling(window, min_periods=window)


def _ewm_mean(
    x: np.ndarray, min_periods: int, alpha: float | None = None, span: float | None = None
) -> np.ndarray:
    """The exponential average from the first day on (``adjust=False``), NaN until
    ``min_periods`` values were seen."""
    ewm = pd.Series(x, copy=False).ewm(
        alpha=alpha, span=span, min_periods=min_periods, adjust=False
    )
    return ewm.mean().to_numpy()


def _rsi(close: np.ndarray, window: int) -> np.ndarray:
    delta = _diff(close)
    gain = _ewm_mean(_positive(delta), window, alpha=1 / window)
    loss = _ewm_mean(_positive(-delta), window, alpha=1 / window)
    total = gain + loss
    return 100 * gain / np.where(total == 0, np.nan, total)  # no losses: 100; flat: NaN


def _atr(px: Prices, window: int) -> np.ndarray:
    prev_close = _shift(px.close, 1)
    ranges = (px.high - px.low, np.abs(px.high - prev_close), np.abs(px.low - prev_close))
    true_range = np.fmax(np.fmax(ranges[0], ranges[1]), ranges[2])  # NaN only where all are
    average = _ewm_mean(true_range, window, alpha=1 / window)
    return average / px.close


def ratio_or_zero(deviation: ArrayLike, scale: ArrayLike) -> np.ndarray:
    """deviation / scale, 0 where the window had no spread (a constant series is at its mean,
    and is correlated with nothing); NaN where the scale is NaN (a warm-up)."""
    scale = np.asarray(scale, dtype="float64")
    ratio = np.asarray(deviation, dtype="float64") / np.where(scale > 0, scale, np.nan)
    return np.where(scale != 0, ratio, 0.0)


def _zscore(x: np.ndarray, window: int) -> np.ndarray:
    """How far ``x`` sits from its rolling mean, in rolling standard deviations."""
    rolling = _rolling(x, window)
    return ratio_or_zero(x - rolling.mean().to_numpy(), rolling.std().to_numpy())


def _technical(px: Prices, spec: FeatureSettings) -> dict[str, np.ndarray]:
    log_close = np.log(px.close)
    ret1 = _diff(log_close)
    cols: dict[str, np.ndarray] = {}
    for h in spec.return_horizons:
        cols[f"ret_{h}d"] = _diff(log_close, h)
    for w in spec.volatility_windows:
        cols[f"vol_{w}d"] = _rolling(ret1, w).std().to_numpy()
    for k in spec.lags:
        cols[f"lag_ret_{k}"] = _shift(ret1, k)
    cols[f"rsi_{spec.rsi_window}"] = _rsi(px.close, spec.rsi_window)
    fast, slow, signal = spec.macd
    ema_fast = _ewm_mean(px.close, fast, span=fast)
    ema_slow = _ewm_mean(px.close, slow, span=slow)
    macd = (ema_fast - ema_slow) / px.close
    macd_signal = _ewm_mean(macd, signal, span=signal)
    cols.update(macd=macd, macd_signal=macd_signal, macd_hist=macd - macd_signal)
    w = spec.bollinger_window
    rolling = _rolling(px.close, w)
    mean, std = rolling.mean().to_numpy(), rolling.std().to_numpy()
    cols[f"bb_pos_{w}"] = ratio_or_zero(px.close - mean, 2 * std)
    cols[f"atr_{spec.atr_window}"] = _atr(px, spec.atr_window)
    cols[f"volume_z_{spec.volume_window}"] = _zscore(np.log1p(px.volume), spec.volume_window)
    days = pd.DatetimeIndex(px.date)
    cols["day_of_week"] = days.day_of_week.to_numpy(dtype="float64")
    cols["month"] = days.month.to_numpy(dtype="float64")
    return cols


def _rolling_corr(a: np.ndarray, b: np.ndarray, window: int) -> np.ndarray:
    """Pearson correlation of ``a`` and ``b`` over the last ``window`` days; 0 when either
    was flat over it (no co-movement to measure), clipped against rounding."""
    rolling_a, rolling_b = _rolling(a, window), _rolling(b, window)
    cov = rolling_a.cov(pd.Series(b, copy=False)).to_numpy()
    spread = rolling_a.std().to_numpy() * rolling_b.std().to_numpy()
    return np.clip(ratio_or_zero(cov, spread), -1.0, 1.0)


def _since_extreme(values: np.ndarray, window: int, highest: bool) -> np.ndarray:
    """Days since the window's highest (or lowest) value, the most recent one on ties, over
    ``window - 1``: 0 when today is the extreme, 1 when it is the window's oldest day."""
    out = np.full(len(values), np.nan)
    if len(values) >= window:
        view = np.lib.stride_tricks.sliding_window_view(values, window)
        newest_first = view[:, ::-1]
        pos = newest_first.argmax(axis=1) if highest else newest_first.argmin(axis=1)
        out[window - 1 :] = pos / (window - 1)
    return out


def _alpha(px: Prices, spec: FeatureSettings) -> dict[str, np.ndarray]:
    """The Alpha-style set (in the spirit of Qlib's Alpha158, defined here afresh): the shape
    of today's bar, and over each window where the close sits against its average and its
    range, how long ago the range's high and low were, how unusual today's volume is, and
    how price and volume move together.

    The bar's shape is relative to its open, so it compares across price levels; gaps and
    ratios are logs, so up and down moves are symmetric; positions in a range are centred on
    0 (-0.5 at the low, 0.5 at the high), the days since the high or low run 0 .. 1.
    """
    opened, high, low, close = px.open, px.high, px.low, px.close
    cols: dict[str, np.ndarray] = {
        "kbar_body": (close - opened) / opened,
        "kbar_range": (high - low) / opened,
        "kbar_upper": (high - np.fmax(opened, close)) / opened,
        "kbar_lower": (np.fmin(opened, close) - low) / opened,
        "kbar_close_pos": ratio_or_zero(close - (high + low) / 2, high - low),
    }
    log_close, log_vol = np.log(close), np.log1p(px.volume)
    ret1, vol_change = _diff(log_close), _diff(log_vol)
    for w in spec.alpha_windows:
        top = _rolling(high, w).max().to_numpy()
        bottom = _rolling(low, w).min().to_numpy()
        volume_mean = _rolling(px.volume, w).mean().to_numpy()
        cols[f"ma_gap_{w}"] = log_close - np.log(_rolling(close, w).mean().to_numpy())
        cols[f"volume_ratio_{w}"] = log_vol - np.log1p(volume_mean)
        cols[f"corr_pv_{w}"] = _rolling_corr(log_close, log_vol, w)
        cols[f"corr_rv_{w}"] = _rolling_corr(ret1, vol_change, w)
        cols[f"range_pos_{w}"] = ratio_or_zero(close - (top + bottom) / 2, top - bottom)
        cols[f"since_high_{w}"] = _since_extreme(high, w, highest=True)
        cols[f"since_low_{w}"] = _since_extreme(low, w, highest=False)
    return cols


def _market(
    px: Prices, index_bars: Bars, spec: FeatureSettings, own: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Features relative to the index, joined as of each date (never a later index bar).

    ``resid_mom_{w}`` (with the Alpha-style set) is the w-day return the index does not
    explain: own w-day log return minus today's beta times the index's.
    """
    # As of each date: the index's last bar on or before it (merge_asof "backward", done
    # with searchsorted since both are sorted by date: a tenth of the cost).
    at = np.searchsorted(np.asarray(index_bars["date"]), px.date, side="right") - 1
    index_close = np.where(at >= 0, _adjusted_close(index_bars)[np.maximum(at, 0)], np.nan)
    log_index = np.log(index_close)
    cols: dict[str, np.ndarray] = {}
    for h in spec.return_horizons:
        cols[f"excess_ret_{h}d"] = own[f"ret_{h}d"] - _diff(log_index, h)
    market_ret = _diff(log_index)
    cols["market_ret_1d"] = market_ret
    w = spec.beta_window
    log_close = np.log(px.close)
    cov = _rolling(_diff(log_close), w).cov(pd.Series(market_ret, copy=False)).to_numpy()
    var = _rolling(market_ret, w).var().to_numpy()
    beta = cov / np.where(var == 0, np.nan, var)
    cols[f"beta_{w}d"] = beta
    if spec.alpha_features:
        for a in spec.alpha_windows:
            cols[f"resid_mom_{a}"] = _diff(log_close, a) - beta * _diff(log_index, a)
    return cols


def _excess_target(px: Prices, index_bars: Bars, target: np.ndarray) -> np.ndarray:
    """``target`` minus the index's log return between the same two closes; NaN when the index
    has no bar on either day (an as-of stand-in would span other days than the target)."""
    index_dates = np.asarray(index_bars["date"])
    at = np.minimum(np.searchsorted(index_dates, px.date), max(len(index_dates) - 1, 0))
    same_day = (index_dates[at] == px.date) if len(index_dates) else np.zeros(len(at), bool)
    log_index = np.log(np.where(same_day, _adjusted_close(index_bars)[at], np.nan))
    return target - (_shift(log_index, -1) - log_index)


def compute_features(
    ticker: str, bars: pd.DataFrame, spec: FeatureSettings, index_bars: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Feature rows of one ticker: keys, features, target (``feature_columns`` as a frame)."""
    return pd.DataFrame({"ticker": ticker, **feature_columns(bars, spec, index_bars)})


def feature_columns(
    bars: Bars, spec: FeatureSettings, index_bars: Bars | None = None
) -> dict[str, np.ndarray]:
    """One ticker's feature rows as named columns, in the stored order: date, features,
    target (the store writes them to Parquet as they are, with no frame in between: building
    one, dropping its ticker column and taking it apart again cost a quarter of a ticker's
    feature time).

    Rows with any missing feature are dropped: the warm-up of the longest window, and days
    whose inputs were degenerate (flat prices give no RSI). Either way it depends on past
    bars only, so cutting the history never changes which earlier rows survive.

    ``bars`` are validated bars sorted by date; ``index_bars`` (the market index) turns on
    the market-relative features. The cross-sectional companions (and a rank label) are not
    made here: they need the other tickers' rows of the day (``ray_app.data.cross_section``).
    With the excess label, ``has_target`` also needs the index's bars around the row.
    """
    with_market = index_bars is not None
    check_spec(spec, with_market)
    px = Prices.of(bars)
    with np.errstate(divide="ignore", invalid="ignore"):  # inf and NaN are dropped below
        cols = _technical(px, spec)
        if spec.alpha_features:
            cols.update(_alpha(px, spec))
        if index_bars is not None:
            cols.update(_market(px, index_bars, spec, cols))
        target = _shift(_diff(np.log(px.close)), -1)
        excess = None
        if index_bars is not None and spec.label == "next_excess_return":
            excess = _excess_target(px, index_bars, target)
    names = ticker_feature_names(spec, with_market)
    values = np.vstack([cols[name] for name in names])
    values[np.isinf(values)] = np.nan
    known = ~np.isnan(target) if excess is None else ~(np.isnan(target) | np.isnan(excess))
    keep = ~np.isnan(values).any(axis=0)
    kept = values[:, keep]  # one block, a row per feature: each column is one of its rows
    columns = {"date": px.date[keep]}
    columns |= dict(zip(names, kept, strict=True))
    columns |= {TARGET: target[keep], TARGET_DIR: (target[keep] > 0).astype("int8")}
    if excess is not None:
        columns[EXCESS_TARGET] = excess[keep]
    return columns | {"has_target": known[keep]}
