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

import numpy as np
import pandas as pd

from ray_app.core.settings import FeatureSettings

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


def adjusted(bars: pd.DataFrame) -> pd.DataFrame:
    """OHLC scaled by the adjustment factor, so splits and dividends are not moves."""
    factor = _factor(bars)
    columns = {"date": bars["date"].to_numpy()}
    columns |= {col: bars[col].to_numpy() * factor for col in ("open", "high", "low", "close")}
    return pd.DataFrame(columns | {"volume": bars["volume"].to_numpy()})


def _factor(bars: pd.DataFrame) -> np.ndarray:
    """The adjustment factor of each bar (dividends and splits since)."""
    return (bars["adj_close"] / bars["close"]).to_numpy()


def _adjusted_close(bars: pd.DataFrame) -> np.ndarray:
    """The close of ``adjusted(bars)`` alone (the index needs no other column)."""
    return bars["close"].to_numpy() * _factor(bars)


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


def ratio_or_zero(deviation: pd.Series, scale: pd.Series) -> pd.Series:
    """deviation / scale, 0 where the window had no spread (a constant series is at its mean,
    and is correlated with nothing); NaN where the scale is NaN (a warm-up)."""
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
    cols[f"bb_pos_{w}"] = ratio_or_zero(px["close"] - mean, 2 * std)
    cols[f"atr_{spec.atr_window}"] = _atr(px, spec.atr_window)
    log_vol = np.log1p(px["volume"])
    v = spec.volume_window
    vol_mean, vol_std = (
        log_vol.rolling(v, min_periods=v).mean(),
        log_vol.rolling(v, min_periods=v).std(),
    )
    cols[f"volume_z_{v}"] = ratio_or_zero(log_vol - vol_mean, vol_std)
    cols["day_of_week"] = px["date"].dt.day_of_week.astype("float64")
    cols["month"] = px["date"].dt.month.astype("float64")
    return cols


def _rolling_corr(a: pd.Series, b: pd.Series, window: int) -> pd.Series:
    """Pearson correlation of ``a`` and ``b`` over the last ``window`` days; 0 when either
    was flat over it (no co-movement to measure), clipped against rounding."""
    cov = a.rolling(window, min_periods=window).cov(b)
    spread = (
        a.rolling(window, min_periods=window).std() * b.rolling(window, min_periods=window).std()
    )
    return ratio_or_zero(cov, spread).clip(-1.0, 1.0)


def _since_extreme(values: pd.Series, window: int, highest: bool) -> pd.Series:
    """Days since the window's highest (or lowest) value, the most recent one on ties, over
    ``window - 1``: 0 when today is the extreme, 1 when it is the window's oldest day."""
    out = np.full(len(values), np.nan)
    if len(values) >= window:
        view = np.lib.stride_tricks.sliding_window_view(values.to_numpy(dtype="float64"), window)
        newest_first = view[:, ::-1]
        pos = newest_first.argmax(axis=1) if highest else newest_first.argmin(axis=1)
        out[window - 1 :] = pos / (window - 1)
    return pd.Series(out, index=values.index)


def _alpha(px: pd.DataFrame, spec: FeatureSettings) -> dict[str, pd.Series]:
    """The Alpha-style set (in the spirit of Qlib's Alpha158, defined here afresh): the shape
    of today's bar, and over each window where the close sits against its average and its
    range, how long ago the range's high and low were, how unusual today's volume is, and
    how price and volume move together.

    The bar's shape is relative to its open, so it compares across price levels; gaps and
    ratios are logs, so up and down moves are symmetric; positions in a range are centred on
    0 (-0.5 at the low, 0.5 at the high), the days since the high or low run 0 .. 1.
    """
    opened, high, low, close = px["open"], px["high"], px["low"], px["close"]
    body = pd.concat([opened, close], axis=1)
    cols: dict[str, pd.Series] = {
        "kbar_body": (close - opened) / opened,
        "kbar_range": (high - low) / opened,
        "kbar_upper": (high - body.max(axis=1)) / opened,
        "kbar_lower": (body.min(axis=1) - low) / opened,
        "kbar_close_pos": ratio_or_zero(close - (high + low) / 2, high - low),
    }
    log_close, log_vol = np.log(close), np.log1p(px["volume"])
    ret1, vol_change = log_close.diff(), log_vol.diff()
    for w in spec.alpha_windows:
        top = high.rolling(w, min_periods=w).max()
        bottom = low.rolling(w, min_periods=w).min()
        volume_mean = px["volume"].rolling(w, min_periods=w).mean()
        cols[f"ma_gap_{w}"] = log_close - np.log(close.rolling(w, min_periods=w).mean())
        cols[f"volume_ratio_{w}"] = log_vol - np.log1p(volume_mean)
        cols[f"corr_pv_{w}"] = _rolling_corr(log_close, log_vol, w)
        cols[f"corr_rv_{w}"] = _rolling_corr(ret1, vol_change, w)
        cols[f"range_pos_{w}"] = ratio_or_zero(close - (top + bottom) / 2, top - bottom)
        cols[f"since_high_{w}"] = _since_extreme(high, w, highest=True)
        cols[f"since_low_{w}"] = _since_extreme(low, w, highest=False)
    return cols


