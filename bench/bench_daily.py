"""Benchmark of the daily incremental run against the full build, at 500 tickers x 20 years.

Why: the pipeline runs every trading day. Its cost on the day after the first must follow
what changed (one new bar per ticker), not the size of the history, or an unattended daily
loop on a large universe spends its time redoing yesterday's work. Three runs of the real
daily pipeline (``run_daily``, the Dagster job ``ray-app pipeline`` runs) on one data root,
measured in one session on a local Ray instance with 2 CPUs:

1. **full build**, from an empty data root: ingest, features, training and registering one
   model version (search off: ``pipeline.search: false``), then the serve refresh;
2. **one new day**: the CSV files gain one session, then the pipeline runs with training held
   back (as ``ray-app replay`` holds it on days that do not retrain): ingest of the new day,
   the new feature set, then the serve refresh;
3. **nothing new**: the same again with no new bar: every asset is up to date, and serving
   has nothing to refresh.

The **serve refresh** is what a running ingress replica does when the feature store's latest
pointer moves (``PredictionService.follow_once``): read the new feature set into memory
(``FeatureTable.load``), have the variant predict its rows (``score_frames``: the rows the
feature set served before holds bit for bit keep their predictions, so after the full build
only the new day's rows are predicted) and keep those predictions as the day's signals
(``write_scores``). It runs in this process with the
registered model loaded beforehand (a variant holds its model already). Serve and HTTP are
left out: their cost does not grow with the data (``bench_serve.py`` measures them).

The universe is ``bench_data.py``'s (the same seeded CSV files, cached under ``bench/out``):
the full build reads them without their last session, which the new day then appends.

Targets (issue 13): the new day at most 10% of the full build's time, the rerun with nothing
new at most 2%. The script exits 0 either way (it is a benchmark).

Run: ``.venv/bin/python bench/bench_daily.py`` (``--smoke``: 20 tickers x 6 years).
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from bench_data import OUT, load_note, local_ray, write_universe

from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.feature_store import latest_feature_version
from ray_app.data.signals import ServedTable, write_scores
from ray_app.orchestration.assets import RELEASE, SEARCH
from ray_app.orchestration.runner import MATERIALIZED, DailyRun, run_daily
from ray_app.registry.versions import load_version, resolve_version
from ray_app.serving.features import FeatureTable
from ray_app.serving.loader import ServedModel
from ray_app.serving.predictor import ColumnSelector, Scored, score_frames

NEW_DAY_TARGET = 0.10
NOTHING_NEW_TARGET = 0.02
HELD = {SEARCH.to_user_string(), RELEASE.to_user_string()}


# --- the universe, one session short ------------------------------------------------------


def split_last_session(universe: Path, into: Path) -> dict[Path, str]:
    """Copy every CSV of ``universe`` into ``into`` without its last line; return, per copy,
    the line it lacks (the new day)."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    held: dict[Path, str] = {}
    for path in sorted(universe.glob("*.csv")):
        lines = path.read_text().splitlines(keepends=True)
        target = into / path.name
        target.write_text("".join(lines[:-1]))
        held[target] = lines[-1]
    return held


def append_new_day(held: dict[Path, str]) -> None:
    """The source publishes the session it held back: each file gains its last line."""
    for path, line in held.items():
        with path.open("a") as handle:
            handle.write(line)


# --- one run --------------------------------------------------------------------------------


@dataclass
class Step:
    """One pipeline run and the serve refresh after it."""

    name: str
    pipeline_s: float
    refresh_s: float
    run: DailyRun

    @property
    def seconds(self) -> float:
        return self.pipeline_s + self.refresh_s

    def assets(self) -> str:
        ran = [a for a in self.run.assets if a.status == MATERIALIZED]
        return ", ".join(f"{a.name} {a.seconds:.1f}s" for a in ran) or "none materialised"


