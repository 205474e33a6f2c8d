"""The ``ray-app`` command line: one command per stage, progress bars, summary tables.

Errors a user can fix are printed as one line naming the bad value and exit with status 2;
a stage that ran but left tickers failed exits with status 1.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ray_app.core import logs
from ray_app.core.api_keys import Role
from ray_app.core.errors import RayAppError
from ray_app.core.secrets import Secrets, redact_uris, redact_url
from ray_app.core.settings import CONFIG_ENV, Settings, load_settings
from ray_app.models import family_names

if TYPE_CHECKING:
    from ray_app.ops.backup import BackupManifest

app = typer.Typer(
    help=__doc__, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False
)
data_app = typer.Typer(help="Inspect stored data and feature sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

# Wide tables when piped (CI logs, `| less`); the terminal's width otherwise. Markup is off:
# tickers, file names and error text are printed as they are (a ticker "[/x]" would
# otherwise be read as a closing tag and crash the command after its work is done);
# colour comes only from ``styled`` and ``Text`` styles.
out = Console(width=None if sys.stdout.isatty() else 160, markup=False)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160, markup=False)


# The command line's choices of model family: the modules of ray_app/models/families.
FamilyName = enum.Enum("FamilyName", {name: name for name in family_names()}, type=str)  # type: ignore[misc]


def styled(style: str, label: str, rest: str = "") -> Text:
    """``label`` in ``style`` followed by plain ``rest``: user data is never markup."""
    return Text.assemble((label, style), rest)


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", envvar=CONFIG_ENV, help="YAML settings file (env: RAY_APP_* overrides it)"
    ),
]
DataRootOption = Annotated[
    str | None,
    typer.Option("--data-root", help="Data folder or URI (s3://...); env RAY_APP_DATA_ROOT"),
]
AllowPartialOption = Annotated[
    bool | None,
    typer.Option(help="Exit 0 even when some tickers failed (default: ingest.allow_partial)"),
]


def _settings(config: Path | None, **overrides: Any) -> Settings:
    return load_settings(config, **overrides)


def parse_tickers(values: list[str] | None) -> list[str] | None:
    """Tickers from ``--tickers``: comma lists, or files of tickers (``@file``, or a value that
    looks like a path: with a folder part or a .txt/.csv/.lst suffix)."""
    if not values:
        return None
    found: list[str] = []
    for value in values:
        path = Path(value[1:] if value.startswith("@") else value)
        looks_like_file = "/" in value or path.suffix.lower() in {".txt", ".csv", ".lst"}
        if value.startswith("@") or looks_like_file:
            if not path.is_file():
                raise RayAppError(f"--tickers {value}: no such file, and not a ticker either")
            text = path.read_text(encoding="utf-8")
            found += [
                t
                for line in text.splitlines()
                for t in line.split("#")[0].replace(",", " ").split()
            ]
        else:
            found += [t for t in value.replace(",", " ").split()]
    return [t.upper() for t in found]


@contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[dict[str, Any]], None]]:
    with Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda row: progress.update(task, advance=1, description=f"{label} {row['ticker']}")


def _ticker_table(title: str, rows: list[dict[str, Any]], extra: list[str]) -> Table:
    table = Table(title=title)
    for column in [
        "ticker",
        "status",
        "rows",
        *extra,
        "first_date",
        "last_date",
        "reason / warnings",
    ]:
        table.add_column(
            column, justify="right" if column in ("rows", "new_rows", "training_rows") else "left"
        )
    colours = {"failed": "red", "ok": "green"}
    for row in rows:
        note = row.get("reason") or row.get("warnings", "")
        status = Text(row["status"], style=colours.get(row["status"], "cyan"))
        table.add_row(
            row["ticker"],
            status,
            str(row["rows"]),
            *(str(row[c]) for c in extra),
            row["first_date"],
            row["last_date"],
            note,
        )
    return table


@app.command()
def ingest(
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    source: Annotated[
        Literal["sample", "csv", "yahoo"] | None,
        typer.Option(help="Where bars come from (default: ingest.source)"),
    ] = None,
    path: Annotated[
        Path | None, typer.Option(help="Folder of per-ticker files (--source csv)")
    ] = None,
    tickers: Annotated[
        list[str] | None,
        typer.Option(help="Tickers: AAPL,MSFT or a file of them (@file); repeatable"),
    ] = None,
    start: Annotated[
        dt.datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="First date, inclusive (YYYY-MM-DD)"),
    ] = None,
    end: Annotated[
        dt.datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="Last date, inclusive (default: today)"),
    ] = None,
    bad_rows: Annotated[
        Literal["drop", "fail"] | None,
        typer.Option(help="Drop invalid bars or fail the ticker (default: ingest.bad_rows)"),
    ] = None,
    allow_partial: AllowPartialOption = None,
    full_refresh: Annotated[
        bool, typer.Option(help="Refetch all history, not only new bars and the overlap")
    ] = False,
) -> None:
    """Fetch, validate and store daily bars per ticker, in parallel on Ray.

    Prints a per-ticker table (status, rows, new rows, date range, reason or warnings) and the
    data version, marked new or unchanged.

    A ticker file holds tickers separated by spaces, commas or new lines; # starts a comment.
    A value that contains / or ends in .txt, .csv or .lst is read as a file even without @.
    """
    from ray_app.data.ingest import run_ingest
    from ray_app.data.sources import make_source
    from ray_app.ops.runtime import connect

    settings = _settings(
        config,
        data_root=data_root,
        ingest__source=source,
        ingest__path=path,
        ingest__tickers=parse_tickers(tickers),
        ingest__start=start.date() if start else None,
        ingest__end=end.date() if end else None,
        ingest__bad_rows=bad_rows,
        ingest__allow_partial=allow_partial,
    )
    chosen = make_source(settings.ingest)
    connect(settings)
    n = len(settings.ingest.tickers or chosen.list_tickers())
    with _progress("ingest", n) as advance:
        result = run_ingest(settings, full_refresh=full_refresh, source=chosen, on_row=advance)
    out.print(_ticker_table(f"ingest from {chosen.name}", result.rows, ["new_rows"]))
    version = result.version or "none"
    out.print(
        Text.assemble(
            "data version ",
            (version, "bold"),
            f" ({'new' if result.changed else 'unchanged'}) under {settings.data_root}",
        )
    )
    if result.failed:
        err.print(
            styled(
                "red",
                f"{len(result.failed)} of {len(result.rows)} ticker(s) failed: ",
                ", ".join(result.failed),
            )
        )
        if not settings.ingest.allow_partial:
            raise typer.Exit(1)


@app.command()
def features(
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    data_version: Annotated[
        str | None, typer.Option(help="Raw data version (default: the latest)")
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even when the feature set exists")] = False,
    allow_partial: AllowPartialOption = None,
) -> None:
    """Compute the point-in-time feature set of a data version with Ray Data.

    Prints a per-ticker table (status, rows, training rows, date range, reason) and the feature
    version, or that the set is up to date. With online.backend redis it also loads the set
    into Redis. The feature spec is set only through configuration (features.*).
    """
    from ray_app.data.feature_store import build_features, plan_build
    from ray_app.data.online import materialize_redis
    from ray_app.ops.runtime import connect

    settings = _settings(config, data_root=data_root, ingest__allow_partial=allow_partial)
    plan = plan_build(settings, data_version)
    connect(settings)
    with _progress("features", len(plan.raw.tickers)) as advance:
        build = build_features(settings, data_version=data_version, force=force, on_row=advance)
    if build.reused:
        out.print(
            Text.assemble(
                "feature set ",
                (build.version, "bold"),
                f" is up to date (data version {build.data_version})",
            )
        )
    else:
        out.print(
            _ticker_table(
                f"features of data version {build.data_version}", build.rows, ["training_rows"]
            )
        )
        out.print(
            Text.assemble(
                "feature set ",
                (build.version, "bold"),
                f": {build.manifest.rows} rows, "
                f"{len(build.manifest.columns)} features at {build.manifest.path}",
            )
        )
    if settings.online.backend == "redis":
        written = materialize_redis(settings, build.version)
        out.print(
            f"online store: {written} rows in Redis at {redact_url(settings.online.redis_url)}"
        )
    if build.failed and not settings.ingest.allow_partial:
        err.print(styled("red", f"{len(build.failed)} ticker(s) failed: ", ", ".join(build.failed)))
        raise typer.Exit(1)


@data_app.command("status")
def data_status_command(
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables")] = False,
) -> None:
    """Raw data and feature set versions, paths, tickers, date ranges, rows and freshness.

    Shows the latest raw data version, every older one kept (any whose bars were overwritten
    before versions were kept is marked unreadable) and every complete feature set: versions,
    ticker counts, rows, first and last date, days since the last bar, paths. A feature set
    is marked (latest) when _latest.json points at it and (stale) when it was built from
    another data version than the current one. With --json: {"data_root", "raw",
    "raw_versions", "features"}, where raw is null before the first ingest. It does not start
    Ray.
    """
    from ray_app.data.catalog import data_status

    status = data_status(_settings(config, data_root=data_root))
    if as_json:
        print(json.dumps(status, indent=2))
        return
    raw = status["raw"]
    if raw is None:
        out.print(f"no data under {status['data_root']}: run `ray-app ingest`")
        return
    table = Table(title=f"data under {status['data_root']}")
    for column in ("kind", "version", "tickers", "rows", "first", "last", "age (days)", "path"):
        table.add_column(column)
    table.add_row(
        "raw",
        raw["version"],
        str(len(raw["tickers"])),
        str(raw["rows"]),
        raw["first_date"],
        raw["last_date"],
        str(raw["days_since_last_bar"]),
        raw["path"],
    )
    for kept in status["raw_versions"]:
        if kept["latest"]:
            continue
        mark = f" (unreadable: {', '.join(kept['unreadable'])})" if kept["unreadable"] else ""
        table.add_row(
            f"raw (older){mark}",
            kept["version"],
            str(kept["tickers"]),
            str(kept["rows"]),
            "",
            kept["last_date"],
            "",
            "",
        )
    for fs in status["features"]:
        kind = (
            "features"
            + (" (latest)" if fs["latest"] else "")
            + ("" if fs["current"] else " (stale)")
        )
        table.add_row(
            kind,
            fs["version"],
            str(len(fs["tickers"])),
            str(fs["rows"]),
            fs["first_date"],
            fs["last_date"],
            str(fs["days_since_last_row"]),
            fs["path"],
        )
    out.print(table)


@data_app.command("pin")
def data_pin(
    version: Annotated[str, typer.Argument(help="Raw data version to keep")],
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    note: Annotated[str, typer.Option(help="Why it is kept (shown by data gc)")] = "",
) -> None:
    """Keep a data version (and its feature sets) through every `data gc`, until unpinned.

    Pins live in <data_root>/_pins.json. The version must exist. It does not start Ray.
    """
    from ray_app.core.storage import DataRoot
    from ray_app.data.retention import pin

    root = DataRoot(_settings(config, data_root=data_root).data_root)
    pins = pin(root, version, note)
    out.print(f"pinned data version {version}; pinned now: {', '.join(sorted(pins.versions))}")


@data_app.command("unpin")
def data_unpin(
    version: Annotated[str, typer.Argument(help="Pinned raw data version")],
    config: ConfigOption = None,
    data_root: DataRootOption = None,
) -> None:
    """Let `data gc` remove a data version again once it is old and unprotected."""
    from ray_app.core.storage import DataRoot
    from ray_app.data.retention import unpin

    root = DataRoot(_settings(config, data_root=data_root).data_root)
    pins = unpin(root, version)
    out.print(
        f"unpinned data version {version}; pinned now: {', '.join(sorted(pins.versions)) or 'none'}"
    )


@data_app.command("gc")
def data_gc(
    keep: Annotated[
        int, typer.Option(min=0, help="How many of the newest raw data versions to keep")
    ],
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only print what would be removed")
    ] = False,
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray dashboard URL, to read the feature set the cluster serves (default: "
            "RAY_DASHBOARD_ADDRESS, else http://localhost:8265; none answering: none served)"
        ),
    ] = None,
) -> None:
    """Remove old raw data versions, their feature sets and the partitions no kept version names.

    Keeps the --keep newest raw versions and, whatever their age, the latest, every pinned one
    (`data pin`), every one a registered model version's lineage names (data_version or
    feature_version tag; a registry that cannot be read refuses the gc) and the one serving
    reads (the feature version pinned in the running Serve config or in pipeline.serve_config,
    and the latest feature set). A feature set goes with its data version. Runs under the data
    root's raw-manifest lock, so no ingest records a version meanwhile. Prints every version
    kept with why, and what went. It does not start Ray.
    """
    from ray_app.ops.data_gc import run_gc

    settings = _settings(config, data_root=data_root)
    run = run_gc(settings, keep, dry_run=dry_run, address=address)
    plan = run.plan
    gone = "would remove" if dry_run else "removed"
    for version, reasons in plan.kept.items():
        out.print(f"kept {version}: {'; '.join(reasons)}", soft_wrap=True)
    for version in plan.removed:
        out.print(f"{gone} {version}", soft_wrap=True)
    for feature in plan.removed_features:
        out.print(f"{gone} feature set {feature}", soft_wrap=True)
    out.print(
        f"{'dry run: ' if dry_run else ''}{len(plan.kept)} data version(s) kept, "
        f"{len(plan.removed)} {gone}; {len(plan.kept_features)} feature set(s) kept, "
        f"{len(plan.removed_features)} {gone}; {len(plan.removed_files)} partition file(s) "
        f"{gone} ({plan.removed_bytes / 1e6:.1f} MB), {plan.kept_files} kept",
        soft_wrap=True,
    )


@data_app.command("export")
def data_export(
    version: Annotated[str, typer.Argument(help="Raw data version to export")],
    dvc: Annotated[
        Path,
        typer.Option(
            "--dvc",
            help="Destination folder, laid out as a data root; `dvc add` runs on it when it "
            "lies in a DVC repository",
        ),
    ],
    config: ConfigOption = None,
    data_root: DataRootOption = None,
) -> None:
    """Copy one data version (manifest, partitions, its feature sets) out of the data root.

    The copy is a data root of its own (`ray-app data status --data-root DEST` reads it), its
    latest pointers on the exported version; exporting another version into DEST adds it.
    Inside a DVC repository it ends with `dvc add DEST`: commit DEST.dvc with git and
    `dvc push`. DVC never owns the live data root: a DEST inside it is refused.
    """
    from ray_app.core.storage import DataRoot
    from ray_app.data.export import export_version

    root = DataRoot(_settings(config, data_root=data_root).data_root)
    done = export_version(root, version, dvc)
    sets = ", ".join(done.feature_versions) or "none"
    out.print(
        f"exported data version {done.version} ({done.files} files, {done.bytes / 1e6:.1f} MB; "
        f"feature sets: {sets}) to {done.dest}",
        soft_wrap=True,
    )
    if done.dvc_file:
        out.print(f"dvc add: {done.dvc_file}; commit it with git, then `dvc push`", soft_wrap=True)


@app.command()
def migrate(
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only print what would be upgraded")
    ] = False,
) -> None:
    """Upgrade the data root's manifests in place to the schema version this ray-app reads.

    Commands refuse a data root written by an older ray-app and name this command. Every raw
    and feature manifest is upgraded and checked before any is written, then each file is
    replaced atomically; a second run changes nothing and says so. It does not start Ray.
    From schema version 1, each ticker's bars.parquet moves to its content-addressed name;
    older data versions whose bars it overwrote are listed as unreadable.
    """
    from ray_app.data.manifests import SCHEMA_VERSION
    from ray_app.data.migrate import migrate as migrate_root

    done = migrate_root(_settings(config, data_root=data_root).data_root, dry_run=dry_run)
    verb = "would upgrade" if dry_run else "upgraded"
    for change in done.upgraded:
        found = "unversioned" if change.from_version is None else f"v{change.from_version}"
        out.print(f"{verb} {change.path}: {found} -> v{SCHEMA_VERSION}", soft_wrap=True)
    for moved in done.moved:
        action = "would move" if dry_run else "moved"
        out.print(f"{action} {moved} to its content-addressed name", soft_wrap=True)
    for version, tickers in sorted(done.unreadable.items()):
        out.print(
            f"data version {version}: the bars of {', '.join(tickers)} were overwritten by a "
            "later ingest; it stays listed but cannot be read or rebuilt",
            soft_wrap=True,
        )
    if not done.changed:
        out.print(
            f"data root {done.data_root} is up to date: {done.current} manifest(s) at schema "
            f"version {SCHEMA_VERSION}, nothing changed",
            soft_wrap=True,
        )
        return
    out.print(
        f"{len(done.upgraded)} manifest(s) {verb} to schema version {SCHEMA_VERSION}, "
        f"{done.current} already current, under {done.data_root}",
        soft_wrap=True,
    )


FeatureVersionOption = Annotated[
    str | None, typer.Option(help="Feature set version (default: the latest built)")
]


# The columns of a report's tables: ranking skill and its significance, the Sharpe after costs
# of the quantile and the top-k books, and the point error (none for a factor, which only ranks).
REPORT_COLUMNS = (
    "rank_ic",
    "rank_icir",
    "rank_ic_t",
    "pearson_ic",
    "sharpe",
    "top_k_sharpe",
    "rmse",
)


def _predictor_table(title: str, by_name: dict[str, dict[str, float | None]]) -> Table:
    """One row per predictor (model, baselines, factors) of a report scope."""
    table = Table(title=title)
    table.add_column("predictor")
    for column in REPORT_COLUMNS:
        table.add_column(column, justify="right")
    for name, values in by_name.items():
        cells = (values.get(k) for k in REPORT_COLUMNS)
        table.add_row(name, *("-" if v is None else f"{v:.4g}" for v in cells))
    return table


def _release_summary(release: Any) -> None:
    """The holdout table and the gate's verdict of a release."""
    holdout = release.report["metrics"].get("holdout", {})
    out.print(_predictor_table(f"holdout: model v{release.version} against the baselines", holdout))
    for warning in release.report.get("warnings", []):
        err.print(
            styled("yellow", "warning: ", str(warning.get("message", warning))), soft_wrap=True
        )
    if release.promoted:
        out.print(styled("green", "promoted", f": version {release.version} is the champion"))
    else:
        out.print(
            styled("yellow", "kept the champion", f": version {release.version} stays challenger")
        )
        for reason in release.decision.reasons:
            out.print(f"  - {reason}", soft_wrap=True)
    if release.champion_note:
        out.print(f"  note: {release.champion_note}", soft_wrap=True)
    out.print(f"MLflow run {release.run_id}")


