"""`ray-app replay` on the bundled sample: three trading days through the real daily loop
(pipeline with a tiny model and no search, serve deploy, HTTP requests, the serving app's
prediction log), on the session's Ray head. Its live metrics equal the metrics computed here
directly from the raw bars and the answers logged."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.ab_evidence import read_evidence
from ray_app.data.live_metrics import read_live_metrics
from ray_app.data.sources import SampleSource
from ray_app.monitoring import sources
from ray_app.registry.tracking import tracking_uri
from tests.conftest import Head, free_port, ray_app_command
from tests.integration.test_serve_app import SERVE_CONFIG, fast_serve_env

pytestmark = pytest.mark.integration
TICKERS = ["AAPL", "GOOG", "IBM", "MSFT"]
DAYS = ["2012-12-03", "2012-12-04", "2012-12-05"]


def replay_config(folder: Path, root: Path) -> Path:
    """A tiny model, an even split between champion and challenger, the challenger also
    shadowing every request, one ingress replica; MLflow and data in this test's root."""
    settings = Settings(data_root=str(root))
    serve = yaml.safe_load(SERVE_CONFIG.read_text())
    port = free_port()
    serve["http_options"] = {"host": "127.0.0.1", "port": port}
    serve["controller_options"]["runtime_env"]["env_vars"] = fast_serve_env()
    args = serve["applications"][0]["args"]
    args.update(data_root=str(root), mlflow_tracking_uri=tracking_uri(settings), features_poll_s=1)
    args["prediction_log"] = {"flush_s": 0.5}
    weights = {"champion": 0.5, "challenger": 0.5}
    for variant in args["variants"]:
        variant["weight"] = weights[variant["name"]]
    shadow = {"variant": "challenger", "fraction": 1.0}
    args["shadow"] = shadow
    for deployment in serve["applications"][0]["deployments"]:
        if deployment["name"] == "Ingress":
            deployment.update(num_replicas=1)
            deployment["user_config"].update(weights=weights, shadow=shadow)
    serve_path = folder / "serve_config.yaml"
    serve_path.write_text(yaml.safe_dump(serve, sort_keys=False))
    config = {
        "data_root": str(root),
        "ingest": {"source": "sample", "tickers": TICKERS},
        "split": {"n_folds": 2, "test_days": 60, "holdout_months": 3},
        "train": {"hparams": {"hidden_size": 8, "epochs": 1, "batch_size": 512}},
        "pipeline": {"serve_config": str(serve_path), "serve_url": f"http://127.0.0.1:{port}"},
    }
    path = folder / "replay.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def raw_outcomes() -> pd.DataFrame:
    """(ticker, feature_date, realised_return): the next bar's log return of the adjusted
    close, straight from the sample's bars, for the days whose next bar the replay saw (the
    data was cut at the last day: its outcome is pending)."""
    source, parts = SampleSource(), []
    for ticker in TICKERS:
        bars = source.fetch(ticker, dt.date(2012, 11, 1), dt.date(2012, 12, 31)).bars
        bars = bars.sort_values("date")
        parts.append(
            pd.DataFrame(
                {
                    "ticker": ticker,
                    "feature_date": pd.to_datetime(bars["date"]).dt.date,
                    "realised_return": np.log(bars["adj_close"]).diff().shift(-1).to_numpy(),
                }
            )
        )
    outcomes = pd.concat(parts, ignore_index=True)
    return outcomes[outcomes["feature_date"] < dt.date.fromisoformat(DAYS[-1])]


def day_metrics(day: pd.DataFrame) -> pd.Series:
    """One day's cross-sectional metrics of one variant, with pandas."""
    p, r = day["predicted_return"], day["realised_return"]
    return pd.Series(
        {
            "rank_ic": p.corr(r, method="spearman"),
            "ic": p.corr(r),
            "mae": (p - r).abs().mean(),
            "directional_accuracy": (np.sign(p) == np.sign(r)).mean(),
        }
    )


