"""Metrics on hand-computed cases: errors, rank and Pearson IC with their ICIR, costed
long-short books (quantile and top-k), leak warnings."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr, spearmanr

from ray_app.models.metrics import (
    PRED_COLUMNS,
    ICResult,
    directional_accuracy,
    leak_warning,
    long_short_backtest,
    long_short_weights,
    mae,
    max_drawdown,
    pearson_ic,
    rank_ic,
    rmse,
    summary,
    top_k_backtest,
    top_k_weights,
)


def preds_frame(rows: list[tuple[str, str, float, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(PRED_COLUMNS))
    return frame.assign(date=pd.to_datetime(frame["date"]))


def random_preds(n_days: int = 30, n_tickers: int = 8, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dates = np.repeat(pd.bdate_range("2024-01-01", periods=n_days), n_tickers)
    tickers = np.tile([f"T{i}" for i in range(n_tickers)], n_days)
    target = rng.normal(0, 0.02, len(dates))
    pred = 0.3 * target + rng.normal(0, 0.02, len(dates))
    return pd.DataFrame(
        {"date": dates, "ticker": tickers, "pred": pred, "target_ret": target, "label": target}
    )


def test_point_errors_and_direction_by_hand() -> None:
    y = np.array([0.01, -0.02, 0.0, 0.03])
    p = np.array([0.02, -0.01, 0.01, -0.01])
    assert rmse(y, p) == pytest.approx(np.sqrt((1e-4 + 1e-4 + 1e-4 + 16e-4) / 4))
    assert mae(y, p) == pytest.approx((0.01 + 0.01 + 0.01 + 0.04) / 4)
    # up/up, down/down, flat (not up)/up, up/down: two of four agree.
    assert directional_accuracy(y, p) == 0.5


@pytest.mark.parametrize("ic", [rank_ic, pearson_ic])
def test_ic_of_a_perfect_and_a_reversed_predictor(ic: Callable[[pd.DataFrame], ICResult]) -> None:
    frame = random_preds()
    perfect = ic(frame.assign(pred=frame["target_ret"] * 3 + 1))
    reversed_ = ic(frame.assign(pred=-frame["target_ret"]))
    assert perfect.mean == pytest.approx(1.0) and perfect.n_days == 30
    assert reversed_.mean == pytest.approx(-1.0)
    assert np.allclose(perfect.daily, 1.0) and np.allclose(reversed_.daily, -1.0)


def test_pearson_ic_weighs_distances_where_rank_ic_does_not() -> None:
    """A monotone but bent predictor ranks perfectly (rank IC 1) while its Pearson IC is
    that of the bent values, as scipy computes it per day."""
    frame = random_preds(n_days=10, n_tickers=7, seed=5)
    bent = frame.assign(pred=np.exp(200 * frame["target_ret"]))
    assert rank_ic(bent).mean == pytest.approx(1.0)
    expected = bent.groupby("date").apply(lambda d: pearsonr(d["pred"], d["target_ret"])[0])
    result = pearson_ic(bent)
    np.testing.assert_allclose(result.daily.to_numpy(), expected.to_numpy())
    assert result.mean == pytest.approx(expected.mean()) and result.mean < 0.99


def test_icir_and_t_of_a_constructed_daily_series() -> None:
    """Four days whose Pearson IC is known exactly: +1, +1, +1 and -1 (a predictor that
    reverses on the last day). Mean 0.5, std 1, so ICIR 0.5 and t = 0.5 * sqrt(4) = 1."""
    days = []
    for day, sign in zip(pd.bdate_range("2024-01-01", periods=4), (1, 1, 1, -1), strict=True):
        target = np.array([-0.02, 0.0, 0.01, 0.03])
        days.append(pd.DataFrame({"date": day, "ticker": list("ABCD"), "target_ret": target}))
        days[-1]["pred"] = sign * target
    result = pearson_ic(pd.concat(days, ignore_index=True))
    np.testing.assert_allclose(result.daily.to_numpy(), [1, 1, 1, -1])
    assert result.mean == pytest.approx(0.5) and result.std == pytest.approx(1.0)
    assert result.ir == pytest.approx(0.5) and result.t_stat == pytest.approx(1.0)


def test_ic_matches_scipy_spearman_per_day_and_its_t_stat() -> None:
    frame = random_preds(n_days=12, n_tickers=6, seed=3)
    frame.loc[frame.index[::5], "pred"] = 0.0  # ties are ranked by their average
    result = rank_ic(frame)
    expected = frame.groupby("date").apply(
        lambda day: spearmanr(day["pred"], day["target_ret"]).statistic
    )
    np.testing.assert_allclose(result.daily.to_numpy(), expected.to_numpy())
    assert result.mean == pytest.approx(expected.mean())
    assert result.std == pytest.approx(expected.std(ddof=1))
    assert result.t_stat == pytest.approx(expected.mean() / (expected.std(ddof=1) / np.sqrt(12)))


def test_ic_skips_days_without_a_cross_section() -> None:
    frame = preds_frame(
        [
            ("2024-01-02", "A", 0.1, 0.01),
            ("2024-01-02", "B", 0.2, 0.02),
            ("2024-01-02", "C", 0.3, 0.00),
            ("2024-01-03", "A", 0.1, 0.01),  # one ticker: no ranking
            ("2024-01-04", "A", 0.5, 0.01),  # constant pred: no ranking
            ("2024-01-04", "B", 0.5, 0.02),
        ]
    )
    result = rank_ic(frame)
    assert result.n_days == 1 and result.daily.index[0] == pd.Timestamp("2024-01-02")
    assert result.mean == pytest.approx(-0.5)  # ranks (1,2,3) vs (2,3,1): -1 / 2
    assert np.isnan(result.t_stat)


def hand_panel() -> pd.DataFrame:
    """Three days, four tickers; simple returns chosen so the book's P&L is easy to follow."""
    simple = {
        "2024-01-02": {"A": 0.02, "B": 0.0, "C": 0.0, "D": -0.01},
        "2024-01-03": {"A": 0.03, "B": 0.01, "C": 0.0, "D": 0.0},
        "2024-01-04": {"A": -0.005, "B": 0.005, "C": 0.0, "D": 0.0},
    }
    ranks = {
        "2024-01-02": {"A": 4, "B": 3, "C": 2, "D": 1},  # long A, short D
        "2024-01-03": {"A": 1, "B": 4, "C": 3, "D": 2},  # long B, short A
        "2024-01-04": {"A": 1, "B": 4, "C": 3, "D": 2},  # unchanged: no trading
    }
    rows = [
        (day, t, float(ranks[day][t]), float(np.log1p(r)))
        for day, by_ticker in simple.items()
        for t, r in by_ticker.items()
    ]
    return preds_frame(rows)


