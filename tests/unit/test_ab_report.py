"""The A/B report's inputs and outputs without Ray: the prediction log read in its schema,
the version each variant served, the evidence a live promotion weighs (the variants'
persisted predictions for every ticker-day), and the report's files."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.ab_evidence import empty_evidence, write_evidence
from ray_app.data.predictions import COLUMNS, SCHEMA
from ray_app.data.signals import ServedTable, write_scores
from ray_app.monitoring import ab, report, sources
from ray_app.monitoring.promotion import CANDIDATE, audit_figures, candidate_log, weigh
from ray_app.serving.quality import read_quality
from tests.unit.test_ab_stats import frame

DAY = dt.date(2024, 3, 4)


def log_rows(rows: list[tuple[str, str, str, str, dt.date, float]]) -> pa.Table:
    """(request_id, variant, role, version, feature_date, prediction) rows for ticker AAA."""
    ts = dt.datetime(2026, 1, 5, 14, 30, tzinfo=dt.timezone.utc)
    data = {
        "request_id": [r[0] for r in rows],
        "ts": [ts] * len(rows),
        "client": ["ab12"] * len(rows),
        "variant": [r[1] for r in rows],
        "role": [r[2] for r in rows],
        "model_name": ["ray-app-daily-return"] * len(rows),
        "model_version": [r[3] for r in rows],
        "ticker": ["AAA"] * len(rows),
        "feature_date": [r[4] for r in rows],
        "predicted_return": [r[5] for r in rows],
        "source": ["precomputed"] * len(rows),
    }
    return pa.table(data, schema=SCHEMA)


def write_log(root: Path, table: pa.Table, name: str) -> None:
    folder = root / "predictions" / "day=2026-01-05"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / f"{name}.parquet")


def test_the_log_is_read_in_its_schema_and_filtered_by_feature_date(tmp_path: Path) -> None:
    root = DataRoot(str(tmp_path))
    empty = sources.read_log(root, None, None)
    assert list(empty.columns) == list(COLUMNS) and empty.empty
    before = DAY - dt.timedelta(days=1)
    write_log(tmp_path, log_rows([("r1", "champion", "served", "3", before, 0.01)]), "a-1")
    write_log(tmp_path, log_rows([("r2", "challenger", "shadow", "4", DAY, -0.02)]), "b-1")
    both = sources.read_log(root, None, None)
    assert list(both.columns) == list(COLUMNS)
    assert sorted(both["request_id"]) == ["r1", "r2"]
    only = sources.read_log(root, DAY, DAY)
    assert list(only["request_id"]) == ["r2"]
    assert only["feature_date"].iloc[0] == DAY


def test_the_version_a_variant_served_is_the_one_that_answered_most() -> None:
    table = log_rows(
        [
            ("r1", "champion", "served", "3", DAY, 0.0),
            ("r2", "champion", "served", "5", DAY, 0.0),
            ("r3", "champion", "served", "5", DAY, 0.0),
            ("r4", "challenger", "served", "4", DAY, 0.0),
        ]
    ).to_pandas()
    versions = sources.served_versions(table)
    assert versions.to_dict("records") == [
        {"variant": "challenger", "feature_date": DAY, "model_version": "4"},
        {"variant": "champion", "feature_date": DAY, "model_version": "5"},
    ]


def test_a_promotion_weighs_only_the_days_the_version_served() -> None:
    other = DAY + dt.timedelta(days=1)
    table = log_rows(
        [
            ("r1", "champion", "served", "3", DAY, 0.0),
            ("r2", "challenger", "served", "4", DAY, 0.0),
            ("r3", "champion", "served", "3", other, 0.0),
            ("r4", "challenger", "served", "5", other, 0.0),
        ]
    ).to_pandas()
    rows = candidate_log(table, 4, "champion")
    assert sorted(zip(rows["request_id"], rows["variant"], strict=True)) == [
        ("r1", "champion"),
        ("r2", CANDIDATE),
    ]


def both_sources(panel: ab.Panel) -> report.ABReport:
    """The report of ``panel`` as if both sources had seen the same predictions."""
    parts = [
        report.SourceReport(
            ab.evidence(panel, name, "champion", level=0.05, loss="squared"),
            report.daily_table(panel, "champion", "squared"),
        )
        for name in report.SOURCES
    ]
    return report.ABReport(None, None, parts)


def test_the_report_is_written_as_markdown_html_json_and_plots(tmp_path: Path) -> None:
    predictions, outcomes = frame(40, 20, noise=0.4)
    panel = ab.build_panel(predictions, outcomes)
    built = both_sources(panel)
    settings = Settings(data_root=str(tmp_path / "data"))
    where = report.write_report(settings, built)
    folder = Path(where)
    assert folder == tmp_path / "data" / "reports" / "ab" / str(panel.days[-1])
    names = {p.name for p in folder.iterdir()}
    assert names == {"report.md", "report.html", "evidence.json", "precomputed.png", "served.png"}
    markdown = (folder / "report.md").read_text()
    assert "| challenger | champion | 40 | 800 |" in markdown
    assert "better" in markdown and "![" in markdown
    page = (folder / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    figures = json.loads((folder / "evidence.json").read_text())
    served = figures["sources"][1]
    assert served["source"] == "served"
    assert served["comparisons"][0]["verdict"] == ab.BETTER
    rank_ic = panel_rank_ic(predictions, outcomes, "challenger")
    live = {v["variant"]: v for v in served["variants"]}
    assert np.isclose(live["challenger"]["rank_ic"]["estimate"], rank_ic)
    assert (folder / "precomputed.png").read_bytes().startswith(b"\x89PNG")


def test_the_comparisons_are_exported_by_the_api_with_their_source(tmp_path: Path) -> None:
    """The daily step's table, read back as the ingress reads it: the rank-IC difference and
    its interval per challenger and source; an empty table takes the series away."""
    predictions, outcomes = frame(40, 20, noise=0.4)
    built = both_sources(ab.build_panel(predictions, outcomes))
    root = DataRoot(str(tmp_path))
    assert read_quality(root) == []
    write_evidence(root, report.evidence_table(built))
    found = {(r.gauge, r.tags["source"]): r.value for r in read_quality(root)}
    for part in built.sources:
        (comparison,) = part.evidence.comparisons
        interval, source = comparison.rank_ic_diff, part.evidence.source
        assert (comparison.challenger, comparison.verdict) == ("challenger", ab.BETTER)
        assert found[("ab_diff", source)] == interval.estimate
        assert found[("ab_low", source)] == interval.low > 0
        assert found[("ab_high", source)] == interval.high
    assert {r.tags["variant"] for r in read_quality(root)} == {"challenger"}
    write_evidence(root, empty_evidence())
    assert read_quality(root) == []


def panel_rank_ic(predictions: pd.DataFrame, outcomes: pd.DataFrame, variant: str) -> float:
    """The mean over days of the Spearman correlation, computed with pandas."""
    rows = predictions[predictions["variant"] == variant].merge(
        outcomes, on=["ticker", "feature_date"]
    )
    daily = rows.groupby("feature_date").apply(
        lambda g: g["predicted_return"].corr(g["realised_return"], method="spearman")
    )
    return float(daily.mean())


def scored_root(tmp_path: Path, noise: float) -> tuple[Settings, pd.DataFrame, pd.DataFrame]:
    """A data root where v3 (champion) and v4 (challenger) persisted their predictions for
    every ticker-day, as the variants do, a log of the days each served, and the outcomes."""
    predictions, outcomes = frame(60, 20, noise=noise)
    settings = Settings(data_root=str(tmp_path / "data"))
    root = DataRoot(settings.data_root)
    for variant, version in (("champion", "3"), ("challenger", "4")):
        rows = predictions[predictions["variant"] == variant]
        frames = {
            ticker: (
                np.array(part["feature_date"].tolist(), dtype="datetime64[D]"),
                part["predicted_return"].to_numpy(),
            )
            for ticker, part in rows.groupby("ticker")
        }
        table = ServedTable(variant, settings.mlflow.model_name, version, "fs1")
        write_scores(root, table, frames, f"model-{version}")
    asked = predictions[predictions["ticker"] == "T00"]  # clients asked about one ticker
    log = asked.assign(role="served")
    return settings, log, outcomes


def test_a_better_challenger_is_weighed_on_every_ticker_day_it_served(tmp_path: Path) -> None:
    settings, log, outcomes = scored_root(tmp_path, noise=0.4)
    comparison = weigh(settings, 4, log, outcomes)
    assert comparison is not None and comparison.verdict == ab.BETTER, comparison
    assert comparison.days == 60 and comparison.ticker_days == 60 * 20  # not just T00's
    figures = audit_figures(comparison, 0.05)
    assert figures["dm_p_value"] is not None and figures["dm_p_value"] < 0.05
    assert figures["rank_ic_diff_low"] is not None and figures["rank_ic_diff_low"] > 0
    json.dumps(figures, allow_nan=False)  # recordable in the audit trail as it is


def test_without_an_effect_nothing_is_promoted(tmp_path: Path) -> None:
    settings, log, outcomes = scored_root(tmp_path, noise=1.0)
    comparison = weigh(settings, 4, log, outcomes)
    assert comparison is not None and comparison.verdict != ab.BETTER
    assert weigh(settings, 7, log, outcomes) is None  # a version that never served


def test_the_pipeline_weighs_live_evidence_only_when_asked_before_it_deploys() -> None:
    import dagster as dg

    from ray_app.orchestration.assets import DEPLOYMENT, MONITOR, PROMOTION
    from ray_app.orchestration.definitions import build_definitions

    def graph(settings: Settings) -> dg.AssetGraph:
        return build_definitions(settings).resolve_asset_graph()

    assert PROMOTION not in graph(Settings()).get_all_asset_keys()
    opted = graph(Settings(monitoring={"auto_promote": True}))
    assert MONITOR in opted.get(PROMOTION).parent_keys
    assert PROMOTION in opted.get(DEPLOYMENT).parent_keys
