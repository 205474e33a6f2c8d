"""Cross-sectional companions and the rank label: by hand on made-up days, point in time on
real bars (cut every ticker at t), and through the feature store's pass without Ray."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ray_app.core.settings import FeatureSettings, Settings
from ray_app.core.storage import DataRoot
from ray_app.data.cross_section import cross_section, cs_rank, cs_zscore
from ray_app.data.feature_store import (
    FeatureSetError,
    check_point_in_time,
    feature_manifest,
    featurize_ticker,
    load_feature_set,
    partition,
    plan_build,
    record_feature_set,
    write_cross_section,
)
from ray_app.data.features import (
    LABEL,
    RANK_TARGET,
    TARGET,
    compute_features,
    cross_sectional_names,
)
from ray_app.data.ingest import ingest_ticker, plan_jobs, read_bars, record_manifest
from ray_app.data.online import OfflineFeatureLookup
from ray_app.data.sources import CsvSource, SampleSource
from ray_app.models.networks import RidgeBaseline
from ray_app.serving.features import FeatureTable
from ray_app.training.evaluate import score
from ray_app.training.gate import incomparable
from ray_app.training.train import load_training_data
from tests.unit.test_features import load

SAMPLE_CS = ["corr_pv_20", "kbar_body", "ret_5d", "vol_20d"]
SAMPLE_SPEC = FeatureSettings(
    alpha_features=True, cross_sectional=SAMPLE_CS, label="next_return_csrank"
)


def day(values: list[float], date: str = "2024-01-02") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ticker": [f"T{i}" for i in range(len(values))],
            "date": pd.Timestamp(date),
            "x": values,
        }
    )


def test_rank_and_zscore_of_a_hand_made_day() -> None:
    """Values 1, 2, 2, 5: ranks 1, 2.5, 2.5, 4 of 4; mean 2.5, population std 1.5."""
    rows = day([1.0, 2.0, 2.0, 5.0])
    out = cross_section(rows, FeatureSettings(cross_sectional=["x"]))
    assert list(out.columns) == ["ticker", "date", "x_csrank", "x_cszscore"]
    np.testing.assert_allclose(out["x_csrank"], [-0.5, 0.0, 0.0, 0.5])
    np.testing.assert_allclose(out["x_cszscore"], [-1.0, -1 / 3, -1 / 3, 5 / 3])


def test_a_day_where_nobody_stands_out_gets_zero() -> None:
    """A flat day, a lone ticker, and a NaN that is neither ranked nor counted."""
    rows = pd.concat([day([0.1] * 3, "2024-01-02"), day([7.0], "2024-01-03")])
    rows = pd.concat([rows, day([1.0, np.nan, 3.0], "2024-01-04")], ignore_index=True)
    rank, z = cs_rank(rows["x"], rows["date"]), cs_zscore(rows["x"], rows["date"])
    np.testing.assert_array_equal(rank[:4], 0.0)
    np.testing.assert_array_equal(z[:4], 0.0)
    np.testing.assert_allclose(rank[4:], [-0.5, np.nan, 0.5])
    np.testing.assert_allclose(z[4:], [-1.0, np.nan, 1.0])


def test_the_result_does_not_depend_on_the_order_rows_arrive_in() -> None:
    rng = np.random.default_rng(0)
    rows = pd.concat([day(list(rng.normal(size=7)), d) for d in ("2024-01-02", "2024-01-03")])
    rows = rows.reset_index(drop=True)
    spec = FeatureSettings(cross_sectional=["x"])
    shuffled = rows.sample(frac=1.0, random_state=1)
    a = cross_section(rows, spec).set_index(["ticker", "date"]).sort_index()
    b = cross_section(shuffled, spec).set_index(["ticker", "date"]).sort_index()
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_the_rank_label_ranks_the_next_returns_of_the_day() -> None:
    rows = pd.DataFrame(
        {
            "ticker": ["A", "B", "C", "A", "B", "C"],
            "date": pd.to_datetime(["2024-01-02"] * 3 + ["2024-01-03"] * 3),
            TARGET: [0.03, -0.01, 0.0, np.nan, np.nan, np.nan],
        }
    )
    out = cross_section(rows, FeatureSettings(label="next_return_csrank"))
    np.testing.assert_allclose(out[RANK_TARGET], [0.5, -0.5, 0.0, np.nan, np.nan, np.nan])
    assert "target_ret_csrank" not in cross_section(rows, FeatureSettings()).columns


def universe(
    bars: dict[str, pd.DataFrame], spec: FeatureSettings, index: pd.DataFrame | None
) -> pd.DataFrame:
    """Every ticker's per-ticker features and their cross-sectional columns, as the store
    builds them."""
    rows = pd.concat(
        [compute_features(t, b, spec, index) for t, b in sorted(bars.items())], ignore_index=True
    )
    return rows.merge(cross_section(rows, spec), on=["ticker", "date"], validate="1:1")


def assert_cross_section_point_in_time(
    bars: dict[str, pd.DataFrame], index: pd.DataFrame | None, spec: FeatureSettings, cut: str
) -> None:
    """Every ticker and the index cut at t: every row up to t is as in the full build."""
    t = pd.Timestamp(cut)
    full = universe(bars, spec, index)
    cut_bars = {ticker: b[b["date"] <= t] for ticker, b in bars.items()}
    partial = universe(cut_bars, spec, None if index is None else index[index["date"] <= t])
    expected = full[full["date"] <= t].sort_values(["ticker", "date"], ignore_index=True)
    partial = partial.sort_values(["ticker", "date"], ignore_index=True)
    columns = cross_sectional_names(spec)
    assert len(partial) == len(expected) > 1000 and len(columns) == 2 * len(spec.cross_sectional)
    np.testing.assert_array_equal(partial[columns].to_numpy(), expected[columns].to_numpy())
    assert partial[["ticker", "date"]].equals(expected[["ticker", "date"]])


def test_cross_sectional_columns_have_no_look_ahead_on_real_kaggle_bars(kaggle_dir: Path) -> None:
    source = CsvSource(kaggle_dir)
    tickers = ("AIG", "AMP", "BAX", "CAG", "CME", "CSX", "NVDA", "PG")
    bars = {t: load(source, t) for t in tickers}
    spec = FeatureSettings(
        alpha_features=True,
        cross_sectional=["excess_ret_5d", "range_pos_20", "resid_mom_20", "ret_1d", "vol_20d"],
        label="next_return_csrank",
    )
    for cut in ("2008-10-15", "2013-06-28"):
        assert_cross_section_point_in_time(bars, load(source, "SPY"), spec, cut)


def test_cross_sectional_columns_have_no_look_ahead_on_bundled_sample_bars() -> None:
    source = SampleSource()
    bars = {t: load(source, t) for t in source.list_tickers()}
    assert_cross_section_point_in_time(bars, None, SAMPLE_SPEC, "2012-08-01")


def test_a_day_reads_only_its_own_rows() -> None:
    """Scrambling every other day's features leaves day t's companions as they were; moving
    one ticker's value on day t moves the others' too."""
    source = SampleSource()
    rows = pd.concat(
        [compute_features(t, load(source, t), SAMPLE_SPEC) for t in source.list_tickers()],
        ignore_index=True,
    )
    t = pd.Timestamp("2010-06-15")
    on_t = rows["date"] == t
    columns = cross_sectional_names(SAMPLE_SPEC)
    before = cross_section(rows, SAMPLE_SPEC)[on_t]
    scrambled = rows.copy()
    rng = np.random.default_rng(0)
    for name in SAMPLE_CS:
        scrambled.loc[~on_t, name] = rng.permutation(scrambled.loc[~on_t, name].to_numpy())
    after = cross_section(scrambled, SAMPLE_SPEC)[on_t]
    np.testing.assert_array_equal(before[columns].to_numpy(), after[columns].to_numpy())
    moved = rows.copy()
    moved.loc[on_t & (rows["ticker"] == "AAPL"), "vol_20d"] = 10.0
    shifted = cross_section(moved, SAMPLE_SPEC)[on_t & (rows["ticker"] != "AAPL")]
    unchanged = before[rows.loc[on_t, "ticker"].to_numpy() != "AAPL"]
    assert not np.allclose(shifted["vol_20d_cszscore"], unchanged["vol_20d_cszscore"])


def build_without_ray(root: Path, spec: FeatureSettings) -> str:
    """What ``run_ingest`` and ``build_features`` do on the sample, one ticker after the other
    in this process: the per-ticker pass, then the cross-sectional one; the feature version."""
    settings = Settings(data_root=str(root), ingest={"source": "sample"}, features=spec)
    data_root, source = DataRoot(settings.data_root), SampleSource()
    jobs = plan_jobs(settings, source, data_root, full_refresh=False)
    record_manifest(
        data_root, source, [ingest_ticker(j, source, settings.ingest, data_root) for j in jobs]
    )
    plan = plan_build(settings, None)
    rows = [featurize_ticker(t, plan, None) for t in sorted(plan.raw.tickers)]
    stored = pd.concat(
        [
            data_root.read_parquet(*partition(plan.version, t)).assign(ticker=t)
            for t in plan.raw.tickers
        ],
        ignore_index=True,
    )
    for ticker, one in cross_section(stored, spec).groupby("ticker"):
        assert write_cross_section(one, plan) == {"ticker": ticker, "reason": ""}
    return record_feature_set(plan, rows).version


def test_the_store_keeps_the_columns_and_the_label_and_checks_them_cut_at_t(
    tmp_path: Path,
) -> None:
    version = build_without_ray(tmp_path, SAMPLE_SPEC)
    root = DataRoot(str(tmp_path))
    manifest = feature_manifest(root, version)
    assert manifest.target == RANK_TARGET
    assert manifest.columns[-8:] == cross_sectional_names(SAMPLE_SPEC)
    frame, _ = load_feature_set(root, version)
    np.testing.assert_array_equal(frame[LABEL], frame[RANK_TARGET])
    assert frame.groupby("date")[LABEL].agg(["min", "max"]).iloc[-1].tolist() == [-0.5, 0.5]

    tickers = sorted(manifest.tickers)
    assert all(c.mismatched == 0 for c in check_point_in_time(root, version, tickers))
    parts = partition(version, "IBM")
    tampered = root.read_parquet(*parts)
    tampered.loc[10, "ret_5d_csrank"] += 0.1  # a companion that is not what day 10 holds
    root.write_parquet(tampered, *parts, metadata={})
    checks = {c.ticker: c.mismatched for c in check_point_in_time(root, version, tickers)}
    assert checks == {**dict.fromkeys(tickers, 0), "IBM": 1}


def test_a_ticker_whose_partition_cannot_take_the_columns_fails_alone(tmp_path: Path) -> None:
    settings = Settings(data_root=str(tmp_path), ingest={"source": "sample"}, features=SAMPLE_SPEC)
    build_without_ray(tmp_path, SAMPLE_SPEC)
    plan = plan_build(settings, None)
    rows = cross_section(
        compute_features("IBM", read_bars(plan.root, "IBM"), SAMPLE_SPEC).iloc[5:], SAMPLE_SPEC
    )
    summary = write_cross_section(rows, plan)
    assert summary["ticker"] == "IBM" and "cross-sectional pass" in summary["reason"]


def test_the_excess_label_without_the_index_is_refused_before_any_work(tmp_path: Path) -> None:
    build_without_ray(tmp_path, FeatureSettings())
    settings = Settings(
        data_root=str(tmp_path), features=FeatureSettings(label="next_excess_return")
    )
    with pytest.raises(FeatureSetError, match="needs the index SPY in the data version"):
        plan_build(settings, None)


def test_training_fits_the_chosen_label_and_evaluation_scores_errors_on_it(
    tmp_path: Path,
) -> None:
    """Under the rank label, the baselines fit ranks and point errors are on the rank scale
    (the zero forecast is the day's median), while the backtest still trades returns."""
    build_without_ray(tmp_path, SAMPLE_SPEC)
    settings = Settings(data_root=str(tmp_path), features=SAMPLE_SPEC)
    data = load_training_data(settings)
    np.testing.assert_array_equal(data.frame[LABEL], data.frame[RANK_TARGET])
    fold = data.tune_fold
    ridge = RidgeBaseline(data.columns).fit(data.frame[fold.train_mask])
    assert ridge.intercept == pytest.approx(data.frame.loc[fold.train_mask, LABEL].mean())
    test = data.frame.loc[fold.test_mask, ["date", "ticker", TARGET, LABEL]]
    zero = score(test.assign(pred=0.0), settings.evaluate)
    assert zero["rmse"] == pytest.approx(float(np.sqrt((test[LABEL] ** 2).mean())))
    perfect = score(test.assign(pred=test[LABEL]), settings.evaluate)
    assert perfect["rmse"] == 0.0 and perfect["rank_ic"] == pytest.approx(1.0)
    assert perfect["annual_return"] is not None and perfect["annual_return"] > 1.0


def test_serving_and_the_online_lookup_answer_the_stored_companions(tmp_path: Path) -> None:
    """What a model trained on the companions is served: the rows as stored, never the
    companions recomputed from the one ticker a request names."""
    version = build_without_ray(tmp_path, SAMPLE_SPEC)
    settings = Settings(data_root=str(tmp_path), features=SAMPLE_SPEC)
    root = DataRoot(settings.data_root)
    columns = feature_manifest(root, version).columns
    stored = root.read_parquet(*partition(version, "IBM")).set_index("date")
    day = dt.date(2010, 6, 15)
    table = FeatureTable.load(settings, version)
    assert table.columns == columns and "vol_20d_csrank" in columns
    window = table.window("IBM", day, 3)
    expected = stored.loc[: pd.Timestamp(day), columns].tail(3).to_numpy()
    np.testing.assert_array_equal(window.rows, expected)
    row = OfflineFeatureLookup(root, version).get_online_features(["IBM"], day)["IBM"]
    assert row.values == dict(zip(columns, expected[-1].tolist(), strict=True))


def test_the_gate_does_not_score_a_champion_trained_on_another_label(tmp_path: Path) -> None:
    """Same columns, other label: the champion's errors would be on another scale."""
    on_returns = build_without_ray(
        tmp_path, SAMPLE_SPEC.model_copy(update={"label": "next_return"})
    )
    build_without_ray(tmp_path, SAMPLE_SPEC)
    data = load_training_data(Settings(data_root=str(tmp_path), features=SAMPLE_SPEC))
    root = DataRoot(str(tmp_path))
    champion = SimpleNamespace(columns=data.columns, feature_version=on_returns)
    reason = incomparable(root, 3, champion, data)  # type: ignore[arg-type]
    assert reason is not None and "trained on label target_ret" in reason
    assert "holds target_ret_csrank" in reason
    same = SimpleNamespace(columns=data.columns, feature_version=data.manifest.version)
    assert incomparable(root, 3, same, data) is None  # type: ignore[arg-type]
    gone = SimpleNamespace(columns=data.columns, feature_version="0" * 16)
    assert incomparable(root, 3, gone, data) is None  # type: ignore[arg-type]
