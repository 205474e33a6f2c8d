"""Benchmark of the model families on one feature set: the variant's first table, and quality.

Why: every family serves through the same variants, and a variant answers from a table of its
model's prediction for every ticker-day of the feature set it serves (``Variant.scores``).
Issue 14 asks that a LightGBM model's first table cost no more than the MLP's. The pipeline's
deploy scores each pinned version's table in a Ray task before ``serve deploy``
(``serving.precompute``), and the variant reads that table back: its first table is the
read-back, whatever the family. This script times both halves, on the same feature set, in
the same run, as ratios to the MLP's.

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
4. times each family's scoring pass, the deploy's precompute task (or a variant's own pass
   where none was precomputed): ``ServedModel`` (the predictor built once) and
   ``score_frames`` over every ticker of the feature set, the torch families in NumPy (as
   in a variant replica), LightGBM on one thread (a Ray task of one CPU);
5. times the variant's first table after that precompute: ``read_served_scores`` of the
   persisted table, which is also what a replica that restarts, a second replica or a
   rollback pays.

``--repeats`` rounds, the families in turn within each round (which goes first alternates),
medians reported.

Target: LightGBM's first table in a variant / the MLP's <= 1.0 (exit status 1 when it is
not). The scoring pass's ratio is reported beside it: that cost is the deploy's, before
traffic.

    .venv/bin/python bench/bench_families.py [--threads 2] [--repeats 15]
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
from ray_app.data.signals import ServedTable, read_served_scores, store_scores
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

TARGET_RATIO = 1.0  # LightGBM's first table in a variant / the MLP's, at most
Scores = dict[str, dict[str, float | None]]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, help="YAML settings (default: the sample)")
    parser.add_argument(
        "--data-root", type=Path, help="Reuse the feature set a previous run built there"
    )
    parser.add_argument("--threads", type=int, default=2, help="Threads of each fit")
    parser.add_argument("--repeats", type=int, default=15, help="Timed rounds of the tables")
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


def scoring_pass(model: TrainedModel, table: FeatureTable) -> tuple[float, dict[str, np.ndarray]]:
    """Seconds to build the served model and its table over every ticker; the table."""
    t0 = time.perf_counter()
    served = ServedModel("bench", 1, model)
    preds = score_frames(served, ColumnSelector(served.columns), tuple(table.columns), table.frames)
    return time.perf_counter() - t0, preds


def read_back(root: DataRoot, model: TrainedModel, kind: str, table: FeatureTable) -> float:
    """Seconds of a variant's first table after the deploy's precompute: the digest of its
    model (computed once, on the first table) and the persisted table read back."""
    served = ServedModel("bench", 1, model)  # built at load time, before any table
    t0 = time.perf_counter()
    held = read_served_scores(root, persisted(kind, table), table.dates, served.digest)
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
        _, preds = scoring_pass(trained[kind], table)
        frames = {t: (table.frames[t][0], preds[t]) for t in table.frames}
        store_scores(store, persisted(kind, table), frames, trained[kind].digest())
        rows[kind] = int(sum(np.isfinite(p).sum() for p in preds.values()))
    for round_ in range(args.repeats):  # the order turns every round: no family goes first
        order = args.families[round_ % 2 :] + args.families[: round_ % 2]
        for kind in order:
            times[kind].append(scoring_pass(trained[kind], table)[0])
        for kind in order:
            reads[kind].append(read_back(store, trained[kind], kind, table))
    passes = {kind: statistics.median(values) for kind, values in times.items()}
    firsts = {kind: statistics.median(values) for kind, values in reads.items()}
    head = (
        f"{'family':<10} {'steps':>6} {'table rows':>10} {'scoring pass s':>14} {'/ mlp':>6} "
        f"{'first table s':>13} {'/ mlp':>6}"
    )
    print(head)
    print("-" * len(head))
    for kind in args.families:
        ratios = [m[kind] / m["mlp"] if "mlp" in m else float("nan") for m in (passes, firsts)]
        print(
            f"{kind:<10} {trained[kind].best_epoch:>6} {rows[kind]:>10,} {passes[kind]:>14.3f} "
            f"{ratios[0]:>6.2f} {firsts[kind]:>13.4f} {ratios[1]:>6.2f}"
        )
    print(load_note())
    if "mlp" in firsts and "lightgbm" in firsts:
        ratio = firsts["lightgbm"] / firsts["mlp"]
        ok = ratio <= TARGET_RATIO
        print(
            f"LightGBM first table in a variant / MLP's = {ratio:.2f} (target <= {TARGET_RATIO}):"
            f" {'met' if ok else 'NOT met'}; its scoring pass, in the deploy's Ray task before "
            f"traffic: {passes['lightgbm'] / passes['mlp']:.2f}x the MLP's"
        )
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
