"""Benchmark of the search and training paths: Ray Tune + Optuna against plain Optuna, and
one epoch of Ray Train against the same PyTorch loop in this process.

Why: the platform searches hyperparameters with Ray Tune (``ray_app.training.tune.run_search``:
OptunaSearch's seeded TPE, two trials at once, MLflow child runs, per-epoch metrics)
and trains with Ray Train (``training.families.torch.make_trainer``). On the machine we develop on
(2 cores) that only pays off if the search finishes clearly sooner than the obvious
alternative, plain Optuna running the same trials one after the other in one process, and
if Ray Train adds little to an epoch beyond the fixed cost of starting its worker group.
This script measures both claims on a deterministic data set, so anyone can rerun it.

What it does:

1. builds a fixed feature set: a synthetic universe (``bench_data.write_universe``: SPY and
   seeded random-walk tickers, default 40 tickers x 12 years, cached under ``bench/out/``)
   ingested and featurised with ``run_ingest`` + ``build_features`` into a fresh data root.
   The bundled sample (5 tickers to 2013, about 10k training rows, 0.15 s an epoch) is too
   small: a trial would need dozens of epochs to last a few seconds, and the figures would
   measure start-up and per-epoch reporting rather than training;
2. the objective, identical in both searches: the MLP on the tune fold
   (``load_training_data(...).tune_fold`` through ``train.build_arrays``), ``train_loop``
   for a fixed number of epochs (``patience = epochs``: no early stopping), the best
   validation loss; the default search space (lr, hidden_size, dropout, weight_decay);
3. plain Optuna: ``optuna.create_study(sampler=TPESampler(seed=0))`` and ``study.optimize``
   over that objective, the trials one after the other in this process, each running
   ``train_loop`` with a bare ``LoopSession`` (no reporting, no checkpoints);
4. Ray Tune: ``run_search`` with the same number of trials, 2 at a time (1 CPU each),
   scheduler ``none`` (no early stopping, so both searches do the same work) and MLflow on
   the default SQLite file under the data root, timed end to end (arrays, MLflow parent and
   child runs with every epoch's metrics, trial start-up; trials checkpoint as
   ``tune.checkpoint_every`` says, by default never);
5. Ray Train: one epoch of the default MLP, 1 worker, ``make_trainer(...).fit()`` against
   ``train_loop`` in this process on the same arrays, repeated and reported as medians.

Fairness: Ray is started once (a private local instance, ``ray_app.ops.runtime.connect`` with
2 CPUs) before anything is timed, and both paths are warmed up (a 1-epoch search, a 1-epoch
Ray Train run, a 1-epoch loop here: imports, the MLflow database, worker start-up) outside
the timed regions. Both searches run 1 torch thread per trial (``train.torch_threads=1``).
TPE's first 10 trials are its seeded random start-up, drawn parameter by parameter in the
order of the space, so with the same seed both searches evaluate the same configurations;
the script checks that, and that they reach the same losses. Plain Optuna runs first, then
Ray Tune, then the Ray Train comparison.

Ray Train figures: the worker function is ``families.torch.worker_loop`` with timing added (the same
``train_loop`` and ``RaySession``, its ``restore`` and ``report`` hooks marked; a worker
returns nothing to ``fit()``, so the timings go to a file in the data root). Inside
``train_loop`` the script separates set-up (model, optimizer, validation loader: in a fresh
worker process the first AdamW also imports ``torch._dynamo``), the epoch (the training
pass, validation, the best-state copy) and the report (checkpoint + ``ray.train.report``;
a no-op in the bare loop). The 1.15x target applies to epoch + report against the same in
this process. Everything else, the worker group's start-up and wind-down, ``ray.get`` of
the arrays and the set-up, is a fixed cost per ``fit()``, printed separately, and counted
in the end-to-end ratio. Ray Train V2 puts no ``time_this_iter_s`` in
``result.metrics_dataframe``, hence the hooks.

Targets: the Ray Tune search at most 0.7x the plain Optuna wall time, and one epoch through
Ray Train at most 1.15x the plain loop. The script exits 0 either way (it is a benchmark);
equal configurations and losses are correctness checks reported on the verdict line. The
CPUs may be shared: the 1-minute load average is printed before and after each path.

Run: ``.venv/bin/python bench/bench_tune.py`` (``--smoke`` for a quick 10 tickers x 6 years,
4 trials of 2 epochs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from bench_data import OUT, fresh_root, load_note, local_ray, write_universe

from ray_app.core.settings import SearchDimension, Settings
from ray_app.data.feature_store import build_features
from ray_app.data.ingest import run_ingest
from ray_app.models.families import Arrays, LoopSession, get, search_spaces, spec
from ray_app.models.families._torch import TorchFamily, TorchParams
from ray_app.training.families.torch import make_trainer
from ray_app.training.train import (
    RaySession,
    TrainingData,
    build_arrays,
    fit_config,
    load_training_data,
    results_path,
)
from ray_app.training.tune import run_search

TUNE_TARGET = 0.7  # Ray Tune wall / plain Optuna wall, at most
TRAIN_TARGET = 1.15  # Ray Train epoch in the worker / plain loop epoch, at most
SEARCH_SEED = 0


# --- the fixed feature set ---------------------------------------------------------------


def bench_settings(root: Path, folder: Path, args: argparse.Namespace) -> Settings:
    """One configuration for every path: the same loop, space, seed and thread count."""
    return Settings(
        data_root=str(root),
        ingest={"source": "csv", "path": folder},
        ray={"num_cpus": args.num_cpus},
        train={
            "model": "mlp",
            "hparams": {"epochs": args.epochs},
            "patience": args.epochs,  # >= epochs: early stopping off, every trial runs them all
            "torch_threads": 1,
            "num_workers": 1,
            "cpus_per_worker": 1,
        },
        tune={
            "num_samples": args.trials,
            "max_concurrent": args.concurrent,
            "scheduler": "none",
            "cpus_per_trial": 1,
            "seed": SEARCH_SEED,
        },
    )


def with_epochs(settings: Settings, epochs: int, trials: int | None = None) -> Settings:
    """A copy of ``settings`` with ``epochs`` (and patience) and optionally ``trials``."""
    copy = settings.model_copy(deep=True)
    copy.train.hparams["epochs"] = epochs
    copy.train.patience = epochs
    if trials is not None:
        copy.tune.num_samples = trials
    return copy


def tune_arrays(settings: Settings, data: TrainingData) -> Arrays:
    """The inputs every trial trains on: the tune fold, exactly as ``run_search`` builds them."""
    model, fold = spec(settings), data.tune_fold
    window = model.family.window(model.hparams)
    return build_arrays(data.frame, data.columns, window, fold.train_mask, fold.test_mask)


def mlp() -> TorchFamily:
    family = get("mlp")
    assert isinstance(family, TorchFamily)
    return family


def mlp_loop(settings: Settings, arrays: Arrays, session: LoopSession, **params: Any) -> Any:
    """The MLP's epoch loop (what its trials and Ray Train workers run) on ``arrays``."""
    hparams = TorchParams(**{**spec(settings).hparams.model_dump(), **params})
    return mlp().train_loop(arrays, hparams, fit_config(settings), session)