def _epoch_printer(label: str) -> Callable[[dict[str, Any]], None]:
    def show(row: dict[str, Any]) -> None:
        err.print(
            f"{label} epoch {int(row['epoch'])}: train_loss {row['train_loss']:.3e} "
            f"val_loss {row['val_loss']:.3e}",
            highlight=False,
        )

    return show


@app.command()
def train(
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    feature_version: FeatureVersionOption = None,
    model: Annotated[
        FamilyName | None, typer.Option(help="Model family (default: train.model)")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Ray Train workers (default: train.num_workers)")
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(min=1, help="Torch families: maximum epochs (default: train.hparams.epochs)"),
    ] = None,
) -> None:
    """Train with Ray Train, evaluate walk-forward, register the challenger, apply the gate.

    Prints each epoch's losses, the holdout table (model, baselines and factors: rank IC, its
    ICIR and t-statistic, Pearson IC, the long-short and top-k Sharpe after costs, RMSE), any
    leak warning, the gate's verdict and the MLflow run id.
    """
    from ray_app.models.families import check_settings
    from ray_app.ops.runtime import connect
    from ray_app.training.release import train_and_release

    settings = _settings(
        config,
        data_root=data_root,
        train__model=model.value if model else None,
        train__num_workers=workers,
        train__hparams__epochs=epochs,
    )
    check_settings(settings)
    connect(settings)
    release = train_and_release(
        settings, feature_version=feature_version, on_epoch=_epoch_printer("train")
    )
    _release_summary(release)


