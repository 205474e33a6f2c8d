"""Evaluation: a model against the baselines, walk-forward and on the holdout, as a report.

Walk-forward folds refit the model's spec (family, hyperparameters, seed, the length early
stopping chose) on each fold's training rows in parallel Ray tasks, so every test row is
predicted by a model that never saw it or anything after it. The holdout is scored with the
given model as it is, since that is the model that would be registered and served. Every
scope compares the model with the zero, persistence and ridge baselines fitted on the same
rows, and with the one-line factors (``models.factors``: 1- and 5-day reversal, 21-day
momentum) ranked on the same days, because a daily-return model is only worth serving when
it beats them.

Models and baselines are fitted on the feature set's label (``label``); predictions are
scored against it for point errors and against the realised return (``target_ret``) for rank
skill and the backtest (``ray_app.models.metrics``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ray_app.core.errors import RayAppError
from ray_app.core.settings import EvaluateSettings, Settings
from ray_app.data.features import LABEL, TARGET
from ray_app.models.factors import FACTOR_NAMES, factor_predictions
from ray_app.models.families import ModelSpec, TrainedModel
from ray_app.models.metrics import leak_warning, long_short_backtest, rank_ic, summary
from ray_app.models.networks import (
    PersistenceBaseline,
    Predictor,
    RidgeBaseline,
    ZeroBaseline,
)
from ray_app.training.splits import Fold
from ray_app.training.train import TrainingData, fit_in_process

KEYS = ["date", "ticker"]
FITTED_BASELINES = ("zero", "persistence", "ridge")
BASELINES = (*FITTED_BASELINES, *FACTOR_NAMES)
PREDICTORS = ("model", *BASELINES)
SCOPES = ("walk_forward", "holdout")
ROLLING_IC_DAYS = 21
SCATTER_POINTS = 2000


class EvaluationError(RayAppError):
    """The model and the data cannot be evaluated together (other columns, no rows)."""


def baselines(columns: list[str]) -> dict[str, Predictor]:
    """Fresh, unfitted return forecasts (``FITTED_BASELINES``); ridge sees the same feature
    columns as the model."""
    return {
        "zero": ZeroBaseline(),
        "persistence": PersistenceBaseline(),
        "ridge": RidgeBaseline(columns),
    }


def model_predictions(
    data: TrainingData, test_mask: np.ndarray, model: TrainedModel
) -> pd.DataFrame:
    """``date``, ``ticker``, ``pred``, ``target_ret``, ``label`` for the rows of ``test_mask``
    the model can predict.

    The model predicts the whole frame and the test rows are selected afterwards: a GRU's
    window for the first test days reaches back into earlier days, which were known on the
    day it predicts from. Rows without a full window are left out.
    """
    test = data.frame.loc[test_mask, [*KEYS, TARGET, LABEL]]
    return test.merge(model.predict_frame(data.frame), on=KEYS, how="inner", validate="1:1")


def fold_predictions(data: TrainingData, fold: Fold, model: TrainedModel) -> pd.DataFrame:
    """One column per predictor (model and baselines) for the fold's test rows, wide.

    Baselines are fitted on the fold's training rows, factors ranked among the rows of each
    day, and all scored on exactly the rows the model predicts, so every predictor is judged
    on the same days and tickers.
    """
    preds = model_predictions(data, fold.test_mask, model).rename(columns={"pred": "model"})
    rows = preds[KEYS].merge(data.frame.loc[fold.test_mask], on=KEYS, how="left")
    train = data.frame.loc[fold.train_mask]
    for name, baseline in baselines(data.columns).items():
        preds[name] = baseline.fit(train).predict(rows)
    return pd.concat([preds, factor_predictions(data.frame, preds[KEYS])], axis=1)


def _refit_fold(
    data: TrainingData, settings: Settings, index: int, model: ModelSpec
) -> pd.DataFrame:
    """Ray task body: train the spec on fold ``index``'s training rows, predict its test rows."""
    fold = data.split.folds[index]
    refit = fit_in_process(data, settings, fold.train_mask, None, model=model)
    return fold_predictions(data, fold, refit)


def _finite(value: float) -> float | None:
    """JSON has no NaN: a metric that does not exist (a flat predictor's IC) becomes None."""
    return float(value) if math.isfinite(value) else None