class Refresher:
    """The serve refresh of one variant serving ``version``: what it last served, and the
    model it holds."""

    def __init__(self, settings: Settings, version: int) -> None:
        self.settings = settings
        self.model = ServedModel(
            settings.mlflow.model_name, version, load_version(settings, version)
        )
        self.served: str | None = None
        self.previous: dict[str, Scored] = {}

    def __call__(self) -> float:
        """Seconds to follow the latest feature set (0 work when it is the one served)."""
        t0 = time.perf_counter()
        latest = latest_feature_version(DataRoot(self.settings.data_root))
        if latest is not None and latest != self.served:
            table = FeatureTable.load(self.settings, latest)
            select = ColumnSelector(self.model.columns)
            preds = score_frames(
                self.model, select, tuple(table.columns), table.frames, self.previous
            )
            frames = {t: (table.frames[t][0], preds[t]) for t in table.frames}
            self.previous = {t: Scored(*table.frames[t], preds[t]) for t in table.frames}
            served = ServedTable("champion", self.model.name, str(self.model.version), latest)
            write_scores(DataRoot(self.settings.data_root), served, frames, self.model.digest)
            self.served = latest
        return time.perf_counter() - t0


def pipeline(name: str, settings: Settings, hold: set[str]) -> tuple[float, DailyRun]:
    t0 = time.perf_counter()
    run = run_daily(settings, hold=hold)
    seconds = time.perf_counter() - t0
    if run.failed:
        failed = [f"{a.name}: {a.detail}" for a in run.assets if a.status != MATERIALIZED]
        raise SystemExit(f"{name}: the pipeline failed: {'; '.join(failed)}")
    return seconds, run


# --- entry point ----------------------------------------------------------------------------


def settings_for(root: Path, folder: Path, num_cpus: int) -> Settings:
    return Settings(
        data_root=str(root),
        ingest={"source": "csv", "path": folder, "exchange": "XNYS"},
        ray={"num_cpus": num_cpus},
        pipeline={"search": False, "deploy": False},
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tickers", type=int, default=500, help="SPY included (default 500)")
    parser.add_argument("--years", type=int, default=20, help="years of daily bars (default 20)")
    parser.add_argument("--smoke", action="store_true", help="quick check: 20 tickers x 6 years")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic universe")
    parser.add_argument("--out", type=Path, default=OUT, help="cache and scratch folder")
    args = parser.parse_args()
    if args.smoke:
        args.tickers, args.years = 20, 6
    args.out = args.out.resolve()
    return args


def report(steps: list[Step]) -> None:
    full = steps[0].seconds
    head = f"{'run':<12} | {'pipeline s':>10} {'refresh s':>9} {'total s':>8} {'of full':>7}"
    head += " | assets materialised"
    print(head)
    print("-" * len(head))
    for s in steps:
        print(
            f"{s.name:<12} | {s.pipeline_s:>10.1f} {s.refresh_s:>9.2f} {s.seconds:>8.1f} "
            f"{s.seconds / full:>7.1%} | {s.assets()}"
        )
    new_day, nothing = steps[1].seconds / full, steps[2].seconds / full
    ok = new_day <= NEW_DAY_TARGET and nothing <= NOTHING_NEW_TARGET
    print()
    print(
        f"{'PASS' if ok else 'FAIL'}: one new day {new_day:.1%} of the full build (target <= "
        f"{NEW_DAY_TARGET:.0%}), nothing new {nothing:.1%} (target <= {NOTHING_NEW_TARGET:.0%})"
    )


def main() -> None:
    args = parse_args()
    print(
        f"universe: {args.tickers} tickers x {args.years} years, seed {args.seed}; Ray: local, "
        f"{args.num_cpus} CPUs; machine: {load_note()}"
    )
    universe = write_universe(args.tickers, args.years, args.seed, args.out)
    scratch = args.out / "daily"
    held = split_last_session(universe, scratch / "source")
    root = scratch / "root"
    shutil.rmtree(root, ignore_errors=True)
    settings = settings_for(root, scratch / "source", args.num_cpus)
    steps = []
    with local_ray(args.num_cpus):
        seconds, run = pipeline("full build", settings, set())
        version = resolve_version(settings, str(run_version(run)))
        refresh = Refresher(settings, version)
        steps.append(Step("full build", seconds, refresh(), run))
        append_new_day(held)
        seconds, run = pipeline("one new day", settings, HELD)
        steps.append(Step("one new day", seconds, refresh(), run))
        seconds, run = pipeline("nothing new", settings, HELD)
        steps.append(Step("nothing new", seconds, refresh(), run))
    print(f"after the runs: {load_note()}")
    print()
    report(steps)


def run_version(run: DailyRun) -> str:
    """The model version the full build's release registered (its data version)."""
    (release,) = [a for a in run.assets if a.name == RELEASE.to_user_string()]
    return release.version


if __name__ == "__main__":
    main()