@app.command()
def tune(
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    feature_version: FeatureVersionOption = None,
    samples: Annotated[
        int | None, typer.Option(min=1, help="Trials (default: tune.num_samples)")
    ] = None,
    resume: Annotated[
        str | None, typer.Option(help="Finish the interrupted search of this name")
    ] = None,
    release: Annotated[
        bool, typer.Option(help="Train the best trial's model and register it")
    ] = True,
) -> None:
    """Search hyperparameters with Ray Tune + Optuna, then release the best configuration.

    Prints the search name first (what --resume takes), then the ten best trials, the number
    of failed trials and the best hyperparameters, then (with --release) the release summary
    of train.
    """
    from ray_app.ops.runtime import connect
    from ray_app.training.release import train_and_release
    from ray_app.training.train import load_training_data
    from ray_app.training.tune import check_space, new_search_name, run_search

    settings = _settings(config, data_root=data_root, tune__num_samples=samples)
    check_space(settings)
    connect(settings)
    data = load_training_data(settings, feature_version)
    name = resume or new_search_name(data)
    err.print(
        f"search {name}: {settings.tune.num_samples} trial(s), "
        f"{settings.tune.max_concurrent} at a time (if interrupted: --resume {name})"
    )
    outcome = run_search(settings, data, name=name, resume=resume is not None)
    table = Table(title=f"search {outcome.name} (best first)")
    columns = [c for c in outcome.trials.columns if c.startswith("config/")]
    for column in ("trial_id", *columns, "best_val_loss", "best_epoch"):
        table.add_column(column.removeprefix("config/"))
    for row in outcome.trials.sort_values("best_val_loss").head(10).to_dict("records"):
        table.add_row(
            *(
                str(row[c]) if not isinstance(row[c], float) else f"{row[c]:.4g}"
                for c in ("trial_id", *columns, "best_val_loss", "best_epoch")
            )
        )
    out.print(table)
    out.print(
        f"{outcome.failed} trial(s) failed; best val_loss {outcome.best_val_loss:.4e} "
        f"with {outcome.best.kind} {outcome.best.hparams.model_dump()}",
        soft_wrap=True,
    )
    if release:
        tags = {"search": outcome.name, "search_run_id": outcome.parent_run_id}
        done = train_and_release(
            settings,
            feature_version=data.manifest.version,
            model=outcome.best,
            origin="tune",
            extra_tags=tags,
            on_epoch=_epoch_printer("final"),
        )
        _release_summary(done)