def score(
    preds: pd.DataFrame, cfg: EvaluateSettings, point_forecast: bool = True
) -> dict[str, float | None]:
    """``metrics.summary`` of long-form predictions, with None for metrics that are undefined
    (a factor's rank, ``point_forecast=False``, has no point errors)."""
    if preds.empty:
        raise EvaluationError("no rows to score: the model could predict none of the test rows")
    metrics = summary(
        preds,
        quantile=cfg.quantile,
        top_k=cfg.top_k,
        cost_bps=cfg.cost_bps,
        point_forecast=point_forecast,
    )
    return {name: _finite(value) for name, value in metrics.items()}


def _long(wide: pd.DataFrame, name: str) -> pd.DataFrame:
    return wide[[*KEYS, name, TARGET, LABEL]].rename(columns={name: "pred"})


def score_predictors(
    wide: pd.DataFrame, cfg: EvaluateSettings
) -> dict[str, dict[str, float | None]]:
    """``score`` of every predictor of ``fold_predictions``' wide frame, by name."""
    return {name: score(_long(wide, name), cfg, name not in FACTOR_NAMES) for name in PREDICTORS}


def _iso(dates: Any) -> list[str]:
    return [str(d) for d in pd.DatetimeIndex(dates).strftime("%Y-%m-%d")]


def _refit_settings(settings: Settings, model: TrainedModel) -> Settings:
    """Settings whose seed is ``model``'s (the refit's family and hyperparameters come with
    its spec, so a tuned GRU is refit as a GRU whatever ``train.model`` says)."""
    refit = settings.model_copy(deep=True)
    refit.train.seed = model.seed
    return refit


def evaluate_model(settings: Settings, data: TrainingData, model: TrainedModel) -> dict[str, Any]:
    """The evaluation report of ``model`` on ``data`` (JSON-able; see ``write_report``).

    Folds are refit in parallel Ray tasks while the holdout is scored on the driver; the
    training data travels to the object store once.
    """
    import ray

    if model.columns != data.columns:
        raise EvaluationError(
            "the model was trained on other feature columns than feature set "
            f"{data.manifest.version} holds: evaluate it on the feature set it was trained on"
        )
    family = model.family
    fixed = ModelSpec(model.kind, family.fixed_length(model.hparams, model.best_epoch))
    task = ray.remote(_refit_fold).options(num_cpus=settings.train.cpus_per_worker)
    data_ref = ray.put(data)
    refit = _refit_settings(settings, model)
    refs = [task.remote(data_ref, refit, i, fixed) for i in range(len(data.split.folds))]
    holdout = data.split.holdout
    holdout_preds = fold_predictions(data, holdout, model) if holdout is not None else None
    return _build_report(settings, data, model, ray.get(refs), holdout_preds)


def _fold_info(fold: Fold, wide: pd.DataFrame) -> dict[str, Any]:
    return {
        "name": fold.name,
        "train_start": fold.train.start.date().isoformat(),
        "train_end": fold.train.end.date().isoformat(),
        "train_dates": fold.train.n_dates,
        "test_start": fold.test.start.date().isoformat(),
        "test_end": fold.test.end.date().isoformat(),
        "test_dates": fold.test.n_dates,
        "rows": len(wide),
        "rows_dropped": int(fold.test_mask.sum()) - len(wide),
    }


def _plot_series(wide: pd.DataFrame, scope: str, cfg: EvaluateSettings) -> dict[str, Any]:
    """What the plots need, small enough for JSON: daily net returns of each predictor's
    book and a seeded sample of (pred, realised) points."""
    nets = {
        name: long_short_backtest(
            _long(wide, name), quantile=cfg.quantile, cost_bps=cfg.cost_bps
        ).daily["net"]
        for name in PREDICTORS
    }
    book = pd.DataFrame(nets).fillna(0.0)
    sample = wide.sample(min(len(wide), SCATTER_POINTS), random_state=0)
    return {
        "scope": scope,
        "dates": _iso(book.index),
        "net": {name: book[name].tolist() for name in PREDICTORS},
        "scatter": {"pred": sample["model"].tolist(), "realised": sample[TARGET].tolist()},
    }


def _rank_ic_series(wide: pd.DataFrame) -> dict[str, list[Any]]:
    daily = rank_ic(_long(wide, "model")).daily
    return {"dates": _iso(daily.index), "rank_ic": daily.tolist()}


