"""Drift statistics, the drift table, the pipeline's run record and what the API exports."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ray_app.core.storage import DataRoot
from ray_app.data.drift_table import (
    COLUMNS,
    FEATURE,
    PREDICTION,
    empty_table,
    read_drift,
    write_drift,
)
from ray_app.data.pipeline_runs import read_run_record, record_run
from ray_app.monitoring.drift import ks, psi, render_report
from ray_app.serving.quality import read_quality


def test_psi_matches_its_formula_on_reference_quantile_bins() -> None:
    reference = np.arange(1.0, 101.0)  # deciles: ten bins of 10 values each
    current = np.concatenate([np.full(50, 5.0), np.arange(51.0, 101.0)])
    # current: half its rows in the first bin, none in bins 2-5 (each given 1e-4), 10% in
    # each of the top five, as the reference has
    expected = (0.5 - 0.1) * math.log(0.5 / 0.1) + 4 * (1e-4 - 0.1) * math.log(1e-4 / 0.1)
    assert psi(reference, current, bins=10) == pytest.approx(expected)
    assert psi(reference, reference, bins=10) == pytest.approx(0.0)


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=20_000)
    assert psi(reference, rng.normal(size=2_000), bins=10) < 0.02
    assert psi(reference, rng.normal(0.5, size=2_000), bins=10) > 0.2


def test_psi_ignores_missing_values_and_stays_finite_on_empty_bins() -> None:
    reference = np.array([*range(100), np.nan, np.inf])
    shifted = np.full(50, 1000.0)  # every row in the top bin: the others are empty
    value = psi(reference, shifted, bins=10)
    assert math.isfinite(value) and value > 1


def test_ks_is_scipys_two_sample_statistic() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=500), rng.normal(0.3, size=300)
    expected = stats.ks_2samp(a, b)
    assert ks(a, b) == pytest.approx((expected.statistic, expected.pvalue))
    assert ks(a, a)[0] == 0.0
    assert ks(np.zeros(10), np.ones(10))[0] == 1.0


def test_psi_false_positive_rate_at_the_default_threshold_is_low() -> None:
    """Same distribution, the default sizes (a day of 500 tickers against a training window):
    the 0.2 threshold should almost never fire by chance."""
    rng = np.random.default_rng(2)
    reference = rng.standard_t(5, size=20_000)
    values = [psi(reference, rng.standard_t(5, size=500), bins=10) for _ in range(100)]
    assert np.mean(np.array(values) > 0.2) == 0.0
    assert np.mean(values) < 0.05


def _table(day: dt.date, psi_value: float) -> pd.DataFrame:
    common = {
        "day": pd.Timestamp(day),
        "variant": "champion",
        "model_name": "m",
        "model_version": "3",
        "ks_pvalue": 0.5,
        "psi_threshold": 0.2,
        "ks_threshold": 0.25,
        "n_reference": 1000,
        "n_current": 50,
        "reference_start": pd.Timestamp("2010-01-04"),
        "reference_end": pd.Timestamp("2012-06-29"),
        "source": "prediction_log",
    }
    rows = [
        {**common, "kind": FEATURE, "name": "ret_1d", "psi": psi_value, "ks": 0.1},
        {**common, "kind": FEATURE, "name": "vol_5d<b>", "psi": np.nan, "ks": np.nan},
        {**common, "kind": PREDICTION, "name": "predicted_return", "psi": 0.05, "ks": 0.1},
    ]
    frame = pd.DataFrame(rows)
    frame["drifted"] = frame["psi"] > 0.2
    return frame


def test_drift_table_round_trip_and_latest_only_moves_forward(tmp_path: Path) -> None:
    root = DataRoot(str(tmp_path))
    assert read_drift(root) is None
    write_drift(root, dt.date(2013, 3, 1), _table(dt.date(2013, 3, 1), 0.4), "<html>")
    write_drift(root, dt.date(2013, 2, 28), _table(dt.date(2013, 2, 28), 0.1), "<html>")
    latest = read_drift(root)
    assert latest is not None and list(latest.columns) == list(COLUMNS)
    assert latest["day"].iloc[0] == pd.Timestamp("2013-03-01")  # not the older day written later
    older = read_drift(root, dt.date(2013, 2, 28))
    assert older is not None and older["psi"].iloc[0] == pytest.approx(0.1)
    assert read_drift(root, dt.date(2013, 1, 1)) is None
    with pytest.raises(ValueError, match="lacks column"):
        write_drift(root, dt.date(2013, 3, 1), empty_table().drop(columns="psi"), "")


def test_report_escapes_names_and_marks_drifted_rows() -> None:
    page = render_report(_table(dt.date(2013, 3, 1), 0.4), dt.date(2013, 3, 1), "prediction_log")
    assert "vol_5d&lt;b&gt;" in page and "vol_5d<b>" not in page
    assert page.count("class='drifted'") == 1
    assert "2010-01-04 to 2012-06-29" in page
    assert "n/a" in page  # the statistic not computed


def test_run_record_keeps_the_last_success_through_failures(tmp_path: Path) -> None:
    root = DataRoot(str(tmp_path))
    assert read_run_record(root) is None
    first = dt.datetime(2026, 3, 2, 23, 40, tzinfo=dt.timezone.utc)
    record_run(root, ok=True, at=first)
    failed = record_run(root, ok=False, failed_step="ingest", at=first + dt.timedelta(days=1))
    assert not failed.last_run_ok and failed.failed_step == "ingest"
    assert failed.last_success_at == first
    assert read_run_record(root) == failed


def test_what_the_api_exports_from_the_tables(tmp_path: Path) -> None:
    root = DataRoot(str(tmp_path))
    assert read_quality(root) == []  # nothing recorded yet: no series at all
    write_drift(root, dt.date(2013, 3, 1), _table(dt.date(2013, 3, 1), 0.4), "")
    at = dt.datetime(2026, 3, 2, 23, 40, tzinfo=dt.timezone.utc)
    record_run(root, ok=True, at=at)
    record_run(root, ok=False, failed_step="deploy", at=at + dt.timedelta(days=1))
    found = {(r.gauge, tuple(sorted(r.tags.items()))): r.value for r in read_quality(root)}
    champion = ("variant", "champion")
    assert found[("psi", (("feature", "ret_1d"), champion))] == pytest.approx(0.4)
    assert math.isnan(found[("psi", (("feature", "vol_5d<b>"), champion))])
    assert found[("prediction_psi", (champion,))] == pytest.approx(0.05)
    assert found[("threshold", (("statistic", "ks"),))] == pytest.approx(0.25)
    assert found[("threshold", (("statistic", "prediction_psi"),))] == pytest.approx(0.2)
    assert found[("last_success", ())] == at.timestamp()
    assert found[("last_run", ())] == (at + dt.timedelta(days=1)).timestamp()
    assert found[("failed", ())] == 1.0