@app.command()
def evaluate(
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    version: Annotated[str, typer.Option(help="Model version or alias")] = "champion",
    feature_version: Annotated[
        str | None,
        typer.Option(help="Feature set version (default: the one the model was trained on)"),
    ] = None,
    report_dir: Annotated[
        Path | None, typer.Option(help="Also write report.json, report.md and the plots here")
    ] = None,
) -> None:
    """Evaluate a registered model walk-forward and on the holdout against the baselines.

    Runs in a new MLflow run (evaluate-vN) and prints the walk-forward and holdout tables and
    any leak warning. The registry is not changed.
    """
    from ray_app.ops.runtime import connect
    from ray_app.training.evaluate import write_report
    from ray_app.training.release import evaluate_version

    settings = _settings(config, data_root=data_root)
    connect(settings)
    report = evaluate_version(settings, version, feature_version)
    if report_dir:
        for path in write_report(report, report_dir):
            out.print(f"wrote {path}")
    for scope in ("walk_forward", "holdout"):
        out.print(_predictor_table(f"{scope}: model {version}", report["metrics"].get(scope, {})))
    for warning in report.get("warnings", []):
        err.print(
            styled("yellow", "warning: ", str(warning.get("message", warning))), soft_wrap=True
        )


models_app = typer.Typer()
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
def models(
    context: typer.Context,
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """Registered model versions with their aliases, lineage and holdout metrics.

    A table of every version with its aliases, creation time, feature version and holdout rank
    IC, Sharpe and RMSE. With --json, per version: version, aliases, run_id, created, lineage,
    holdout. `ray-app models verify` checks the versions' files against their recorded hashes.
    """
    from ray_app.registry.versions import list_versions

    if context.invoked_subcommand is not None:
        return
    settings = _settings(config, data_root=data_root)
    rows = list_versions(settings)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        out.print(f"no versions of {settings.mlflow.model_name!r} yet: run `ray-app train`")
        return
    table = Table(title=f"registered model {settings.mlflow.model_name}")
    for column in ("version", "aliases", "created", "feature_version", "rank_ic", "sharpe", "rmse"):
        table.add_column(column)
    for row in rows:
        hold = row["holdout"]
        table.add_row(
            str(row["version"]),
            ", ".join(row["aliases"]),
            row["created"],
            row["lineage"].get("feature_version", ""),
            *(f"{hold[k]:.4g}" if k in hold else "-" for k in ("rank_ic", "sharpe", "rmse")),
        )
    out.print(table)


@models_app.command("verify")
def models_verify(
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    backfill: Annotated[
        bool,
        typer.Option(
            help="Record the files' hashes for versions registered before hashes were recorded "
            "(trusts their files as they are now; each one goes to the audit trail)"
        ),
    ] = False,
    actor: ActorOption = None,
) -> None:
    """Check every version's model files against the sha256 hashes recorded at registration.

    Serving refuses a version whose files do not match, or that has no hashes. Exits 1 when a
    version does not match or, without --backfill, has no hashes.
    """
    from ray_app.registry.versions import verify_versions

    settings = _settings(config, data_root=data_root)
    checks = verify_versions(settings, backfill, _actor(actor))
    colours = {"ok": "green", "backfilled": "cyan"}
    for check in checks:
        label = f"version {check.version}: {check.status}"
        note = f" ({check.detail})" if check.detail else ""
        out.print(styled(colours.get(check.status, "red"), label, note), soft_wrap=True)
    if any(check.status in ("mismatch", "untagged") for check in checks):
        raise typer.Exit(1)


def _actor(claimed: str | None = None) -> str:
    from ray_app.registry.audit import checked_actor

    return checked_actor(claimed)


ActorOption = Annotated[
    str | None,
    typer.Option(
        help="Who acts, recorded in the audit trail; must be the OS user running the command "
        "(default: that user, read from the process's uid, not from LOGNAME)"
    ),
]


@app.command("promote")
def promote_command(
    version: Annotated[int, typer.Option(help="Model version to make champion")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log)")],
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    actor: ActorOption = None,
) -> None:
    """Make a version the champion by hand (recorded with who, when and why).

    The actor recorded is the OS user.
    """
    from ray_app.registry.versions import promote

    settings = _settings(config, data_root=data_root)
    promote(settings, version, _actor(actor), reason)
    out.print(f"version {version} of {settings.mlflow.model_name} is the champion")


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log)")],
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    actor: ActorOption = None,
) -> None:
    """Point the champion back at the previous champion.

    Repeated rollbacks walk further back through the promotions. The actor recorded is the OS
    user.
    """
    from ray_app.registry.versions import rollback as roll_back

    settings = _settings(config, data_root=data_root)
    restored = roll_back(settings, _actor(actor), reason)
    out.print(f"rolled back: version {restored} of {settings.mlflow.model_name} is the champion")


@app.command()
def pipeline(
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    force: Annotated[
        bool, typer.Option(help="Materialise every asset, even those up to date")
    ] = False,
    calendar: Annotated[
        bool,
        typer.Option(
            help="End at once with 'market closed' when today (pipeline.timezone) is no "
            "session of ingest.exchange, as the daily schedule does (the RayCronJob passes it)"
        ),
    ] = False,
) -> None:
    """The daily pipeline: the stale Dagster assets (raw bars, feature set, search, model
    release, deployment), materialised in this process on the connected Ray cluster.

    Dagster's data versions decide what is stale; nothing stale, nothing runs. Prints each
    asset (status, seconds, data version, summary) and each asset check; exits 1 when an
    asset failed.
    """
    from ray_app.ops.runtime import connect
    from ray_app.orchestration.definitions import market_closed
    from ray_app.orchestration.runner import FAILED, MATERIALIZED, NOT_RUN, run_daily, today

    settings = _settings(config, data_root=data_root)
    if calendar and (closed := market_closed(settings, today(settings))):
        out.print(closed)
        return
    connect(settings)

    def wait(holder: str) -> None:
        err.print(
            f"another pipeline runs on {settings.data_root}: {holder}; waiting up to "
            f"{settings.pipeline.lock_timeout_s:g} s (pipeline.lock_timeout_s)",
            soft_wrap=True,
        )

    run = run_daily(settings, force=force, on_wait=wait)
    colours = {MATERIALIZED: "green", FAILED: "red", NOT_RUN: "red"}
    for asset in run.assets:
        line = f" ({asset.seconds:.1f}s) {asset.detail} [{asset.reason}]" if asset.reason else ""
        err.print(
            styled(colours.get(asset.status, "cyan"), f"{asset.name}: {asset.status}", line),
            soft_wrap=True,
        )
    table = Table(title=f"pipeline (Dagster run {run.run_id})" if run.run_id else "pipeline")
    for column in ("asset", "status", "seconds", "data version", "summary"):
        table.add_column(column)
    for asset in run.assets:
        table.add_row(asset.name, asset.status, f"{asset.seconds:.1f}", asset.version, asset.detail)
    out.print(table)
    for check in run.checks:
        verdict = "passed" if check.passed else f"failed ({check.severity})"
        out.print(f"check {check.asset}.{check.name}: {verdict}")
    if not run.materialized():
        out.print("every asset is up to date: nothing to materialise")
    if run.failed:
        raise typer.Exit(1)


