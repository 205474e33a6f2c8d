"""A longer replay on real bars: the closed loop's figures on the Kaggle US stocks set.

What it does: starts a Ray head of its own (``ray-app cluster up``, state under
``bench/out/replay``), writes a configuration over ``../shared/data/kaggle-us-stocks`` (the csv
source, every ticker; the default model, no search) and a Serve config that splits traffic
evenly between champion and challenger and mirrors every request to the challenger, then runs

    ray-app replay --from D1 --to D2 --retrain-every N

through the real daily loop (pipeline, serve deploy, HTTP requests, prediction log, A/B
report), and prints the figures the issue asks for: the trading days replayed, the live rank
IC per variant (with its interval) on both sources (every ticker-day of the precomputed
predictions, and served traffic), and the A/B verdict with the days it still needs. The
figures are also written to ``bench/out/replay/summary.json``. Exits 1 when the replay failed.

Run: ``.venv/bin/python bench/bench_replay.py`` (``--from``/``--to`` pick the period: by
default the last 30 trading days of the set, the model retrained every 10).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "kaggle-us-stocks"
OUT = REPO / "bench" / "out" / "replay"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ray_app(
    args: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ray_app", *args],
        env={**os.environ, **env},
        cwd=REPO,
        text=True,
        capture_output=True,
        timeout=timeout,
    )


def write_configs(root: Path, data: Path) -> Path:
    """Settings over the csv bars, and a Serve config splitting champion/challenger 50/50
    with the challenger shadowing every request."""
    from ray_app.core.settings import Settings
    from ray_app.registry.tracking import tracking_uri

    serve = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    port = free_port()
    serve["http_options"] = {"host": "127.0.0.1", "port": port}
    args = serve["applications"][0]["args"]
    settings = Settings(data_root=str(root))
    args.update(data_root=str(root), mlflow_tracking_uri=tracking_uri(settings))
    weights = {"champion": 0.5, "challenger": 0.5}
    shadow = {"variant": "challenger", "fraction": 1.0}
    for variant in args["variants"]:
        variant["weight"] = weights[variant["name"]]
    args["shadow"] = shadow
    for deployment in serve["applications"][0]["deployments"]:
        if deployment["name"] == "Ingress":
            deployment["user_config"].update(weights=weights, shadow=shadow)
    serve_path = OUT / "serve_config.yaml"
    serve_path.write_text(yaml.safe_dump(serve, sort_keys=False))
    config = {
        "data_root": str(root),
        "ingest": {"source": "csv", "path": str(data)},
        "pipeline": {"serve_config": str(serve_path), "serve_url": f"http://127.0.0.1:{port}"},
    }
    path = OUT / "replay.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def last_days(data: Path, count: int) -> tuple[str, str]:
    """The first and last of the set's last ``count`` trading days."""
    days: set[str] = set()
    for file in data.glob("*.txt"):
        lines = file.read_text().splitlines()[1:]
        days |= {line.split(",", 1)[0] for line in lines[-count - 5 :] if line}
    chosen = sorted(days)[-count:]
    return chosen[0], chosen[-1]


def summary(root: Path, days: int, seconds: float) -> dict[str, Any]:
    reports = sorted((root / "reports" / "ab").iterdir())
    evidence = json.loads((reports[-1] / "evidence.json").read_text())
    out: dict[str, Any] = {"trading_days": days, "seconds": round(seconds), "sources": {}}
    for source in evidence["sources"]:
        out["sources"][source["source"]] = {
            "days_with_outcomes": max((v["days"] for v in source["variants"]), default=0),
            "rank_ic": {v["variant"]: v["rank_ic"] for v in source["variants"]},
            "model_versions": {v["variant"]: v["model_versions"] for v in source["variants"]},
            "verdicts": [
                {
                    k: c[k]
                    for k in (
                        "challenger",
                        "baseline",
                        "verdict",
                        "days",
                        "ticker_days",
                        "dm_p_value",
                        "rank_ic_diff",
                        "days_needed",
                        "reasons",
                    )
                }
                for c in source["comparisons"]
            ],
        }
    out["report"] = str(reports[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--from", dest="start", help="First day (default: 30 days before the end)")
    parser.add_argument("--to", dest="end", help="Last day (default: the set's last day)")
    parser.add_argument("--retrain-every", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    opts = parser.parse_args()
    start, end = last_days(opts.data, 30)
    start, end = opts.start or start, opts.end or end
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    root = OUT / "data"
    config = write_configs(root, opts.data)
    env = {
        "RAY_AUTH_MODE": "token",
        "RAY_APP_CLUSTER__STATE_DIR": str(OUT / "cluster"),
        "RAY_APP_CLUSTER__DASHBOARD_PORT": str(free_port()),
        "RAY_APP_CLUSTER__METRICS_PORT": str(free_port()),
    }
    up = ray_app(["cluster", "up"], env, 300)
    if up.returncode != 0:
        sys.exit(f"cluster up failed: {up.stderr[-2000:]}")
    state = json.loads((OUT / "cluster" / "cluster.json").read_text())
    env["RAY_ADDRESS"] = state["gcs_address"]
    print(f"replay {start} to {end} (retrain every {opts.retrain_every} days)", flush=True)
    started = time.monotonic()
    try:
        command = ["replay", "--from", start, "--to", end, "--config", str(config)]
        command += ["--retrain-every", str(opts.retrain_every), "--clients", str(opts.clients)]
        done = ray_app(command, env, 6 * 3600)
    finally:
        ray_app(["cluster", "down"], env, 300)
    (OUT / "replay.log").write_text(done.stdout + done.stderr)
    print(done.stdout[-6000:])
    if done.returncode != 0:
        print(done.stderr[-4000:], file=sys.stderr)
        sys.exit(1)
    days = len(re.findall(r"^\d{4}-\d{2}-\d{2}: \d+ requests", done.stderr, re.M))
    figures = summary(root, days, time.monotonic() - started)
    (OUT / "summary.json").write_text(json.dumps(figures, indent=2, default=str))
    print(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