def test_long_short_backtest_by_hand() -> None:
    book = long_short_backtest(hand_panel(), quantile=0.25, cost_bps=10)
    # Day 1: +A -D, gross .02 + .01; turnover 2 (opening), cost 2 * 10bp.
    # Day 2: +B -A, gross .01 - .03; turnover |-1-1| + |1| + |0+1| = 4.
    # Day 3: same book, gross .005 + .005; no turnover.
    np.testing.assert_allclose(book.daily["gross"], [0.03, -0.02, 0.01], atol=1e-12)
    np.testing.assert_allclose(book.daily["turnover"], [2, 4, 0])
    np.testing.assert_allclose(book.daily["cost"], [0.002, 0.004, 0.0])
    net = np.array([0.028, -0.024, 0.01])
    np.testing.assert_allclose(book.daily["net"], net, atol=1e-12)
    assert book.avg_turnover == pytest.approx(2.0)
    assert book.max_drawdown == pytest.approx(0.024)  # 1.028 -> 1.028 * 0.976
    assert book.annual_return == pytest.approx(np.prod(1 + net) ** (252 / 3) - 1)
    assert book.sharpe == pytest.approx(net.mean() / net.std(ddof=1) * np.sqrt(252))


def test_costs_only_lower_the_net_return() -> None:
    frame = random_preds()
    free, costly = (long_short_backtest(frame, cost_bps=b) for b in (0.0, 25.0))
    np.testing.assert_allclose(free.daily["gross"], costly.daily["gross"])
    expected = costly.daily["gross"] - costly.daily["turnover"] * 25e-4
    np.testing.assert_allclose(costly.daily["net"], expected)
    assert costly.annual_return < free.annual_return


def test_top_k_book_on_a_hand_made_day() -> None:
    """One day, five tickers, k = 2: long the two highest preds (E, D), short the two lowest
    (A, B), C not held; gross = (r_E + r_D) / 2 - (r_A + r_B) / 2 in simple returns."""
    simple = {"A": -0.02, "B": 0.01, "C": 0.05, "D": 0.0, "E": 0.03}
    rows = [
        ("2024-01-02", t, float(i), float(np.log1p(r))) for i, (t, r) in enumerate(simple.items())
    ]
    day = preds_frame(rows)
    weights = top_k_weights(day, k=2)
    assert weights.iloc[0].to_dict() == {"A": -0.5, "B": -0.5, "C": 0.0, "D": 0.5, "E": 0.5}
    book = top_k_backtest(day, k=2, cost_bps=10)
    assert book.daily["gross"].iloc[0] == pytest.approx((0.03 + 0.0) / 2 - (-0.02 + 0.01) / 2)
    assert book.daily["cost"].iloc[0] == pytest.approx(2 * 10e-4)  # opening turnover 2
    # k above half the day's tickers holds two a side, never the same ticker twice.
    assert (top_k_weights(day, k=10).iloc[0] != 0).sum() == 4
    with pytest.raises(ValueError, match="k must be"):
        top_k_weights(day, k=0)