@app.command()
def signals(
    date: Annotated[
        str,
        typer.Option(
            "--date", help="The day (YYYY-MM-DD): each ticker's newest row on or before it"
        ),
    ],
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="Export to this file (.parquet or .csv) instead of printing"),
    ] = None,
    variant: Annotated[
        list[str] | None, typer.Option(help="Only this variant (repeatable); default: all")
    ] = None,
) -> None:
    """A day's predictions for every ticker from the served variants, as one table.

    Read from the tables the variants precomputed (what /v1/predict with as_of answers):
    ticker, feature date, predicted return, rank within the variant (1: highest), model
    name and version, variant. Also kept under <data_root>/signals/daily/.
    """
    import datetime as dt

    from ray_app.core.storage import DataRoot
    from ray_app.data.signals import daily_signals, write_daily

    try:
        day = dt.date.fromisoformat(date)
    except ValueError:
        raise RayAppError(f"--date {date!r} is not a date (YYYY-MM-DD)") from None
    if out_file is not None and out_file.suffix not in (".parquet", ".csv"):
        raise RayAppError(f"--out {out_file}: name a .parquet or .csv file")
    root = DataRoot(_settings(config, data_root=data_root).data_root)
    frame = daily_signals(root, day, variant or None)
    kept = write_daily(root, day, frame)
    if out_file is None:
        table = Table(title=f"signals as of {day} ({len(frame)} rows; kept in {kept})")
        for column in frame.columns:
            table.add_column(column)
        for row in frame.astype(str).itertuples(index=False):
            table.add_row(*row)
        out.print(table)
        return
    out_file.parent.mkdir(parents=True, exist_ok=True)
    if out_file.suffix == ".csv":
        frame.to_csv(out_file, index=False)
    else:
        frame.to_parquet(out_file, index=False)
    out.print(f"{len(frame)} signal(s) as of {day} written to {out_file} (kept in {kept})")


@app.command()
def monitor(
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    mlflow: Annotated[
        bool, typer.Option(help="Log the new days onto each model version's MLflow run")
    ] = True,
) -> None:
    """Score the logged predictions against the realised next-day returns.

    Joins the prediction log with the returns of the ingested bars and writes, per variant,
    model version and day (and over the trailing 20 and 60 scored days), directional accuracy,
    IC, rank IC, MAE and the long-short return to <data_root>/monitoring/live_metrics.parquet,
    and the new days to MLflow. Prints the newest scored day of each variant and version;
    days whose next bar is not in yet are pending.
    """
    from ray_app.data.live_metrics import METRICS
    from ray_app.monitoring.outcomes import run_monitor

    settings = _settings(config, data_root=data_root)
    result = run_monitor(settings, mlflow=mlflow)
    table = Table(title=f"live metrics (newest scored day) in {result.path}")
    for column in ("variant", "model", "version", "day", "window", "n", *METRICS):
        table.add_column(column)
    scored = result.table[~result.table["pending"]]
    newest = scored.groupby(["variant", "model_version"])["day"].transform("max")
    for row in scored[scored["day"] == newest].to_dict("records"):
        values = [f"{row[c]:.4f}" for c in METRICS]
        table.add_row(
            row["variant"],
            row["model_name"],
            row["model_version"],
            str(row["day"]),
            row["window"],
            str(row["n"]),
            *values,
        )
    out.print(table)
    out.print(
        f"{result.predictions} distinct prediction(s): {result.scored_days} day(s) scored, "
        f"{result.pending_days} pending; {result.mlflow_points} MLflow point(s) logged"
    )


DRIFT_ROWS = 15  # rows `ray-app drift` prints, most drifted first


@app.command()
def drift(
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    date: Annotated[
        dt.datetime | None,
        typer.Option(
            "--date", formats=["%Y-%m-%d"], help="Day measured (YYYY-MM-DD; default: today, UTC)"
        ),
    ] = None,
) -> None:
    """Drift of the day's served feature rows and predictions against each serving model's
    training window: PSI and the Kolmogorov-Smirnov statistic per feature.

    Served rows come from the prediction log (the day's feature rows and the champion when the
    log has none that day). Writes the table and an HTML report under the data root (the
    prediction API exports the table as gauges), prints the statistics over their threshold
    (drift.* settings) and the report's path. Exits 0 whether or not anything drifted.
    """
    from ray_app.monitoring.drift import run_drift

    settings = _settings(config, data_root=data_root)
    result = run_drift(settings, date.date() if date else None)
    table = Table(title=f"drift on {result.day} ({result.source})")
    for column in ("variant", "version", "name", "psi", "ks", "n current", "drifted"):
        table.add_column(column)
    shown = result.table.sort_values(["drifted", "psi"], ascending=False).head(DRIFT_ROWS)
    for row in shown.to_dict("records"):
        table.add_row(
            str(row["variant"]),
            str(row["model_version"]),
            str(row["name"]),
            f"{row['psi']:.4f}",
            f"{row['ks']:.4f}",
            str(row["n_current"]),
            "yes" if row["drifted"] else "",
        )
    out.print(table)
    drifted = len(result.drifted)
    out.print(f"{drifted} of {len(result.table)} statistics over their threshold")
    out.print(f"report: {result.report}")


@app.command("dagster-ui")
def dagster_ui(
    config: ConfigOption = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the Dagster UI")] = 3000,
    host: Annotated[str, typer.Option(help="Address the UI listens on")] = "127.0.0.1",
) -> None:
    """`dagster dev` on the pipeline's definitions: the UI (asset graph, runs, staleness) at
    http://HOST:PORT, and the daemon that runs the daily schedule and the new-data sensor.

    Its instance is the pipeline's own (pipeline.dagster_home), so the UI shows what
    `ray-app pipeline` ran, and the other way round.
    """
    from ray_app.orchestration.instance import ensure_home

    settings = _settings(config)
    env = {**os.environ, "DAGSTER_HOME": str(ensure_home(settings))}
    if config is not None:
        env[CONFIG_ENV] = str(config.resolve())
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-m", "ray_app.orchestration.location"]
    os.execve(str(dagster), [*command, "--host", host, "--port", str(port)], env)


