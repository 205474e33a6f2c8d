"""Benchmark of the model families on one feature set: the variant's first table, and quality.

Why: every family serves through the same variants, and a variant precomputes a prediction
for every ticker-day of the feature set it serves before it answers from that table
(``Variant.scores``: ``score_frames`` over the ``FeatureTable``). Issue 14 asks that a
LightGBM model's first table cost no more than the MLP's. The two are timed on the same
feature set, in the same run, and compared as a ratio.

What it does, in one run:

1. ingests and featurises the bundled sample (or ``--config``'s source) under a fresh data
   root, in this process (``bench_data``'s pandas path: the same store as Ray Data's);
2. fits every family (``--families``) with its default hyperparameters on the tune fold,
   early-stopping on its test window, as ``ray-app train``'s workers do (the family's fit,
   in this process: a Ray Train worker group would add its start-up to every family alike),
   timed (the train time, on the threads ``train.torch_threads`` gives);
3. scores each model on the holdout as a release does (``evaluate.fold_predictions`` and
   ``score_predictors``): rank IC (the per-day Spearman correlation of predictions and
   next-day returns), its ICIR (mean / std of the daily rank IC) and t-statistic, the
   long-short Sharpe after costs, and the quality gate's verdict against the baselines
   (zero, persistence, ridge and the three factors, printed once) with no champion;
4. times each family's first table as a variant builds it: ``ServedModel`` (the predictor
   built once) and ``score_frames`` over every ticker of the feature set: the torch
   families in NumPy (as in a variant replica), LightGBM predicting on one thread;
   ``--repeats`` rounds, the families in turn within each round, medians reported, and the
   ratio to the MLP's; beside it, the time to read the persisted table back, which is what a
   variant replica that restarts (or a second one, or a rollback) pays instead
   (``read_served_scores``).

Target: LightGBM's first table / MLP's first table <= 1.0 (exit status 1 when it is not).

    .venv/bin/python bench/bench_families.py [--num-cpus 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_data import load_note, pandas_features, pandas_ingest

from ray_app.core.settings import Settings, load_settings
from ray_app.core.storage import DataRoot
from ray_app.data.signals import ServedTable, read_served_scores, write_scores
from ray_app.data.sources import make_source
from ray_app.models.families import LoopSession, TrainedModel, names, spec
from ray_app.serving.features import FeatureTable
from ray_app.serving.loader import ServedModel
from ray_app.serving.predictor import ColumnSelector, score_frames
from ray_app.training.evaluate import BASELINES, fold_predictions, score_predictors
from ray_app.training.gate import quality_gate
from ray_app.training.train import (
    TrainingData,
    build_arrays,
    fit_config,
    load_training_data,
    trained_model,
)

TARGET_RATIO = 1.0  # LightGBM's first table / the MLP's, at most
Scores = dict[str, dict[str, float | None]]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, help="YAML settings (default: the sample)")
    parser.add_argument(
        "--data-root", type=Path, help="Reuse the feature set a previous run built there"
    )
    parser.add_argument("--threads", type=int, default=2, help="Threads of each fit")
    parser.add_argument("--repeats", type=int, default=5, help="Timed rounds of first tables")
    parser.add_argument("--families", nargs="+", default=["mlp", "lightgbm"], choices=names())
    return parser.parse_args()


def holdout_scores(settings: Settings, data: TrainingData, model: TrainedModel) -> Scores:
    """The model's and every baseline's holdout metrics, as a release's report holds them."""
    assert data.split.holdout is not None, "the benchmark needs split.holdout_months > 0"
    return score_predictors(fold_predictions(data, data.split.holdout, model), settings.evaluate)