def _leak_warnings(metrics: dict[str, dict[str, dict[str, float | None]]]) -> list[dict[str, str]]:
    warnings = []
    for scope, by_name in metrics.items():
        model = by_name["model"]
        message = leak_warning(model["directional_accuracy"] or 0.0, model["rank_ic"] or 0.0)
        if message:
            warnings.append({"scope": scope, "message": message})
    return warnings


def _notes(
    data: TrainingData, model: TrainedModel, folds: list[dict[str, Any]], has_holdout: bool
) -> list[str]:
    notes = []
    if not has_holdout:
        notes.append("no holdout (split.holdout_months is 0): the holdout scope was skipped")
    if model.feature_version != data.manifest.version:
        notes.append(
            f"the model was trained on feature set {model.feature_version} and is evaluated "
            f"on {data.manifest.version}"
        )
    dropped = sum(f["rows_dropped"] for f in folds)
    if dropped:
        notes.append(f"{dropped} test row(s) without a full input window were left out")
    return notes


def _build_report(
    settings: Settings,
    data: TrainingData,
    model: TrainedModel,
    fold_preds: list[pd.DataFrame],
    holdout_preds: pd.DataFrame | None,
) -> dict[str, Any]:
    """Assemble the report from the wide predictions of each fold and of the holdout."""
    cfg = settings.evaluate
    scopes = {"walk_forward": pd.concat(fold_preds, ignore_index=True)}
    if holdout_preds is not None:
        scopes["holdout"] = holdout_preds
    metrics = {scope: score_predictors(wide, cfg) for scope, wide in scopes.items()}
    split = data.split
    folds = [_fold_info(f, w) for f, w in zip(split.folds, fold_preds, strict=True)]
    holdout = None
    if split.holdout is not None and holdout_preds is not None:
        holdout = _fold_info(split.holdout, holdout_preds)
    plot_scope = "holdout" if "holdout" in scopes else "walk_forward"
    return {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "kind": model.kind,
            "hparams": model.hparams.model_dump(),
            "best_epoch": model.best_epoch,
            "seed": model.seed,
            "columns": model.columns,
            "feature_version": model.feature_version,
            "data_version": model.data_version,
        },
        "data_version": data.manifest.data_version,
        "feature_version": data.manifest.version,
        "evaluate": cfg.model_dump(),
        "split": {"mode": split.mode, "embargo_days": split.embargo_days, "n_folds": len(folds)},
        "folds": folds,
        "holdout": holdout,
        "metrics": metrics,
        "fold_metrics": {
            f.name: score_predictors(w, cfg) for f, w in zip(split.folds, fold_preds, strict=True)
        },
        "rank_ic_series": {scope: _rank_ic_series(wide) for scope, wide in scopes.items()},
        "plot": _plot_series(scopes[plot_scope], plot_scope, cfg),
        "warnings": _leak_warnings(metrics),
        "notes": _notes(data, model, [*folds, *([holdout] if holdout else [])], bool(holdout)),
    }


def gate_inputs(report: dict[str, Any]) -> tuple[dict[str, float | None], dict[str, Any]]:
    """The model's holdout metrics and each baseline's, as ``gate.quality_gate`` takes
    them; EvaluationError when the report has no holdout to judge on."""
    if "holdout" not in report["metrics"]:
        raise EvaluationError("the report has no holdout scope: set split.holdout_months > 0")
    holdout = report["metrics"]["holdout"]
    return holdout["model"], {name: holdout[name] for name in BASELINES}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _table(by_name: dict[str, dict[str, float | None]]) -> list[str]:
    names = list(by_name)
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for metric in by_name[names[0]]:
        cells = " | ".join(_fmt(by_name[n][metric]) for n in names)
        lines.append(f"| {metric} | {cells} |")
    return lines


def _range(info: dict[str, Any]) -> str:
    return (
        f"train {info['train_start']} .. {info['train_end']}, "
        f"test {info['test_start']} .. {info['test_end']} ({info['rows']} rows)"
    )


def _section(title: str, by_name: dict[str, dict[str, float | None]]) -> list[str]:
    return [title, "", *_table(by_name), ""]


