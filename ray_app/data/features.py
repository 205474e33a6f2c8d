"""Per-ticker technical features and the next-day target, strictly point in time.

Every feature on day t is a function of bars up to and including t: rolling windows look
back, exponential averages run forward from the first bar, and the market index is joined
"as of" t. Cutting the history at any day therefore leaves every earlier row unchanged
(tests prove it on real data). The target is the next bar's log return; the newest row has
none and is kept for serving, marked ``has_target = False``.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd

from ray_app.core.settings import FeatureSettings

TARGET = "target_ret"
TARGET_DIR = "target_dir"
KEYS = ["ticker", "date"]


def feature_names(spec: FeatureSettings, with_market: bool) -> list[str]:
    """The feature columns produced by ``spec``, in a stable order."""
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
    if with_market:
        names += [f"excess_ret_{h}d" for h in spec.return_horizons]
        names += ["market_ret_1d", f"beta_{spec.beta_window}d"]
    return names


def spec_hash(spec: FeatureSettings, with_market: bool) -> str:
    """Hash of everything that changes the feature values (and of the code's columns)."""
    payload = {
        "spec": spec.model_dump(mode="json"),
        "with_market": with_market,
        "columns": feature_names(spec, with_market),
        "schema": 1,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def adjusted(bars: pd.DataFrame) -> pd.DataFrame:
    """OHLC scaled by the adjustment factor, so splits and dividends are not moves."""
    factor = bars["adj_close"] / bars["close"]
    out = pd.DataFrame({"date": bars["date"].to_numpy()})
    for col in ("open", "high", "low", "close"):
        out[col] = (bars[col] * factor).to_numpy()
    out["volume"] = bars["volume"].to_numpy()
    return out


def _rsi(close: pd.Series, window: int) -> pd.Series:
    delta = close.diff()
    gain = delta.clip(lower=0).ewm(alpha=1 / window, adjust=False, min_periods=window).mean()
    loss = (-delta).clip(lower=0).ewm(alpha=1 / window, adjust=False, min_periods=window).mean()
    return 100 * gain / (gain + loss).replace(0, np.nan)  # no losses: 100; flat prices: NaN


def _atr(bars: pd.DataFrame, window: int) -> pd.Series:
    prev_close = bars["close"].shift(1)
    true_range = pd.concat(
        [
            bars["high"] - bars["low"],
            (bars["high"] - prev_close).abs(),
            (bars["low"] - prev_close).abs(),
        ],
        axis=1,
    ).max(axis=1)
    return true_range.ewm(alpha=1 / window, adjust=False, min_periods=window).mean() / bars["close"]


def _zscore(deviation: pd.Series, scale: pd.Series) -> pd.Series:
    """deviation / scale, 0 where the window had no spread (a constant series is at its mean)."""
    return (deviation / scale.where(scale > 0)).where(scale != 0, 0.0)


def _technical(px: pd.DataFrame, spec: FeatureSettings) -> dict[str, pd.Series]:
    log_close = np.log(px["close"])
    ret1 = log_close.diff()
    cols: dict[str, pd.Series] = {}
    for h in spec.return_horizons:
        cols[f"ret_{h}d"] = log_close.diff(h)
    for w in spec.volatility_windows:
        cols[f"vol_{w}d"] = ret1.rolling(w, min_periods=w).std()
    for k in spec.lags:
        cols[f"lag_ret_{k}"] = ret1.shift(k)
    cols[f"rsi_{spec.rsi_window}"] = _rsi(px["close"], spec.rsi_window)
    fast, slow, signal = spec.macd
    ema_fast = px["close"].ewm(span=fast, adjust=False, min_periods=fast).mean()
    ema_slow = px["close"].ewm(span=slow, adjust=False, min_periods=slow).mean()
    macd = (ema_fast - ema_slow) / px["close"]
    macd_signal = macd.ewm(span=signal, adjust=False, min_periods=signal).mean()
    cols.update(macd=macd, macd_signal=macd_signal, macd_hist=macd - macd_signal)
    w = spec.bollinger_window
    mean, std = (
        px["close"].rolling(w, min_periods=w).mean(),
        px["close"].rolling(w, min_periods=w).std(),
    )
    cols[f"bb_pos_{w}"] = _zscore(px["close"] - mean, 2 * std)
    cols[f"atr_{spec.atr_window}"] = _atr(px, spec.atr_window)
    log_vol = np.log1p(px["volume"])
    v = spec.volume_window
    vol_mean, vol_std = (
        log_vol.rolling(v, min_periods=v).mean(),
        log_vol.rolling(v, min_periods=v).std(),
    )
    cols[f"volume_z_{v}"] = _zscore(log_vol - vol_mean, vol_std)
    cols["day_of_week"] = px["date"].dt.day_of_week.astype("float64")
    cols["month"] = px["date"].dt.month.astype("float64")
    return cols


def _market(
    px: pd.DataFrame, index_bars: pd.DataFrame, spec: FeatureSettings, own: dict[str, pd.Series]
) -> dict[str, pd.Series]:
    """Features relative to the index, joined as of each date (never a later index bar)."""
    index_px = adjusted(index_bars)[["date", "close"]].rename(columns={"close": "index_close"})
    joined = pd.merge_asof(px[["date"]], index_px, on="date", direction="backward")
    log_index = np.log(joined["index_close"])
    cols: dict[str, pd.Series] = {}
    for h in spec.return_horizons:
        cols[f"excess_ret_{h}d"] = own[f"ret_{h}d"] - log_index.diff(h)
    market_ret = log_index.diff()
    cols["market_ret_1d"] = market_ret
    w = spec.beta_window
    ret1 = np.log(px["close"]).diff()
    cov = ret1.rolling(w, min_periods=w).cov(market_ret)
    cols[f"beta_{w}d"] = cov / market_ret.rolling(w, min_periods=w).var().replace(0, np.nan)
    return cols


def compute_features(
    ticker: str, bars: pd.DataFrame, spec: FeatureSettings, index_bars: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Feature rows of one ticker: keys, features, target.

    Rows with any missing feature are dropped: the warm-up of the longest window, and days
    whose inputs were degenerate (flat prices give no RSI). Either way it depends on past
    bars only, so cutting the history never changes which earlier rows survive.

    ``bars`` are validated bars sorted by date; ``index_bars`` (the market index) turns on
    the market-relative features.
    """
    px = adjusted(bars)
    cols = _technical(px, spec)
    if index_bars is not None:
        cols.update(_market(px, index_bars, spec, cols))
    names = feature_names(spec, index_bars is not None)
    frame = pd.DataFrame({name: cols[name].to_numpy(dtype="float64") for name in names})
    frame = frame.replace([np.inf, -np.inf], np.nan)
    frame.insert(0, "date", px["date"].to_numpy())
    frame.insert(0, "ticker", ticker)
    target = np.log(px["close"]).diff().shift(-1)
    frame[TARGET] = target.to_numpy()
    frame[TARGET_DIR] = (target > 0).astype("int8").to_numpy()
    frame["has_target"] = target.notna().to_numpy()
    return frame[frame[names].notna().all(axis=1)].reset_index(drop=True)