def cell(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def print_quality(settings: Settings, scores: dict[str, Scores], train_s: dict[str, float]) -> None:
    """Per family: train time, rank IC, ICIR, t, Sharpe after costs and the gate's verdict
    against the baselines; then the baselines' own figures (those of the first family's
    holdout rows)."""
    head = (
        f"{'predictor':<13} {'train s':>8} {'rank IC':>8} {'ICIR':>7} {'t':>6} "
        f"{'Sharpe':>7} {'top-k Sh':>8}  gate"
    )
    print(head)
    print("-" * len(head))
    for kind, by_name in scores.items():
        model = by_name["model"]
        others = {name: by_name[name] for name in BASELINES}
        decision = quality_gate(model, others, settings.gate)
        verdict = "passed" if decision.passed else f"failed ({len(decision.reasons)} checks)"
        print(
            f"{kind:<13} {train_s[kind]:>8.1f} {cell(model['rank_ic'], 8, 4)} "
            f"{cell(model['rank_icir'], 7, 3)} {cell(model['rank_ic_t'], 6, 2)} "
            f"{cell(model['sharpe'], 7, 2)} {cell(model['top_k_sharpe'], 8, 2)}  {verdict}"
        )
    first = next(iter(scores.values()))
    for name in BASELINES:
        m = first[name]
        print(
            f"{name:<13} {'':>8} {cell(m['rank_ic'], 8, 4)} {cell(m['rank_icir'], 7, 3)} "
            f"{cell(m['rank_ic_t'], 6, 2)} {cell(m['sharpe'], 7, 2)} "
            f"{cell(m['top_k_sharpe'], 8, 2)}"
        )
    print(
        f"holdout: {int(first['model']['rank_ic_days'] or 0)} days; Sharpe: the "
        f"{settings.evaluate.quantile:g}-quantile long-short book, top-k: {settings.evaluate.top_k}"
        f" a side, both after {settings.evaluate.cost_bps:g} bp per unit of turnover; gate: "
        f"min rank-IC t {settings.gate.min_rank_ic_t:g}, no champion"
    )


def first_table(model: TrainedModel, table: FeatureTable) -> tuple[float, dict[str, np.ndarray]]:
    """Seconds to build the served model and its table over every ticker; the table."""
    t0 = time.perf_counter()
    served = ServedModel("bench", 1, model)
    preds = score_frames(served, ColumnSelector(served.columns), tuple(table.columns), table.frames)
    return time.perf_counter() - t0, preds


def read_back(root: DataRoot, kind: str, table: FeatureTable) -> float:
    """Seconds for a replica that restarts to read the persisted table back."""
    t0 = time.perf_counter()
    dates = {t: days for t, (days, _) in table.frames.items()}
    held = read_served_scores(root, persisted(kind, table), dates, kind)
    assert held is not None and len(held) == len(table.frames)
    return time.perf_counter() - t0


def persisted(kind: str, table: FeatureTable) -> ServedTable:
    return ServedTable(kind, f"bench-{kind}", "1", table.feature_version)


def fit(settings: Settings, data: TrainingData, kind: str) -> TrainedModel:
    """``kind`` with its defaults on the tune fold, early-stopped on its test window."""
    model, fold = spec(settings, kind, {}), data.tune_fold
    window = model.family.window(model.hparams)
    arrays = build_arrays(data.frame, data.columns, window, fold.train_mask, fold.test_mask)
    fitted = model.family.fit(arrays, model.hparams, fit_config(settings), LoopSession())
    return trained_model(model, fitted, arrays.scaler, data, settings.train.seed)


def main() -> None:
    args = parse_args()
    root = args.data_root or Path(tempfile.mkdtemp(prefix="bench-families-")) / "data"
    base = load_settings(args.config) if args.config else Settings(ingest={"source": "sample"})
    settings = base.model_copy(update={"data_root": str(root)})
    settings.train.torch_threads = args.threads
    print(f"bench_families: {', '.join(args.families)}; {args.threads} threads; {load_note()}")
    trained: dict[str, TrainedModel] = {}
    quality: dict[str, Scores] = {}
    train_s: dict[str, float] = {}
    if args.data_root is None:
        source = make_source(settings.ingest)
        failed = pandas_ingest(settings, source) + pandas_features(settings)
        if failed:
            raise SystemExit(f"feature set incomplete: {', '.join(failed)} failed")
    data = load_training_data(settings)
    print(
        f"feature set {data.manifest.version}: {len(data.frame):,} rows, "
        f"{data.frame['ticker'].nunique()} tickers, {len(data.columns)} features"
    )
    for kind in args.families:
        t0 = time.perf_counter()
        trained[kind] = fit(settings, data, kind)
        train_s[kind] = time.perf_counter() - t0
        quality[kind] = holdout_scores(settings, data, trained[kind])
    print_quality(settings, quality, train_s)
    table = FeatureTable.load(settings)
    times: dict[str, list[float]] = {kind: [] for kind in args.families}
    reads: dict[str, list[float]] = {kind: [] for kind in args.families}
    rows = {}
    store = DataRoot(str(root))
    for kind in args.families:  # warm-up: imports, first allocations; the persisted tables
        _, preds = first_table(trained[kind], table)
        frames = {t: (table.frames[t][0], preds[t]) for t in table.frames}
        write_scores(store, persisted(kind, table), frames, kind)
        rows[kind] = int(sum(np.isfinite(p).sum() for p in preds.values()))
    for _ in range(args.repeats):
        for kind in args.families:
            times[kind].append(first_table(trained[kind], table)[0])
            reads[kind].append(read_back(store, kind, table))
    median = {kind: statistics.median(values) for kind, values in times.items()}
    head = (
        f"{'family':<10} {'steps':>6} {'table rows':>10} {'table s':>8} {'/ mlp':>6} "
        f"{'read back s':>11}"
    )
    print(head)
    print("-" * len(head))
    for kind in args.families:
        ratio = median[kind] / median["mlp"] if "mlp" in median else float("nan")
        print(
            f"{kind:<10} {trained[kind].best_epoch:>6} {rows[kind]:>10,} {median[kind]:>8.3f} "
            f"{ratio:>6.2f} {statistics.median(reads[kind]):>11.3f}"
        )
    print(load_note())
    if "mlp" in median and "lightgbm" in median:
        ratio = median["lightgbm"] / median["mlp"]
        ok = ratio <= TARGET_RATIO
        print(
            f"LightGBM first table / MLP first table = {ratio:.2f} (target <= {TARGET_RATIO}): "
            + ("met" if ok else "NOT met")
        )
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