def build_feature_set(settings: Settings) -> tuple[TrainingData, float]:
    t0 = time.perf_counter()
    ingest = run_ingest(settings)
    features = build_features(settings)
    failed = ingest.failed + features.failed
    if failed:
        raise SystemExit(f"feature set incomplete: {', '.join(failed)} failed")
    return load_training_data(settings), time.perf_counter() - t0


# --- plain Optuna ------------------------------------------------------------------------


def suggest(trial: optuna.Trial, name: str, dim: SearchDimension) -> Any:
    """The Optuna counterpart of ``tune._suggest``."""
    if dim.type == "choice":
        return trial.suggest_categorical(name, dim.values or [])
    assert dim.low is not None and dim.high is not None
    if dim.type == "int":
        return trial.suggest_int(name, int(dim.low), int(dim.high))
    return trial.suggest_float(name, dim.low, dim.high, log=dim.type == "loguniform")


@dataclass
class TrialRun:
    """One trial of either search: its sampled parameters, best loss and seconds inside it."""

    params: dict[str, Any]
    best_loss: float
    seconds: float


@dataclass
class SearchRun:
    wall_s: float
    trials: list[TrialRun]
    best_loss: float
    failed: int = 0

    @property
    def mean_trial_s(self) -> float:
        return statistics.fmean(t.seconds for t in self.trials) if self.trials else math.nan


