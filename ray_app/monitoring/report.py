"""The A/B report: the evidence of both sources as Markdown and HTML with plots.

Written under ``<data_root>/reports/ab/<last day>/`` (or a folder given): ``report.md``,
``report.html`` (plots inline, one file to mail or attach), ``evidence.json`` (every figure,
for machines) and the plots as PNG beside the Markdown.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ray_app.core.errors import RayAppError
from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.ab_evidence import empty_evidence, write_evidence
from ray_app.data.predictions import read_predictions
from ray_app.monitoring import ab, sources
from ray_app.monitoring.outcomes import realised_returns

REPORTS = ("reports", "ab")
SOURCES = ("precomputed", "served")
SOURCE_TITLES = {
    "precomputed": "Paired on every ticker-day (the variants' precomputed predictions)",
    "served": "Served traffic (the prediction log: what clients were answered, and the shadow)",
}


class NoEvidenceError(RayAppError):
    """Nothing to compare: no logged prediction in the period."""


@dataclass(frozen=True)
class SourceReport:
    evidence: ab.Evidence
    daily: pd.DataFrame  # feature_date, then rank IC per variant and loss diff per challenger


@dataclass(frozen=True)
class ABReport:
    start: dt.date | None
    end: dt.date | None
    sources: list[SourceReport]

    @property
    def last_day(self) -> dt.date | None:
        return max((s.evidence.end for s in self.sources if s.evidence.end), default=None)


def build_report(
    settings: Settings, start: dt.date | None = None, end: dt.date | None = None
) -> ABReport:
    """Both sources' evidence over [start, end] (feature dates; None: all logged)."""
    root = DataRoot(settings.data_root)
    log = sources.read_log(root, start, end)
    if log.empty:
        period = f"{start or 'the start'} to {end or 'the end'}"
        raise NoEvidenceError(
            f"no logged prediction from {period} under {root.display(sources.LOG)}"
        )
    realised = realised_returns(settings, start, end)
    frames = {
        "precomputed": sources.precomputed_predictions(settings, log),
        "served": sources.served_predictions(log),
    }
    return ABReport(
        start,
        end,
        [_source(settings, name, frames[name], realised) for name in SOURCES],
    )


def _source(
    settings: Settings, name: str, predictions: pd.DataFrame, realised: pd.DataFrame
) -> SourceReport:
    cfg = settings.monitoring
    panel = ab.build_panel(predictions, realised)
    evidence = ab.evidence(
        panel,
        name,
        cfg.baseline_variant,
        level=cfg.significance,
        loss=cfg.loss,
        reps=cfg.bootstrap_reps,
    )
    return SourceReport(evidence, daily_table(panel, cfg.baseline_variant, cfg.loss))


def daily_table(panel: ab.Panel, baseline: str, loss: ab.Loss) -> pd.DataFrame:
    """Per feature date: each variant's rank IC, each challenger's loss differential."""
    table = pd.DataFrame({"feature_date": panel.days})
    for variant, pred in sorted(panel.preds.items()):
        table[f"rank_ic:{variant}"] = ab.daily_metrics(pred, panel.realised)["rank_ic"]
        if variant != baseline and baseline in panel.preds:
            diff, _ = ab.paired_series(pred, panel.preds[baseline], panel.realised, loss)
            table[f"loss_diff:{variant}"] = diff
    return table


# -- rendering -----------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "never (no effect)"
    return f"{value:.{digits}f}"


def _ci(interval: ab.Interval) -> str:
    return f"{_fmt(interval.estimate)} [{_fmt(interval.low)}, {_fmt(interval.high)}]"


def variant_rows(evidence: ab.Evidence) -> list[list[str]]:
    """Header first: one row per variant."""
    rows = [["variant", "versions", "days", "ticker-days", "rank IC", "IC", "dir. acc.", "MAE"]]
    for v in evidence.variants:
        rows.append(
            [
                v.variant,
                ", ".join(v.model_versions),
                str(v.days),
                str(v.ticker_days),
                _ci(v.rank_ic),
                _ci(v.ic),
                _ci(v.directional_accuracy),
                _ci(v.mae),
            ]
        )
    return rows