@app.command("rollout")
def rollout_command(
    config: ConfigOption = None,
    serve_config: Annotated[
        Path,
        typer.Option(help="Desired Serve config: the start when the cluster runs no ray-app yet"),
    ] = Path("serve_config.yaml"),
    challenger_weight: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Share of traffic for the challenger")
    ] = None,
    shadow: Annotated[str | None, typer.Option(help="Variant that mirrors traffic")] = None,
    shadow_fraction: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Share of requests mirrored")
    ] = None,
    no_shadow: Annotated[bool, typer.Option("--no-shadow", help="Stop mirroring")] = False,
    pin: Annotated[
        list[str] | None,
        typer.Option(help="VARIANT=VERSION (or alias): the model a variant serves; repeatable"),
    ] = None,
    promote: Annotated[
        bool, typer.Option(help="Make the challenger the champion, then serve it")
    ] = False,
    rollback: Annotated[
        bool, typer.Option(help="Restore the previous champion, then serve it")
    ] = False,
    reason: Annotated[
        str, typer.Option(help="Why (audit log, with --promote/--rollback)")
    ] = "rollout",
    feature_version: Annotated[
        str | None, typer.Option(help="Pin the feature set the ingress serves (default: as it is)")
    ] = None,
    follow_features: Annotated[
        bool, typer.Option(help="Serve the newest feature set again (unpin it)")
    ] = False,
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray dashboard URL for serve deploy (default: RAY_DASHBOARD_ADDRESS, "
            "else http://localhost:8265)"
        ),
    ] = None,
    apply: Annotated[
        bool, typer.Option(help="Run serve deploy; --no-apply prints the config instead")
    ] = True,
    gitops: Annotated[
        Path | None,
        typer.Option(
            help="A git checkout of the repository Argo CD syncs to a RayService: commit the "
            "change to its serve_config.yaml and the chart's copy instead of serve deploy "
            "(push it yourself)"
        ),
    ] = None,
    actor: ActorOption = None,
) -> None:
    """Change A/B weights, the shadow or pinned versions of what the cluster runs, and deploy it.

    Starts from the Serve config the cluster runs now (its REST API) and changes only what
    it is asked to; the desired serve_config.yaml is read, never rewritten. Every variant's
    model reference must resolve in the registry, or nothing moves. Prints the registry event
    (if any), the new weights and shadow, and what was deployed. On Kubernetes git owns what
    serves: --gitops CHECKOUT commits the change for Argo CD instead. Each rollout is an entry
    of the audit trail, written before the deploy or the commit; one that fails adds a
    rollout_failed entry.
    """
    import yaml

    from ray_app.serving.rollout import Change, RolloutError, rollout

    pins: dict[str, str] = {}
    for item in pin or []:
        name, sep, ref = item.partition("=")
        if not sep or not name or not ref:
            raise RolloutError(f"--pin {item!r}: expected VARIANT=VERSION, e.g. challenger=3")
        pins[name] = ref
    change = Change(
        challenger_weight=challenger_weight,
        shadow=shadow,
        shadow_fraction=shadow_fraction,
        no_shadow=no_shadow,
        pins=pins,
        promote=promote,
        rollback=rollback,
        feature_version=feature_version,
        follow_features=follow_features,
    )
    result = rollout(
        _settings(config),
        serve_config,
        change,
        actor=_actor(actor),
        reason=reason,
        address=address,
        apply=apply,
        gitops=gitops,
    )
    if result.registry_event:
        out.print(result.registry_event)
    weights = ", ".join(f"{k} {v:g}" for k, v in result.state.ingress.weights.items())
    out.print(f"weights: {weights}; shadow: {result.state.ingress.shadow or 'none'}")
    refs = ", ".join(f"{name}={cfg.ref}" for name, cfg in result.state.variants.items())
    out.print(f"models: {refs}; features: {result.state.ingress.feature_version or 'newest'}")
    if result.deployed and gitops:
        out.print(f"committed in {gitops} (push it for Argo CD to sync)")
    elif result.deployed:
        out.print(f"deployed (started from {result.source})")
    else:
        out.print(yaml.safe_dump(result.config, sort_keys=False), soft_wrap=True, markup=False)