def _market(
    px: pd.DataFrame, index_bars: pd.DataFrame, spec: FeatureSettings, own: dict[str, pd.Series]
) -> dict[str, pd.Series]:
    """Features relative to the index, joined as of each date (never a later index bar).

    ``resid_mom_{w}`` (with the Alpha-style set) is the w-day return the index does not
    explain: own w-day log return minus today's beta times the index's.
    """
    # As of each date: the index's last bar on or before it (merge_asof "backward", done
    # with searchsorted since both are sorted by date: a tenth of the cost).
    at = np.searchsorted(index_bars["date"].to_numpy(), px["date"].to_numpy(), side="right") - 1
    index_close = np.where(at >= 0, _adjusted_close(index_bars)[np.maximum(at, 0)], np.nan)
    log_index = pd.Series(np.log(index_close), index=px.index)
    cols: dict[str, pd.Series] = {}
    for h in spec.return_horizons:
        cols[f"excess_ret_{h}d"] = own[f"ret_{h}d"] - log_index.diff(h)
    market_ret = log_index.diff()
    cols["market_ret_1d"] = market_ret
    w = spec.beta_window
    log_close = np.log(px["close"])
    cov = log_close.diff().rolling(w, min_periods=w).cov(market_ret)
    beta = cov / market_ret.rolling(w, min_periods=w).var().replace(0, np.nan)
    cols[f"beta_{w}d"] = beta
    if spec.alpha_features:
        for a in spec.alpha_windows:
            cols[f"resid_mom_{a}"] = log_close.diff(a) - beta * log_index.diff(a)
    return cols


def _excess_target(px: pd.DataFrame, index_bars: pd.DataFrame, target: pd.Series) -> pd.Series:
    """``target`` minus the index's log return between the same two closes; NaN when the index
    has no bar on either day (an as-of stand-in would span other days than the target)."""
    index_close = pd.Series(_adjusted_close(index_bars), index=index_bars["date"])
    log_index = np.log(px["date"].map(index_close))
    return target - (log_index.shift(-1) - log_index)


def compute_features(
    ticker: str, bars: pd.DataFrame, spec: FeatureSettings, index_bars: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Feature rows of one ticker: keys, features, target.

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
    px = adjusted(bars)
    cols = _technical(px, spec)
    if spec.alpha_features:
        cols.update(_alpha(px, spec))
    if index_bars is not None:
        cols.update(_market(px, index_bars, spec, cols))
    names = ticker_feature_names(spec, with_market)
    values = np.column_stack([cols[name].to_numpy(dtype="float64") for name in names])
    values[np.isinf(values)] = np.nan
    target = np.log(px["close"]).diff().shift(-1)
    excess = None
    if index_bars is not None and spec.label == "next_excess_return":
        excess = _excess_target(px, index_bars, target)
    known = target.notna() if excess is None else target.notna() & excess.notna()
    keep = ~np.isnan(values).any(axis=1)
    frame = pd.DataFrame(values[keep], columns=names)  # one block: cheap to build and write
    frame.insert(0, "date", px["date"].to_numpy()[keep])
    frame.insert(0, "ticker", ticker)
    frame[TARGET] = target.to_numpy()[keep]
    frame[TARGET_DIR] = (target > 0).astype("int8").to_numpy()[keep]
    if excess is not None:
        frame[EXCESS_TARGET] = excess.to_numpy()[keep]
    frame["has_target"] = known.to_numpy()[keep]
    return frame