def run_plain_optuna(settings: Settings, data: TrainingData) -> SearchRun:
    """``study.optimize`` over the MLP's loop: what ``run_search`` does, without Ray."""
    space = search_spaces(settings)["mlp"]
    runs: list[TrialRun] = []
    t0 = time.perf_counter()
    arrays = tune_arrays(settings, data)

    def objective(trial: optuna.Trial) -> float:
        start = time.perf_counter()
        params = {name: suggest(trial, name, dim) for name, dim in space.items()}
        state = mlp_loop(settings, arrays, LoopSession(), **params)
        runs.append(TrialRun(params, float(state["best_loss"]), time.perf_counter() - start))
        return float(state["best_loss"])

    study = optuna.create_study(
        direction="minimize", sampler=optuna.samplers.TPESampler(seed=SEARCH_SEED)
    )
    study.optimize(objective, n_trials=settings.tune.num_samples)
    return SearchRun(time.perf_counter() - t0, runs, float(study.best_value))


# --- Ray Tune ----------------------------------------------------------------------------


def tune_trials(settings: Settings, name: str) -> list[TrialRun]:
    """Every trial's last result, read back from the experiment folder (not timed)."""
    from ray.tune import ExperimentAnalysis

    frame = ExperimentAnalysis(f"{results_path(settings)}/{name}").dataframe()
    names = list(search_spaces(settings)["mlp"])
    runs = []
    for row in frame.to_dict("records"):
        params = {n: row[f"config/mlp/{n}"] for n in names}
        runs.append(TrialRun(params, float(row["best_val_loss"]), float(row["time_total_s"])))
    return runs


def run_ray_tune(settings: Settings, data: TrainingData) -> SearchRun:
    t0 = time.perf_counter()
    outcome = run_search(settings, data)
    wall = time.perf_counter() - t0
    trials = tune_trials(settings, outcome.name)
    return SearchRun(wall, trials, outcome.best_val_loss, outcome.failed)


@dataclass
class Agreement:
    """Whether both searches evaluated the same configurations and reached the same losses."""

    same_configs: bool
    max_loss_rel_diff: float

    @property
    def ok(self) -> bool:
        return self.same_configs and self.max_loss_rel_diff <= 1e-4