def test_top_k_holds_the_same_number_whatever_the_universe() -> None:
    """The quantile book grows with the day's tickers; the top-k book does not."""
    for tickers in (10, 40):
        frame = random_preds(n_tickers=tickers)
        assert ((top_k_weights(frame, k=3) > 0).sum(axis=1) == 3).all()
        quantile = (long_short_weights(frame, quantile=0.2) > 0).sum(axis=1)
        assert (quantile == tickers // 5).all()


def test_weights_are_equal_dollar_neutral_and_quantile_sized() -> None:
    weights = long_short_weights(random_preds(n_tickers=10), quantile=0.2)
    np.testing.assert_allclose(weights.sum(axis=1), 0.0, atol=1e-12)
    assert ((weights > 0).sum(axis=1) == 2).all() and ((weights < 0).sum(axis=1) == 2).all()
    np.testing.assert_allclose(weights.abs().sum(axis=1), 2.0)
    with pytest.raises(ValueError, match="quantile"):
        long_short_weights(random_preds(), quantile=0.6)


def test_flat_predictions_hold_no_book() -> None:
    """The zero baseline ranks nothing, so it trades nothing, rather than by ticker name."""
    book = long_short_backtest(random_preds().assign(pred=0.0))
    assert (book.daily["gross"] == 0).all() and (book.daily["turnover"] == 0).all()
    assert book.max_drawdown == 0 and book.annual_return == 0 and np.isnan(book.sharpe)


@pytest.mark.parametrize(
    ("curve", "expected"),
    [([1, 2, 1, 3, 1.5], 0.5), ([100, 120, 90, 95, 130, 65, 70], 0.5), ([1, 1.1, 1.2], 0.0)],
)
def test_max_drawdown_of_known_curves(curve: list[float], expected: float) -> None:
    assert max_drawdown(np.array(curve)) == pytest.approx(expected)


def test_leak_warning_thresholds() -> None:
    assert leak_warning(0.53, 0.03) is None
    assert leak_warning(0.6, 0.1) is None
    message = leak_warning(0.65, 0.02)
    assert message is not None and "directional accuracy 0.650" in message and "leak" in message
    assert "IC" in (leak_warning(0.5, 0.2) or "")
    assert "IC" in (leak_warning(0.5, -0.2) or "")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns="target_ret"), "lack column"),
        (lambda f: f.drop(columns="label"), "lack column"),
        (lambda f: f.assign(label=np.where(f.index == 4, np.nan, f["label"])), "NaN pred or"),
        (lambda f: f.iloc[:0], "empty"),
        (lambda f: f.assign(pred=np.where(f.index == 3, np.nan, f["pred"])), "1 prediction row"),
        (lambda f: pd.concat([f, f.iloc[:2]]), "repeat a"),
    ],
)
def test_malformed_predictions_are_refused(
    change: Callable[[pd.DataFrame], pd.DataFrame], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        summary(change(random_preds()))


def test_point_errors_are_on_the_label_and_rank_skill_on_the_realised_return() -> None:
    """A rank-label model is scored on its own scale for errors, on returns for money."""
    frame = random_preds()
    ranked = frame.assign(label=frame.groupby("date")["target_ret"].rank(pct=True) - 0.5)
    on_returns, on_ranks = summary(frame), summary(ranked.assign(pred=ranked["label"]))
    assert on_ranks["rmse"] == 0.0 and on_ranks["directional_accuracy"] == 1.0
    assert on_returns["rmse"] > 0.0
    assert on_ranks["rank_ic"] == pytest.approx(1.0)  # the label orders each day's returns
    assert on_ranks["annual_return"] > on_returns["annual_return"]


def test_summary_is_flat_floats() -> None:
    frame = random_preds()
    result = summary(frame, quantile=0.25, top_k=2, cost_bps=5)
    assert set(result) >= {"rmse", "rank_ic", "rank_icir", "rank_ic_t", "pearson_ic", "sharpe"}
    assert all(isinstance(v, float) for v in result.values())
    assert result["rank_ic"] > 0.1 and result["pearson_ic"] > 0.1  # real signal
    ic = rank_ic(frame)
    assert result["rank_icir"] == pytest.approx(ic.mean / ic.std)
    assert result["rank_ic_t"] == pytest.approx(result["rank_icir"] * np.sqrt(ic.n_days))
    assert result["top_k_sharpe"] == top_k_backtest(frame, k=2, cost_bps=5).sharpe


def test_a_ranking_has_no_point_errors() -> None:
    """A factor's rank orders tickers but is no return: its RMSE, MAE and direction are NaN,
    its ranking metrics those of any predictor."""
    frame = random_preds()
    as_rank = summary(frame, point_forecast=False)
    as_return = summary(frame)
    for name in ("rmse", "mae", "directional_accuracy"):
        assert np.isnan(as_rank[name]) and np.isfinite(as_return[name])
    assert as_rank["rank_ic"] == as_return["rank_ic"] and as_rank["sharpe"] == as_return["sharpe"]