def comparison_rows(evidence: ab.Evidence) -> list[list[str]]:
    """Header first: one row per challenger against the baseline."""
    rows = [
        [
            "challenger",
            "vs",
            "days",
            "ticker-days",
            "loss diff",
            "DM stat",
            "DM p",
            "rank IC diff",
            "verdict",
            "more days",
        ]
    ]
    for c in evidence.comparisons:
        more = "" if c.days_needed is None else _fmt(c.days_needed, 0)
        rows.append(
            [
                c.challenger,
                c.baseline,
                str(c.days),
                str(c.ticker_days),
                _fmt(c.loss_diff, 7),
                _fmt(c.dm_statistic, 2),
                _fmt(c.dm_p_value, 3),
                _ci(c.rank_ic_diff),
                c.verdict,
                more,
            ]
        )
    return rows


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _plot(daily: pd.DataFrame, title: str) -> bytes:
    """Cumulative daily rank IC per variant and cumulative loss differential per challenger
    (falling: the challenger's loss is lower), one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for column in daily.columns[1:]:
        kind, variant = column.split(":", 1)
        axis = top if kind == "rank_ic" else bottom
        axis.plot(daily["feature_date"], np.nancumsum(daily[column].to_numpy()), label=variant)
    top.set_ylabel("cumulative rank IC")
    bottom.set_ylabel("cumulative loss diff\n(challenger - baseline)")
    for axis in (top, bottom):
        axis.axhline(0, color="grey", linewidth=0.5)
        if axis.lines:
            axis.legend(loc="best", fontsize="small")
    top.set_title(title)
    fig.autofmt_xdate()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _explain(evidence: ab.Evidence) -> str:
    level = evidence.level
    return (
        f"Level {level}: loss test = Diebold-Mariano (HAC variance) on the daily mean "
        f"{evidence.loss} error differential; rank IC difference = stationary block "
        f"bootstrap by day, {100 * (1 - level):g}% percentile interval. Intervals of the "
        "per-variant metrics: daily means with HAC standard errors."
    )


def render(report: ABReport) -> tuple[str, str, dict[str, bytes]]:
    """(Markdown, HTML, PNG files by name) of ``report``."""
    period = f"{report.start or 'first logged day'} to {report.end or 'last logged day'}"
    md = [f"# A/B evidence, {period}", ""]
    body = [f"<h1>A/B evidence, {html.escape(period)}</h1>"]
    images = {}
    for part in report.sources:
        ev = part.evidence
        title = SOURCE_TITLES[ev.source]
        name = f"{ev.source}.png"
        images[name] = _plot(part.daily, title) if len(part.daily) else b""
        days = f"feature dates {ev.start} to {ev.end}" if ev.start else "no day with outcomes yet"
        md += [f"## {title}", "", days, "", _markdown_table(variant_rows(ev)), ""]
        md += [_markdown_table(comparison_rows(ev)), ""]
        md += [f"- {c.challenger}: {c.verdict}; {'; '.join(c.reasons)}" for c in ev.comparisons]
        md += ["", _explain(ev), ""]
        body += [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(days)}</p>"]
        body += [_html_table(variant_rows(ev)), "<br>", _html_table(comparison_rows(ev))]
        body += [
            "<ul>"
            + "".join(
                f"<li>{html.escape(c.challenger)}: <b>{html.escape(c.verdict)}</b>; "
                f"{html.escape('; '.join(c.reasons))}</li>"
                for c in ev.comparisons
            )
            + "</ul>",
            f"<p>{html.escape(_explain(ev))}</p>",
        ]
        if images[name]:
            md += [f"![{title}]({name})", ""]
            encoded = base64.b64encode(images[name]).decode()
            body.append(f'<img alt="{html.escape(title)}" src="data:image/png;base64,{encoded}">')
        else:
            del images[name]
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>A/B evidence</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )
    return "\n".join(md), page, images


def _finite(value: object) -> object:
    """``value`` with NaN and infinities as None, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def evidence_json(report: ABReport) -> object:
    """Every figure of the report; undefined ones (too few days, no effect) as null."""
    return _finite(
        {
            "start": report.start,
            "end": report.end,
            "sources": [asdict(s.evidence) for s in report.sources],
        }
    )


def evidence_table(report: ABReport) -> pd.DataFrame:
    """The report's comparisons as ``ray_app.data.ab_evidence`` rows (what the ingress exports)."""
    rows = [
        {
            "day": pd.Timestamp(s.evidence.end),
            "source": s.evidence.source,
            "variant": c.challenger,
            "baseline": c.baseline,
            "days": c.days,
            "ticker_days": c.ticker_days,
            "loss_diff": c.loss_diff,
            "dm_p_value": c.dm_p_value,
            "rank_ic_diff": c.rank_ic_diff.estimate,
            "rank_ic_diff_low": c.rank_ic_diff.low,
            "rank_ic_diff_high": c.rank_ic_diff.high,
            "verdict": c.verdict,
        }
        for s in report.sources
        if s.evidence.end is not None
        for c in s.evidence.comparisons
    ]
    return pd.DataFrame(rows) if rows else empty_evidence()


def record_daily_evidence(settings: Settings) -> str:
    """The daily A/B step: the report over the last ``monitoring.ab_window_days`` of logged
    feature dates, written under ``reports/ab/<newest day>/`` and as the evidence table the
    ingress exports; a one-line account of it."""
    root = DataRoot(settings.data_root)
    logged = read_predictions(root, columns=["feature_date"])["feature_date"]
    if logged.empty:
        write_evidence(root, empty_evidence())
        return "no logged prediction yet"
    newest = max(logged)
    start = newest - dt.timedelta(days=settings.monitoring.ab_window_days)
    report = build_report(settings, start, newest)
    if report.last_day is None:  # every logged day still waits for its next bar
        write_evidence(root, empty_evidence())
        return f"no outcome known yet up to {newest}"
    folder = write_report(settings, report)
    table = evidence_table(report)
    write_evidence(root, table)
    verdicts = ", ".join(f"{r.variant} ({r.source}): {r.verdict}" for r in table.itertuples())
    return f"{verdicts or 'no comparison'} up to {newest}; report in {folder}"


def write_report(settings: Settings, report: ABReport, out: Path | None = None) -> str:
    """Write the report's files; where they went (a folder path or URI)."""
    markdown, page, images = render(report)
    files: dict[str, bytes] = {
        "report.md": markdown.encode(),
        "report.html": page.encode(),
        "evidence.json": json.dumps(
            evidence_json(report), indent=2, default=str, allow_nan=False
        ).encode(),
        **images,
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (out / name).write_bytes(data)
        return str(out)
    root = DataRoot(settings.data_root)
    folder = (*REPORTS, str(report.last_day or dt.date.today()))
    root.fs.create_dir(root.path(*folder), recursive=True)
    for name, data in files.items():
        with root.fs.open_output_stream(root.path(*folder, name)) as stream:
            stream.write(data)
    return root.display(*folder)
