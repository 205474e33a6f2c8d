"""`ray-app data gc`, `data pin` and `data unpin` on a real data root with a real SQLite
model registry under it: what is kept (and why), what goes, and when gc refuses.

Three data versions are ingested and featurized without Ray (the per-ticker functions the Ray
tasks run), as `ray-app ingest` and `ray-app features` would leave them.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import mlflow
import pandas as pd
import yaml

from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.feature_store import (
    feature_manifest,
    featurize_ticker,
    latest_feature_version,
    plan_build,
    record_feature_set,
)
from ray_app.data.ingest import raw_versions, read_bars
from ray_app.data.manifests import RawManifest
from ray_app.data.retention import ORPHAN_GRACE, Protected, plan_gc
from ray_app.registry.tracking import connect_mlflow
from ray_app.registry.versions import register_challenger
from tests.conftest import REPO, free_port, ray_app_command
from tests.unit.test_ingest import Revising, history, ingest_locally

DAYS = [dt.date(2024, 6, 28), dt.date(2024, 7, 31), dt.date(2024, 8, 30)]


def build_versions(root: Path) -> list[tuple[RawManifest, str]]:
    """Three data versions (each ingest adds a month of bars to both tickers) and the feature
    set of each, oldest first: (raw manifest, feature version)."""
    source = Revising({"AAA": history(200, seed=1), "BBB": history(200, seed=2)})
    built = []
    for day in DAYS:
        _, manifest = ingest_locally(root, source, day)
        plan = plan_build(Settings(data_root=str(root)), manifest.version)
        rows = [featurize_ticker(t, plan, None) for t in sorted(manifest.tickers)]
        built.append((manifest, record_feature_set(plan, rows).version))
    return built


def register(root: Path, data_version: str, feature_version: str) -> int:
    """A model version in the SQLite registry under ``root``, with that lineage."""
    settings = Settings(data_root=str(root))
    connect_mlflow(settings)
    with mlflow.start_run() as run:
        folder = root.parent / "model"
        folder.mkdir(exist_ok=True)
        (folder / "weights.txt").write_text("0.5")
        mlflow.log_artifacts(str(folder), "model/artifacts/model")  # the pyfunc layout
    tags = {"data_version": data_version, "feature_version": feature_version}
    return register_challenger(settings, f"runs:/{run.info.run_id}/model", run.info.run_id, tags)


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "_locks" not in p.parts and "mlflow.db" not in p.name
    }


def gc(root: Path, *args: str, config: Path | None = None) -> tuple[int, str, str]:
    """``ray-app data gc`` as a user runs it, against a dashboard address nothing answers."""
    extra = ["--config", str(config)] if config else []
    address = f"http://127.0.0.1:{free_port()}"
    done = ray_app_command(
        ["data", "gc", "--data-root", str(root), "--address", address, *extra, *args], {}
    )
    return done.returncode, " ".join(done.stdout.split()), done.stderr


def test_gc_keeps_the_newest_the_pinned_and_the_lineage_and_removes_the_rest(
    data_root: Path,
) -> None:
    (v1, f1), (v2, f2), (v3, f3) = build_versions(data_root)
    root = DataRoot(str(data_root))
    assert len(list(data_root.glob("raw/ticker=*/*.parquet"))) == 6  # no file overwritten
    model = register(data_root, v1.version, f1)

    before = files(data_root)
    code, dry, err = gc(data_root, "--keep", "1", "--dry-run")
    assert code == 0, err
    assert files(data_root) == before  # a dry run changes nothing
    assert f"kept {v1.version}: lineage of model ray-app-daily-return v{model} (challenger)" in dry
    assert f"would remove {v2.version}" in dry and f"would remove feature set {f2}" in dry
    assert f"kept {v3.version}: newest 1 of 1; latest data version (LATEST.json)" in dry
    assert "dry run: 2 data version(s) kept, 1 would remove" in dry

    code, done, err = gc(data_root, "--keep", "1")
    assert code == 0, err
    assert "2 partition file(s) removed" in done
    assert [m.version for m in raw_versions(root)] == [v3.version, v1.version]
    assert sorted(p.name for p in (data_root / "features").iterdir()) == sorted(
        [f1, f3, "_latest.json"]
    )
    for manifest in (v1, v3):  # what is kept reads as it was recorded
        for ticker in manifest.tickers:
            assert len(read_bars(root, ticker, manifest)) == manifest.tickers[ticker].rows
    assert feature_manifest(root).version == f3

    code, again, err = gc(data_root, "--keep", "1")
    assert code == 0 and "0 removed" in again and "0 partition file(s) removed" in again, err


def test_a_pin_keeps_a_version_until_unpinned(data_root: Path) -> None:
    (v1, _), (v2, _), (v3, _) = build_versions(data_root)
    pinned = ray_app_command(
        ["data", "pin", v2.version, "--data-root", str(data_root), "--note", "paper figures"], {}
    )
    assert pinned.returncode == 0 and f"pinned data version {v2.version}" in pinned.stdout
    code, out, err = gc(data_root, "--keep", "1")
    assert code == 0, err
    assert f"kept {v2.version}: pinned on {dt.date.today():%Y-%m-%d}: paper figures" in out
    assert f"removed {v1.version}" in out

    unpinned = ray_app_command(["data", "unpin", v2.version, "--data-root", str(data_root)], {})
    assert unpinned.returncode == 0 and "pinned now: none" in unpinned.stdout
    code, out, err = gc(data_root, "--keep", "1")
    assert code == 0 and f"removed {v2.version}" in out, err
    assert [m.version for m in raw_versions(DataRoot(str(data_root)))] == [v3.version]

    for command in (["pin", "0123456789abcdef"], ["unpin", v2.version], ["pin", "../x"]):
        refused = ray_app_command(["data", *command, "--data-root", str(data_root)], {})
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert (
        "data version 0123456789abcdef does not exist"
        in (
            ray_app_command(["data", "pin", "0123456789abcdef", "--data-root", str(data_root)], {})
        ).stderr
    )


def test_the_feature_set_serving_pins_keeps_its_data_version(
    data_root: Path, tmp_path: Path
) -> None:
    (v1, f1), (v2, _), _ = build_versions(data_root)
    desired = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    desired["applications"][0]["args"]["feature_version"] = f1
    serve_config = tmp_path / "serve_config.yaml"
    serve_config.write_text(yaml.safe_dump(desired))
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump({"pipeline": {"serve_config": str(serve_config)}}))
    code, out, err = gc(data_root, "--keep", "1", config=config)
    assert code == 0, err
    assert f"kept {v1.version}: pinned in {serve_config} (feature set {f1})" in out
    assert f"removed {v2.version}" in out


def test_an_unreadable_registry_refuses_the_gc(data_root: Path) -> None:
    build_versions(data_root)
    (data_root / "mlflow.db").write_bytes(b"not a database")
    before = files(data_root)
    code, _, err = gc(data_root, "--keep", "1")
    assert code == 2 and "Traceback" not in err
    assert "cannot read the model registry at sqlite:///" in err and "refusing to gc" in err
    assert files(data_root) == before


def test_an_orphan_partition_goes_only_once_no_ingest_can_still_record_it(
    data_root: Path,
) -> None:
    """A partition no manifest names is an ingest's in flight until it is older than the
    grace period; then it is a crashed ingest's, and goes."""
    build_versions(data_root)
    root = DataRoot(str(data_root))
    orphan = "raw/ticker=AAA/ffffffffffffffff.parquet"
    root.write_parquet(pd.DataFrame({"x": [1.0]}), *orphan.split("/"), metadata={})
    now = dt.datetime.now(dt.timezone.utc)
    assert orphan not in plan_gc(root, 3, Protected(), now).removed_files
    later = plan_gc(root, 3, Protected(), now + ORPHAN_GRACE + dt.timedelta(minutes=1))
    assert later.removed_files == [orphan] and later.removed == []


def test_gc_on_a_root_without_a_registry_creates_none(data_root: Path) -> None:
    build_versions(data_root)
    code, out, err = gc(data_root, "--keep", "5")
    assert code == 0 and "3 data version(s) kept, 0 removed" in out, err
    assert not (data_root / "mlflow.db").exists()
    assert json.loads(
        ray_app_command(["data", "status", "--json", "--data-root", str(data_root)], {}).stdout
    )["raw_versions"][0]["latest"]


def test_rebuilding_an_old_version_leaves_the_latest_feature_set_pointer(data_root: Path) -> None:
    """Serving follows features/_latest.json: a rebuild of an old data version must not move it."""
    (v1, f1), _, (_, f3) = build_versions(data_root)
    plan = plan_build(Settings(data_root=str(data_root)), v1.version)
    rows = [featurize_ticker(t, plan, None) for t in sorted(v1.tickers)]
    assert record_feature_set(plan, rows).version == f1
    assert latest_feature_version(DataRoot(str(data_root))) == f3