audit_app = typer.Typer(help="The hash-chained audit trail of the registry.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(config: ConfigOption = None, data_root: DataRootOption = None) -> None:
    """Recompute the audit trail's hash chain: finds an edited, deleted or reordered entry.

    Exits 0 when the chain is intact, 1 with one line per problem otherwise. Entries written
    before the chain existed are counted as legacy: they cannot be checked.
    """
    from ray_app.registry.audit import verify

    settings = _settings(config, data_root=data_root)
    report = verify(settings)
    for problem in report.problems:
        err.print(styled("red", "broken: ", problem), soft_wrap=True)
    legacy = f", {report.legacy} from before the chain (unchecked)" if report.legacy else ""
    verdict = styled("green", "intact") if report.intact else styled("red", "BROKEN")
    out.print(Text.assemble("audit trail ", verdict, f": {report.entries} entries{legacy}"))
    if not report.intact:
        raise typer.Exit(1)


@contextmanager
def _file_progress(label: str, total: int | None) -> Iterator[Callable[[str], None]]:
    """A progress bar advanced once per file (``total`` None: counted as they come)."""
    with Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        TextColumn("{task.completed} files"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda name: progress.update(task, advance=1, description=f"{label} {name}")


def _backup_table(title: str, manifest: BackupManifest, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("what")
    table.add_column("value")
    for what, value in [
        ("files", f"{len(manifest.files)} ({manifest.total_bytes / 2**20:.1f} MiB)"),
        ("MLflow store", manifest.mlflow_store or "not included (see below)"),
        ("MLflow artifacts", manifest.artifacts or "not included (see below)"),
        ("audit entries", str(manifest.audit_entries)),
        (
            "written by",
            f"ray-app {manifest.ray_app_version}, {manifest.created_at:%Y-%m-%d %H:%M:%S %Z}",
        ),
        *rows,
    ]:
        table.add_row(what, value)
    return table


@app.command("backup")
def backup_command(
    dest: Annotated[Path, typer.Argument(help="A new (or empty) folder to write the backup to")],
    config: ConfigOption = None,
    data_root: DataRootOption = None,
) -> None:
    """Back up the data root to the folder DEST: MLflow store, artifacts, audit trail, data.

    DEST gets backup.json (ray-app version, time, what was included, the sha256 of every file)
    and root/, a copy of the data root. The SQLite MLflow store is copied with SQLite's online
    backup API, so a running pipeline or server may keep writing. A database outside the root
    (a tracking server's PostgreSQL) is named as not included: back it up with pg_dump. It does
    not start Ray.
    """
    from ray_app.ops.backup import backup

    settings = _settings(config, data_root=data_root)
    with _file_progress("backing up", None) as advance:
        manifest = backup(settings, dest, advance)
    out.print(_backup_table(f"backup {dest}", manifest, [("of data root", manifest.source_root)]))
    for note in manifest.not_included:
        err.print(styled("yellow", "not included: ", note), soft_wrap=True)


@app.command("restore")
def restore_command(
    src: Annotated[Path, typer.Argument(help="A backup folder written by `ray-app backup`")],
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    force: Annotated[
        bool,
        typer.Option(help="Restore over a non-empty data root, which is moved aside (kept)"),
    ] = False,
) -> None:
    """Restore the backup SRC as the data root (--data-root, or the configured one).

    Checks every file of SRC against the sha256 in its backup.json before writing anything
    (a changed backup: exit 2, nothing written), builds the root in a hidden folder beside the
    target, points the MLflow store at the new place, verifies the audit trail, then renames
    it into place. Refuses a non-empty data root unless --force. It does not start Ray.
    """
    from ray_app.ops.backup import local_root, read_manifest, restore

    settings = _settings(config, data_root=data_root)
    with _file_progress("restoring", len(read_manifest(src).files)) as advance:
        manifest, aside = restore(settings, src, force, advance)
    rows = [("restored to", str(local_root(settings))), ("from root", manifest.source_root)]
    if aside is not None:
        rows.append(("previous root moved to", str(aside)))
    out.print(_backup_table(f"restored {src}", manifest, rows))
    for note in manifest.not_included:
        err.print(styled("yellow", "restore separately: ", note), soft_wrap=True)


ab_app = typer.Typer(help="A/B evidence from realised returns.", no_args_is_help=True)
app.add_typer(ab_app, name="ab")
FromOption = Annotated[
    dt.datetime | None,
    typer.Option("--from", formats=["%Y-%m-%d"], help="First feature date, inclusive (YYYY-MM-DD)"),
]
ToOption = Annotated[
    dt.datetime | None,
    typer.Option("--to", formats=["%Y-%m-%d"], help="Last feature date, inclusive (YYYY-MM-DD)"),
]


def _day(value: dt.datetime | None) -> dt.date | None:
    return value.date() if value else None


def _rows_table(title: str, rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for column in rows[0]:
        table.add_column(column)
    for row in rows[1:]:
        table.add_row(*row)
    return table


@ab_app.command("report")
def ab_report(
    start: FromOption = None,
    end: ToOption = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for the report (default: <data_root>/reports/ab/<day>)"),
    ] = None,
    config: ConfigOption = None,
    data_root: DataRootOption = None,
) -> None:
    """Is the challenger better? Live metrics per variant with intervals, and each variant
    against the baseline (monitoring.baseline_variant): Diebold-Mariano on the loss, block
    bootstrap on rank IC, verdict.

    Twice: paired on every ticker-day of the days each variant served (its precomputed
    predictions), and on served traffic (the prediction log). Prints the tables and writes
    report.md, report.html (plots inline), evidence.json and the plots.
    """
    from ray_app.monitoring.report import build_report, comparison_rows, variant_rows, write_report

    settings = _settings(config, data_root=data_root)
    report = build_report(settings, _day(start), _day(end))
    for part in report.sources:
        ev = part.evidence
        out.print(
            _rows_table(f"{ev.source}: live metrics ({ev.start} to {ev.end})", variant_rows(ev))
        )
        if ev.comparisons:
            out.print(
                _rows_table(
                    f"{ev.source}: against {settings.monitoring.baseline_variant}",
                    comparison_rows(ev),
                )
            )
    out.print(f"report: {write_report(settings, report, out_dir)}", soft_wrap=True)


@app.command()
def replay(
    start: Annotated[
        dt.datetime, typer.Option("--from", formats=["%Y-%m-%d"], help="First day (YYYY-MM-DD)")
    ],
    end: Annotated[
        dt.datetime, typer.Option("--to", formats=["%Y-%m-%d"], help="Last day (YYYY-MM-DD)")
    ],
    retrain_every: Annotated[
        int, typer.Option(min=0, help="Retrain every N trading days (0: the first day only)")
    ] = 0,
    search: Annotated[
        bool, typer.Option(help="Run the hyperparameter search on retraining days")
    ] = False,
    clients: Annotated[
        int, typer.Option(min=1, help="Client ids sending each day's requests (every ticker)")
    ] = 8,
    wait_s: Annotated[
        float,
        typer.Option(min=1, help="Seconds to wait for the day's features in serving and log"),
    ] = 120.0,
    config: ConfigOption = None,
    data_root: DataRootOption = None,
) -> None:
    """History through the real daily loop, one trading day at a time, deterministically.

    Each day: cut the data at the day, run the pipeline (retraining as asked), send the day's
    requests to the Serve app, wait for them in the prediction log; the next day's pipeline
    scores the day. Ends with the A/B report and the drift report over the period. Needs a
    running cluster (`ray-app cluster up`) and a data root with no bar from --from on.
    """
    from ray_app.ops.runtime import connect
    from ray_app.orchestration.replay import ReplayOptions
    from ray_app.orchestration.replay import replay as run_replay

    settings = _settings(config, data_root=data_root)
    connect(settings)
    options = ReplayOptions(start.date(), end.date(), retrain_every, search, clients, wait_s)

    def show(day: Any) -> None:
        for asset in day.steps:
            err.print(f"  {asset.name}: {asset.status} ({asset.seconds:.1f}s) {asset.detail}")
        split = ", ".join(f"{k} {v}" for k, v in sorted(day.variants.items()))
        err.print(
            styled("green", f"{day.day}: ", f"{day.requests} requests ({split}), "),
            f"{day.predictions} predictions, {day.logged} logged, {day.seconds:.1f}s",
            soft_wrap=True,
        )

    result = run_replay(settings, options, on_day=show)
    table = Table(title=f"replay {options.start} to {options.end}")
    for column in ("day", "requests", "predictions", "logged", "seconds", "pipeline"):
        table.add_column(column)
    for day in result.days:
        steps = ", ".join(f"{s.name} {s.status}" for s in day.steps)
        table.add_row(
            str(day.day),
            str(day.requests),
            str(day.predictions),
            str(day.logged),
            f"{day.seconds:.1f}",
            steps,
        )
    out.print(table)
    out.print(f"A/B report: {result.report}", soft_wrap=True)
    out.print(f"drift report: {result.drift_report or 'none in this build'}", soft_wrap=True)


keys_app = typer.Typer(
    help="Keys of the prediction API, kept as hashes in the secret api_key_hashes.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
KeyIdArgument = Annotated[str, typer.Argument(help="The key's id: 1-64 of A-Za-z0-9._-")]


def _key_secrets(config: Path | None) -> tuple[Settings, Secrets]:
    from ray_app.core.secrets import open_secrets

    settings = _settings(config)
    return settings, open_secrets(settings)


@keys_app.command("add")
def keys_add(
    key_id: KeyIdArgument,
    role: Annotated[
        str, typer.Option(help="What the key may call: predict, operator or admin")
    ] = Role.predict.name,
    rate_limit: Annotated[
        int | None,
        typer.Option(min=1, help="Requests per window for this key (default: the API's own)"),
    ] = None,
    config: ConfigOption = None,
    actor: ActorOption = None,
) -> None:
    """Make a new key, add its hash to the secret and print the key, once, on stdout.

    Written through the secrets backend (file or vault; env cannot be written) and recorded in
    the audit trail first. Running ingress replicas accept it within secrets.refresh_s plus a
    second. An admin key can do the same over HTTP: POST /v1/admin/keys.
    """
    from ray_app.registry.keys import add_key

    settings, secrets = _key_secrets(config)
    made = add_key(settings, secrets, key_id, role, rate_limit, _actor(actor))
    err.print(f"key {made.id} (role {made.role}) added; it is shown once, here:")
    print(made.key)


@keys_app.command("revoke")
def keys_revoke(
    key_id: KeyIdArgument, config: ConfigOption = None, actor: ActorOption = None
) -> None:
    """Remove a key's hash from the secret: running ingress replicas refuse it (401) within
    secrets.refresh_s plus a second. Recorded in the audit trail first."""
    from ray_app.registry.keys import revoke_key

    settings, secrets = _key_secrets(config)
    revoke_key(settings, secrets, key_id, _actor(actor))
    out.print(f"key {key_id} revoked")


@keys_app.command("list")
def keys_list(config: ConfigOption = None) -> None:
    """Each key's id, role and rate limit (never its hash)."""
    from ray_app.registry.keys import list_keys

    _, secrets = _key_secrets(config)
    for key in list_keys(secrets):
        limit = "the API's limit" if key.rate_limit is None else f"{key.rate_limit}/window"
        out.print(f"{key.id}: {key.role}, {limit}")


cluster_app = typer.Typer(help="The local Ray head (token auth, dashboard, Serve ingress).")
app.add_typer(cluster_app, name="cluster")


def cluster_env(settings: Settings) -> dict[str, str]:
    """The store every process of a local cluster shares: absolute paths, one MLflow."""
    from ray_app.registry.tracking import tracking_uri

    root = settings.data_root
    if "://" not in root:
        root = str(Path(root).expanduser().resolve())
    return {"RAY_APP_DATA_ROOT": root, "RAY_APP_MLFLOW__TRACKING_URI": tracking_uri(settings)}


@cluster_app.command("up")
def cluster_up(
    config: ConfigOption = None,
    tls: Annotated[
        bool | None,
        typer.Option(
            "--tls/--no-tls",
            help="Serve the API over HTTPS too (TLS 1.2+, cluster.tls), or stop that front; "
            "default: cluster.tls.enabled",
        ),
    ] = None,
) -> None:
    """Start a local Ray head with token authentication (nothing if one is running).

    A head that died is cleaned up first. Prints the head, the dashboard, the token file, the
    Serve ingress and a ray job submit hint. With ``--tls`` (or ``cluster.tls.enabled``), an
    HAProxy in front of Serve's HTTP port answers HTTPS on ``cluster.tls.port`` (8443), with
    ``cluster.tls.certfile``/``keyfile`` or a certificate generated for localhost.
    """
    from ray_app.ops.cluster import local_key_env, start_tls, stop_tls, up
    from ray_app.ops.tls import serve_port

    settings = _settings(config)
    done = up(settings.cluster, cluster_env(settings) | local_key_env(settings))
    if done.replaced is not None:
        out.print(
            f"the head at {done.replaced.gcs_address} was dead: stopped its "
            f"{done.stopped} leftover process(es)"
        )
    state = done.state
    out.print(f"Ray head {'started' if done.started else 'already running'} at {state.gcs_address}")
    out.print(f"dashboard: {state.dashboard_url} (token in {state.token_path})")
    out.print(f"Serve ingress: {'HAProxy' if state.haproxy else 'Ray proxy'}")
    wanted = settings.cluster.tls.enabled if tls is None else tls
    if wanted:
        upstream = settings.cluster.tls.upstream_port or serve_port(settings.pipeline.serve_config)
        state = start_tls(settings.cluster, state, upstream)
    elif tls is False and state.tls is not None:
        stop_tls(settings.cluster)
        out.print("HTTPS front stopped")
        state = replace(state, tls=None)
    if state.tls is not None:
        front = state.tls
        out.print(f"API over HTTPS: {front['url']} (TLS 1.2+, to Serve at {front['upstream']})")
        if front["ca"]:
            ca = front["ca"]
            out.print(f"  clients trust {ca}: curl --cacert {ca} {front['url']}/healthz")
    key = settings.cluster.api_key_path.expanduser()
    if key.is_file():
        out.print(
            f"API key (local, role admin): {key}; send it with "
            "`ray-app cluster api-key --header | curl -H @- ...`"
        )
    out.print(f"submit jobs with: ray job submit --address {state.dashboard_url} -- ...")


@cluster_app.command("api-key")
def cluster_api_key(
    config: ConfigOption = None,
    header: Annotated[
        bool, typer.Option("--header", help="Print it as an `Authorization: Bearer` header line")
    ] = False,
) -> None:
    """Print the local admin key of the prediction API (made by `cluster up`, mode 0600).

    On stdout only, so it can be piped (`ray-app cluster api-key --header | curl -H @- URL`)
    without ever appearing in a command line or the shell's history.
    """
    from ray_app.ops.cluster import ensure_api_key

    settings = _settings(config)
    path = settings.cluster.api_key_path.expanduser()
    if not path.is_file():
        raise RayAppError(f"no local API key at {path}: run `ray-app cluster up` first")
    key = ensure_api_key(settings.cluster).read_text(encoding="utf-8").strip()
    print(f"Authorization: Bearer {key}" if header else key)


@cluster_app.command("haproxy-launcher")
def cluster_haproxy_launcher(
    path: Annotated[Path, typer.Argument(help="Where to write the script")],
    stats_host: Annotated[
        str, typer.Option(help="Address of HAProxy's stats and Prometheus ports")
    ] = "127.0.0.1",
) -> None:
    """Write the script Serve runs as its HAProxy (name it in RAY_SERVE_HAPROXY_BINARY_PATH)
    where `cluster up` does not run, such as the inference image on KubeRay.

    It edits the config Serve wrote, then runs Serve's own HAProxy: a client's X-Request-ID is
    dropped unless it is 1-64 of [A-Za-z0-9._-] (Serve then makes one), the stats and
    Prometheus ports listen on --stats-host, and the admin socket is for its user only.
    """
    from ray_app.ops.cluster import write_launcher
    from ray_app.ops.tls import haproxy_binary

    out.print(f"HAProxy launcher: {write_launcher(path, stats_host, haproxy_binary())}")


@cluster_app.command("down")
def cluster_down(config: ConfigOption = None) -> None:
    """Stop the local head, alive or dead, and every process it started or left behind
    (other Ray clusters are left alone)."""
    from ray_app.ops.cluster import down

    stopped = down(_settings(config).cluster)
    if stopped is None:
        out.print("no head recorded: nothing to stop")
        return
    state, count = stopped
    out.print(f"Ray head {state.gcs_address} stopped ({count} process(es))")


@cluster_app.command("status")
def cluster_status(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables")] = False,
) -> None:
    """Nodes, resources, jobs, Serve applications and the dashboard URL.

    For a dead head, its leftover processes (exit 1). Exits 2 when no head is recorded.
    """
    from ray_app.ops.cluster import ClusterError, alive, dead_status, recorded, status
    from ray_app.ops.runtime import connect

    settings = _settings(config)
    state = recorded(settings.cluster)
    if state is None:
        raise ClusterError("no local Ray head is running: start one with `ray-app cluster up`")
    if not alive(state):
        _show_dead(dead_status(state), as_json)
        raise typer.Exit(1)
    connect(settings)
    report = status(state)
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    out.print(f"head {report['address']}, dashboard {report['dashboard']}")
    if report["tls"]:
        front = report["tls"]
        out.print(f"HTTPS: {front['url']} ({'up' if front['alive'] else 'DOWN: cluster up --tls'})")
    out.print(
        f"nodes: {len(report['nodes'])}; CPU {report['available'].get('CPU', 0)}"
        f"/{report['resources'].get('CPU', 0)} free"
    )
    jobs = Table(title="jobs")
    for column in ("id", "status", "entrypoint"):
        jobs.add_column(column)
    for job in report["jobs"]:
        jobs.add_row(job["id"], job["status"], job["entrypoint"])
    out.print(jobs)
    for name, app_status in report["serve"].items():
        out.print(f"Serve application {name}: {app_status}")


def _show_dead(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    err.print(
        styled(
            "red",
            f"the head at {report['address']} is dead",
            f" (its GCS is gone); {len(report['leftovers'])} leftover process(es) of "
            f"{report['session_dir']}:",
        ),
        highlight=False,
        soft_wrap=True,
    )
    for proc in report["leftovers"]:
        err.print(f"  {proc['pid']}  {proc['command']}", highlight=False, soft_wrap=True)
    err.print("`ray-app cluster down` stops them; `ray-app cluster up` also starts a new head")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors as one line, never a traceback.

    ``argv`` lets the thin entrypoints in jobs/ run one command with their own arguments.
    Log records go to stderr as ECS JSON lines (``RAY_APP_LOG_LEVEL``, default WARNING); the
    command's own output stays on the console.
    """
    logs.configure()
    try:
        app(args=argv, prog_name="ray-app")
    except RayAppError as exc:
        err.print(styled("red", "error: ", redact_uris(str(exc))), highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("RAY_APP_DEBUG"):
            raise
        err.print(
            styled(
                "red",
                "unexpected error: ",
                f"{type(exc).__name__}: {redact_uris(str(exc))} (set RAY_APP_DEBUG=1 for the "
                "traceback)",
            ),
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