def _key(params: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(
        (k, float(f"{v:.10g}") if isinstance(v, float) else v) for k, v in sorted(params.items())
    )


def compare_searches(plain: SearchRun, tune: SearchRun) -> Agreement:
    left = {_key(t.params): t.best_loss for t in plain.trials}
    right = {_key(t.params): t.best_loss for t in tune.trials}
    same = set(left) == set(right) and len(plain.trials) == len(tune.trials)
    diffs = [abs(left[k] - right[k]) / max(abs(left[k]), 1e-12) for k in set(left) & set(right)]
    return Agreement(same, max(diffs) if diffs else math.inf)


# --- Ray Train: one epoch ----------------------------------------------------------------


class Phases:
    """Where one ``train_loop`` call spends its time, marked through its session's hooks.

    ``train_loop`` calls ``session.restore()`` once the model, optimizer and validation
    loader exist, and ``session.report()`` at the end of every epoch: set-up is the time to
    the first, the epoch the time from there to the first report, and ``report_s`` the time
    spent inside reports (Ray's checkpoint and ``report``; nothing for a bare session).
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.setup_end = self.epoch_end = math.nan
        self.report_s = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "setup_s": self.setup_end - self.start,
            "epoch_s": self.epoch_end - self.setup_end,
            "report_s": self.report_s,
        }


class Timed(LoopSession):
    """Marks the phases of ``train_loop`` on top of a session (``LoopSession`` or, mixed in
    first, ``RaySession``): set-up ends at ``restore``, the first epoch at the first
    ``report``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.phases = Phases()

    def restore(self) -> dict[str, Any] | None:
        self.phases.setup_end = time.perf_counter()
        return super().restore()

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        if math.isnan(self.phases.epoch_end):
            self.phases.epoch_end = time.perf_counter()
        t0 = time.perf_counter()
        super().report(metrics, state)
        self.phases.report_s += time.perf_counter() - t0


class TimedLoopSession(Timed):
    """The bare session of in-process training, with its phases marked."""


class TimedRaySession(Timed, RaySession):
    """``RaySession`` as ``families.torch.worker_loop`` builds it, with its phases marked."""


def timed_worker_loop(timing_file: str) -> Callable[[dict[str, Any]], None]:
    """``families.torch.worker_loop`` with its timings written to ``timing_file`` (a worker
    returns nothing to ``fit()``; the local instance shares this machine's disk)."""

    def loop(config: dict[str, Any]) -> None:
        import ray
        import ray.train

        entered = time.time()
        arrays = ray.get(config["arrays_ref"])
        session = TimedRaySession(ray.train, distributed=True)
        started = time.time()
        params = TorchParams(**config["hparams"])
        mlp().train_loop(arrays, params, config["fit"], session)
        timings = {
            "entered": entered,
            "started": started,
            "done": time.time(),
            **session.phases.as_dict(),
        }
        Path(timing_file).write_text(json.dumps(timings))

    return loop


@dataclass
class EpochRun:
    """One 1-epoch comparison: the loop in this process and through Ray Train."""

    plain: dict[str, float]  # setup_s, epoch_s, report_s, total_s
    worker: dict[str, float]  # the same, inside the Ray Train worker
    fit_s: float  # make_trainer(...).fit(), end to end
    startup_s: float  # fit() called -> worker function entered
    get_s: float  # ray.get of the arrays in the worker
    winddown_s: float  # worker loop done -> fit() returned
    metric_columns: list[str] = field(default_factory=list)


def plain_epoch(settings: Settings, arrays: Arrays) -> dict[str, float]:
    session = TimedLoopSession()
    mlp_loop(settings, arrays, session)
    return {**session.phases.as_dict(), "total_s": time.perf_counter() - session.phases.start}


def ray_train_epoch(settings: Settings, arrays_ref: Any, label: str) -> EpochRun:
    timing_file = Path(settings.data_root) / f"train-timing-{label}.json"
    timing_file.unlink(missing_ok=True)
    name = f"bench-epoch-{label}-{os.getpid()}"
    trainer = make_trainer(settings, spec(settings), arrays_ref, name)
    trainer.train_loop_per_worker = timed_worker_loop(str(timing_file))
    called = time.time()
    t0 = time.perf_counter()
    result = trainer.fit()
    fit_s = time.perf_counter() - t0
    returned = time.time()
    if result.error:
        raise result.error
    t = json.loads(timing_file.read_text())
    frame = result.metrics_dataframe
    worker = {k: t[k] for k in ("setup_s", "epoch_s", "report_s")}
    return EpochRun(
        plain={},
        worker={**worker, "total_s": t["done"] - t["started"]},
        fit_s=fit_s,
        startup_s=t["entered"] - called,
        get_s=t["started"] - t["entered"],
        winddown_s=returned - t["done"],
        metric_columns=list(frame.columns) if frame is not None else [],
    )


def compare_epochs(settings: Settings, arrays: Arrays, repeats: int) -> list[EpochRun]:
    """The loop here, then through Ray Train, ``repeats`` times, one epoch each, same arrays."""
    import ray

    one = with_epochs(settings, 1)
    ref = ray.put(arrays)
    runs = []
    for i in range(repeats):
        plain = plain_epoch(one, arrays)
        run = ray_train_epoch(one, ref, str(i + 1))
        run.plain = plain
        runs.append(run)
        print(
            f"  epoch {i + 1}/{repeats}: plain {plain['epoch_s']:.2f}s, Ray Train worker "
            f"{run.worker['epoch_s']:.2f}s + report {run.worker['report_s']:.2f}s, "
            f"fit() {run.fit_s:.2f}s; {load_note()}",
            flush=True,
        )
    return runs


def median(runs: list[EpochRun], path: str, name: str | None = None) -> float:
    """The median of a field of the runs: ``median(runs, "fit_s")`` or of a path's phase."""
    if name is None:
        return statistics.median(getattr(r, path) for r in runs)
    return statistics.median(getattr(r, path)[name] for r in runs)


def epoch_ratio(runs: list[EpochRun]) -> float:
    """One epoch, its report included, in the Ray Train worker over the same in this process."""
    worker = median(runs, "worker", "epoch_s") + median(runs, "worker", "report_s")
    return worker / (median(runs, "plain", "epoch_s") + median(runs, "plain", "report_s"))


# --- warm-up -----------------------------------------------------------------------------


def warm_up(settings: Settings, data: TrainingData, arrays: Arrays) -> float:
    """Each path once on 1 epoch: worker imports, the MLflow database, Ray Train's actors."""
    import ray

    t0 = time.perf_counter()
    one = with_epochs(settings, 1, trials=settings.tune.max_concurrent)
    plain_epoch(one, arrays)
    run_search(one, data)
    ray_train_epoch(one, ray.put(arrays), "warmup")
    return time.perf_counter() - t0


# --- report ------------------------------------------------------------------------------


def print_search_table(plain: SearchRun, tune: SearchRun, args: argparse.Namespace) -> None:
    ratio = tune.wall_s / plain.wall_s
    head = (
        f"{'search':<34} {'wall s':>7} {'trials':>6} {'wall/trial':>10} "
        f"{'in trial':>8} {'best loss':>11} | {'ratio':>5}"
    )
    print(head)
    print("-" * len(head))
    rows = [
        ("plain Optuna, sequential", plain, 1.0),
        (f"Ray Tune + OptunaSearch, {args.concurrent} at once", tune, ratio),
    ]
    for label, run, r in rows:
        n = len(run.trials)
        print(
            f"{label:<34} {run.wall_s:>7.2f} {n:>6} {run.wall_s / max(n, 1):>10.2f} "
            f"{run.mean_trial_s:>8.2f} {run.best_loss:>11.4e} | {r:>4.2f}x"
        )
    print(
        f"trials: {args.trials} x {args.epochs} epochs of the MLP, early stopping off, 1 torch "
        "thread per trial; in trial: mean seconds inside one trial (Tune: time_total_s)"
    )
    print("ratio: wall seconds / plain Optuna wall seconds")


def print_epoch_table(runs: list[EpochRun]) -> None:
    head = (
        f"{f'one epoch, 1 worker, median of {len(runs)}':<36} {'set-up s':>8} {'epoch s':>7} "
        f"{'report s':>8} {'total s':>7} | {'epoch ratio':>11} {'total ratio':>11}"
    )
    print(head)
    print("-" * len(head))
    plain_total = median(runs, "plain", "total_s")
    for label, path in (
        ("plain train_loop in this process", "plain"),
        ("Ray Train worker", "worker"),
    ):
        setup, epoch, report, total = (
            median(runs, path, k) for k in ("setup_s", "epoch_s", "report_s", "total_s")
        )
        ratio = 1.0 if path == "plain" else epoch_ratio(runs)
        print(
            f"{label:<36} {setup:>8.2f} {epoch:>7.2f} {report:>8.2f} {total:>7.2f} | "
            f"{ratio:>10.2f}x {total / plain_total:>10.2f}x"
        )
    fit = median(runs, "fit_s")
    blank = ""
    print(
        f"{'Ray Train fit() end to end':<36} {blank:>8} {blank:>7} {blank:>8} {fit:>7.2f} | "
        f"{blank:>11} {fit / plain_total:>10.2f}x"
    )
    print(
        "set-up: model, optimizer, validation loader (in a fresh process the first AdamW "
        "imports torch._dynamo); epoch: the training pass, validation, best-state copy;"
    )
    print(
        "report: checkpoint + ray.train.report (a no-op here); epoch ratio: (epoch + report) "
        "over the plain loop's, the figure the 1.15x target applies to"
    )
    print(
        f"fixed cost of fit(): start-up {median(runs, 'startup_s'):.2f}s (fit() -> worker "
        f"function), ray.get of the arrays {median(runs, 'get_s'):.2f}s, set-up "
        f"{median(runs, 'worker', 'setup_s'):.2f}s, wind-down {median(runs, 'winddown_s'):.2f}s "
        "(worker done -> fit() returned)"
    )
    columns = runs[0].metric_columns if runs else []
    timed = [c for c in columns if c.startswith("time_")]
    print(
        "result.metrics_dataframe columns: "
        + (", ".join(columns) or "(none)")
        + ("" if timed else " (no time_this_iter_s: Ray Train V2 records none)")
    )


def verdict(plain: SearchRun, tune: SearchRun, agree: Agreement, runs: list[EpochRun]) -> str:
    tune_ratio = tune.wall_s / plain.wall_s
    epoch = epoch_ratio(runs)
    fit_ratio = median(runs, "fit_s") / median(runs, "plain", "total_s")
    ok = tune_ratio <= TUNE_TARGET and epoch <= TRAIN_TARGET and agree.ok
    ok = ok and tune.failed == 0
    configs = "same configurations" if agree.same_configs else "configurations DIFFER"
    losses = (
        "equal losses"
        if agree.max_loss_rel_diff <= 1e-4
        else f"losses DIFFER (max rel {agree.max_loss_rel_diff:.1e})"
    )
    failed = f"; {tune.failed} Tune trial(s) FAILED" if tune.failed else ""
    return (
        f"{'PASS' if ok else 'FAIL'}: Ray Tune {tune_ratio:.2f}x the plain Optuna wall time "
        f"(target <= {TUNE_TARGET}x); Ray Train epoch {epoch:.2f}x the plain loop "
        f"(target <= {TRAIN_TARGET}x; fit() end to end {fit_ratio:.2f}x); {configs}, "
        f"{losses}{failed}"
    )


# --- entry point -------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tickers", type=int, default=40, help="universe size, SPY included")
    parser.add_argument("--years", type=int, default=12, help="years of daily bars (default 12)")
    parser.add_argument("--trials", type=int, default=8, help="trials in each search (default 8)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of every trial (default 5)")
    parser.add_argument("--concurrent", type=int, default=2, help="Ray Tune trials at once")
    parser.add_argument(
        "--repeats", type=int, default=3, help="1-epoch Ray Train comparisons (default 3)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="quick check: 10 tickers x 6 years, 4 x 2 epochs"
    )
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic universe")
    parser.add_argument("--out", type=Path, default=OUT, help="cache and scratch folder")
    parser.add_argument("--keep", action="store_true", help="keep the data root afterwards")
    args = parser.parse_args()
    if args.smoke:
        args.tickers, args.years, args.trials, args.epochs, args.repeats = 10, 6, 4, 2, 1
    if args.tickers < 2 or args.years < 3:
        parser.error("need at least 2 tickers (SPY and one more) and 3 years")
    if min(args.trials, args.epochs, args.repeats, args.concurrent) < 1:
        parser.error("trials, epochs, repeats and concurrent must be at least 1")
    if args.concurrent > args.num_cpus:
        parser.error("--concurrent trials need as many --num-cpus (1 CPU a trial)")
    args.out = args.out.resolve()
    return args


def main() -> None:
    args = parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(
        f"universe: {args.tickers} tickers x {args.years} years, seed {args.seed}; search: "
        f"{args.trials} trials x {args.epochs} epochs, TPE seed {SEARCH_SEED}, Tune "
        f"{args.concurrent} at once; Ray: local, {args.num_cpus} CPUs; 1 torch thread per "
        f"trial/worker; machine: {os.cpu_count()} cores, {load_note()}"
    )
    folder = write_universe(args.tickers, args.years, args.seed, args.out)
    root = fresh_root(args.out / "roots-tune")
    settings = bench_settings(root, folder, args)
    try:
        with local_ray(args.num_cpus) as start_s:
            data, build_s = build_feature_set(settings)
            fold = data.tune_fold
            arrays = tune_arrays(settings, data)
            print(
                f"Ray started in {start_s:.1f}s; feature set {data.manifest.version} built in "
                f"{build_s:.1f}s: {len(data.columns)} features, tune fold "
                f"{int(fold.train_mask.sum()):,} training / {int(fold.test_mask.sum()):,} "
                "validation rows"
            )
            print(f"warm-up (not timed) {warm_up(settings, data, arrays):.1f}s; {load_note()}")
            plain = run_plain_optuna(settings, data)
            print(
                f"  plain Optuna: {plain.wall_s:.2f}s ({plain.mean_trial_s:.2f}s a trial); "
                f"{load_note()}",
                flush=True,
            )
            tune = run_ray_tune(settings, data)
            print(
                f"  Ray Tune: {tune.wall_s:.2f}s ({tune.mean_trial_s:.2f}s inside a trial); "
                f"{load_note()}",
                flush=True,
            )
            epochs = compare_epochs(settings, arrays, args.repeats)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"after the runs: {load_note()}")
    agree = compare_searches(plain, tune)
    print()
    print_search_table(plain, tune, args)
    print()
    print_trials(plain, tune)
    print()
    print_epoch_table(epochs)
    print()
    print(verdict(plain, tune, agree, epochs))


def print_trials(plain: SearchRun, tune: SearchRun) -> None:
    """Each configuration with both searches' loss and seconds inside the trial."""
    by_key = {_key(t.params): t for t in tune.trials}
    print(f"{'lr':>9} {'hidden':>6} {'dropout':>7} {'w.decay':>9} | plain: loss, s | Tune: loss, s")
    for t in plain.trials:
        p, other = t.params, by_key.get(_key(t.params))
        right = f"{other.best_loss:.6e}, {other.seconds:5.2f}" if other else "(not sampled)"
        print(
            f"{p.get('lr', np.nan):>9.2e} {p.get('hidden_size', 0):>6} "
            f"{p.get('dropout', np.nan):>7.3f} {p.get('weight_decay', np.nan):>9.2e} | "
            f"{t.best_loss:.6e}, {t.seconds:5.2f} | {right}"
        )


if __name__ == "__main__":
    main()