def render_markdown(report: dict[str, Any], plots: list[Path]) -> str:
    """The report for people: warnings first, then one table per scope and fold."""
    model = report["model"]
    lines = [
        f"# Evaluation: {model['kind']} model",
        "",
        f"Created {report['created_at']}; data version `{report['data_version']}`, feature "
        f"version `{report['feature_version']}`; best epoch {model['best_epoch']}.",
        "",
    ]
    for warning in report["warnings"]:
        lines += [
            f"> **WARNING: LEAK SUSPECTED ({warning['scope']}).** This indicates a leak, not "
            f"skill: {warning['message']}.",
            "",
        ]
    lines += [f"- {note}" for note in report["notes"]] + ([""] if report["notes"] else [])
    if report["holdout"] is not None:
        lines += _section(f"## Holdout: {_range(report['holdout'])}", report["metrics"]["holdout"])
    pooled = f"## Walk-forward: {len(report['folds'])} folds pooled"
    lines += _section(pooled, report["metrics"]["walk_forward"])
    for fold in report["folds"]:
        title = f"### {fold['name']}: {_range(fold)}"
        lines += _section(title, report["fold_metrics"][fold["name"]])
    lines += ["## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    return "\n".join(lines)


def _plot_equity(report: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    plot = report["plot"]
    dates = pd.to_datetime(plot["dates"])
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.subplots()
    for name, net in plot["net"].items():
        ax.plot(
            dates,
            np.cumprod(1 + np.asarray(net)),
            label=name,
            linewidth=2 if name == "model" else 1,
        )
    ax.tick_params(axis="x", labelrotation=30)
    ax.set(title=f"Long-short equity, net of costs ({plot['scope']})", ylabel="equity")
    ax.legend()
    fig.savefig(path, dpi=100)


def _plot_ic(report: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.subplots()
    for scope, series in report["rank_ic_series"].items():
        daily = pd.Series(series["rank_ic"], index=pd.to_datetime(series["dates"]), dtype=float)
        ax.plot(daily.index, daily.to_numpy(), ".", markersize=3, alpha=0.4, label=f"{scope} daily")
        rolling = daily.rolling(ROLLING_IC_DAYS, min_periods=1).mean()
        ax.plot(rolling.index, rolling.to_numpy(), label=f"{scope} {ROLLING_IC_DAYS}-day mean")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.tick_params(axis="x", labelrotation=30)
    ax.set(title="Rank IC (daily Spearman correlation)", ylabel="rank IC")
    ax.legend()
    fig.savefig(path, dpi=100)


def _plot_scatter(report: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    points = report["plot"]["scatter"]
    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    ax = fig.subplots()
    ax.scatter(points["pred"], points["realised"], s=6, alpha=0.4)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set(
        title=f"Predicted vs realised log return ({report['plot']['scope']})",
        xlabel="predicted",
        ylabel="realised",
    )
    fig.savefig(path, dpi=100)


def write_report(report: dict[str, Any], folder: Path) -> list[Path]:
    """``report.json``, ``report.md`` and the PNG plots in ``folder``; the paths written.

    Plots draw on bare ``matplotlib.figure.Figure`` objects, which render with Agg without
    touching pyplot's global backend, so a caller's own plotting is left alone.
    """
    folder.mkdir(parents=True, exist_ok=True)
    plots = [folder / "equity.png", folder / "ic.png", folder / "pred_vs_realised.png"]
    for draw, path in zip((_plot_equity, _plot_ic, _plot_scatter), plots, strict=True):
        draw(report, path)
    json_path, md_path = folder / "report.json", folder / "report.md"
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False))
    md_path.write_text(render_markdown(report, plots))
    return [json_path, md_path, *plots]


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """``<scope>.<predictor>.<metric>`` for scopes, then folds; undefined metrics left out."""
    groups = {**report["metrics"], **report["fold_metrics"]}
    return {
        f"{scope}.{name}.{metric}": value
        for scope, by_name in groups.items()
        for name, values in by_name.items()
        for metric, value in values.items()
        if value is not None and math.isfinite(value)
    }


def log_evaluation(report: dict[str, Any], folder: Path) -> None:
    """Log the report's metrics and the files in ``folder`` (under ``evaluation/``) to the
    active MLflow run."""
    import mlflow

    if mlflow.active_run() is None:
        raise EvaluationError("log_evaluation needs an active MLflow run (mlflow.start_run)")
    mlflow.log_metrics(flat_metrics(report))
    mlflow.log_artifacts(str(folder), artifact_path="evaluation")