def direct_daily(log: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, feature_date): the day's metrics (a ticker-day answered twice, served and
    shadowed, counts once)."""
    rows = log.groupby(["variant", "ticker", "feature_date"], as_index=False)[
        "predicted_return"
    ].mean()
    rows = rows.merge(outcomes.dropna(), on=["ticker", "feature_date"])
    return rows.groupby(["variant", "feature_date"])[["predicted_return", "realised_return"]].apply(
        day_metrics
    )


@pytest.fixture(scope="module")
def replayed(ray_head: Head, ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from ray import serve

    folder = tmp_path_factory.mktemp("replay")
    root = folder / "data"
    config = replay_config(folder, root)
    command = ["replay", "--from", DAYS[0], "--to", DAYS[-1], "--config", str(config)]
    env = {k: v for k, v in ray_head.env.items() if k != "RAY_APP_DATA_ROOT"}
    done = ray_app_command(command, env, timeout=600)
    try:
        yield done, root
    finally:
        serve.shutdown()
        shutil.rmtree(root / "mlartifacts", ignore_errors=True)


def test_replay_runs_each_day_and_ends_with_the_report(replayed: Any) -> None:
    done, root = replayed
    assert done.returncode == 0, done.stderr[-4000:] + done.stdout[-4000:]
    for day in DAYS:
        assert day in done.stdout
    log = sources.read_log(DataRoot(str(root)), None, None)
    assert sorted({d.isoformat() for d in log["feature_date"]}) == DAYS
    assert set(log["role"]) == {"served", "shadow"}
    report = root / "reports" / "ab" / DAYS[-2]  # the last day with an outcome
    assert {"report.md", "report.html", "evidence.json"} <= {p.name for p in report.iterdir()}


def test_each_day_records_the_evidence_the_api_exports(replayed: Any) -> None:
    """The last day's `ab_evidence` step saw the whole log, as the closing report did: its
    table (what the ingress exports as gauges) holds the report's comparisons, per source."""
    done, root = replayed
    assert done.returncode == 0, done.stderr[-4000:]
    table = read_evidence(DataRoot(str(root)))
    assert table is not None
    evidence = json.loads((root / "reports" / "ab" / DAYS[-2] / "evidence.json").read_text())
    for source in evidence["sources"]:
        rows = table[table["source"] == source["source"]]
        assert len(rows) == len(source["comparisons"]) == 1
        compared, row = source["comparisons"][0], rows.iloc[0]
        assert (row["variant"], row["baseline"]) == ("challenger", "champion")
        assert (row["days"], row["verdict"]) == (compared["days"], compared["verdict"])
        expected = compared["loss_diff"]  # null in JSON when undefined (NaN in the table)
        assert (
            np.isnan(row["loss_diff"])
            if expected is None
            else row["loss_diff"] == pytest.approx(expected)
        )


def test_ab_report_over_part_of_the_period(replayed: Any, tmp_path: Path) -> None:
    done, root = replayed
    assert done.returncode == 0, done.stderr[-4000:]
    command = ["ab", "report", "--from", DAYS[1], "--to", DAYS[-1], "--out", str(tmp_path)]
    report = ray_app_command([*command, "--data-root", str(root)], {})
    assert report.returncode == 0, report.stderr
    assert "served: live metrics" in report.stdout and "precomputed: against" in report.stdout
    figures = json.loads((tmp_path / "evidence.json").read_text())
    assert {v["days"] for s in figures["sources"] for v in s["variants"]} == {1}
    empty = ray_app_command(
        ["ab", "report", "--from", "2001-01-01", "--to", "2001-01-31", "--data-root", str(root)], {}
    )
    assert empty.returncode == 2 and "no logged prediction" in empty.stderr


def test_live_metrics_equal_metrics_from_the_raw_bars(replayed: Any) -> None:
    """The A/B report's per-variant figures (means of daily metrics) and the monitor's daily
    live metrics both equal what pandas computes from the raw bars and the logged answers."""
    done, root = replayed
    assert done.returncode == 0, done.stderr[-4000:]
    log = sources.read_log(DataRoot(str(root)), None, None)
    daily = direct_daily(log, raw_outcomes())
    assert set(daily.index.get_level_values("variant")) == {"champion", "challenger"}
    evidence = json.loads((root / "reports" / "ab" / DAYS[-2] / "evidence.json").read_text())
    served = next(s for s in evidence["sources"] if s["source"] == "served")
    live = {v["variant"]: v for v in served["variants"]}
    assert set(live) == {"champion", "challenger"}
    for variant, days in daily.groupby(level="variant"):
        assert live[str(variant)]["days"] == len(days) == len(DAYS) - 1  # the last is pending
        for name in ("rank_ic", "ic", "mae", "directional_accuracy"):
            assert live[str(variant)][name]["estimate"] == pytest.approx(days[name].mean())
    monitored = read_live_metrics(DataRoot(str(root)))
    scored = monitored[(monitored["window"] == "1d") & ~monitored["pending"]]
    assert len(scored) >= 2  # the monitor of the last day scored the days before it
    for row in scored.itertuples():
        expected = daily.loc[(row.variant, row.day)]
        for name in ("rank_ic", "ic", "mae", "directional_accuracy"):
            # rel 1e-6: a ticker-day answered twice (served and shadowed) may come once from
            # the precomputed table and once live, float32 networks rounding the last bits
            # differently in a batch of the whole table
            close = pytest.approx(expected[name], rel=1e-6, abs=1e-9)
            assert getattr(row, name) == close, (row, name)
