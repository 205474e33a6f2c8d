"""Benchmark of the serving path: the Ray Serve application against plain FastAPI + uvicorn.

Why: a Serve graph (HAProxy, an ingress replica, one replica per model variant, handles
between them) buys rollouts, A/B splits, shadows and scaling, and costs hops. On the machine
we develop on (2 cores) it must still answer at least half the requests/s of the obvious
alternative, one uvicorn process serving the same model, at a p50 of 5 ms or less at low
concurrency, and mirroring every request to a shadow must cost at most a tenth of that.

What it does, in one run:

1. builds a store: a synthetic universe (``bench_data.write_universe``, default 50 tickers
   x 10 years, cached under ``bench/out/``) ingested and featurised by the platform, two
   MLPs fitted on it (seeds 0 and 1, the default hyperparameters, one epoch) logged and
   registered in MLflow; the first is promoted ``champion``, the second is the ``challenger``;
2. (a) plain: a FastAPI app in one uvicorn process (``plain_api``): the same request schema,
   the same feature table and the champion model loaded from the registry, the same response
   body; no cache, no routing, no logs. It runs, and is measured, while no Ray is running;
3. then a Ray head from ``ray_app.ops.cluster.up`` (as ``ray-app cluster up``: HAProxy in front
   when available) and the repository's ``serve_config.yaml`` pointed at the store, deployed
   with ``serve deploy`` and split 90/10 by ``ray-app rollout --challenger-weight 0.1``:

   - (b') with ``precompute: false``: every request the ingress's cache misses calls a
     variant replica through its handle (the path a variant takes until its table arrives);
   - (b) the default, ``precompute: true``: each variant has predicted every feature row once
     for its model version, and the ingress answers from those tables;
   - (c) (b) after ``ray-app rollout --shadow challenger --shadow-fraction 1``: every request
     the champion answers is mirrored to the challenger;
   - (d) (c) with the prediction log on (every answered prediction, the shadow's too, written
     under the data root in batches); (b) and (c) run with the log off. (b), (c) and (d) are
     measured in turn at each mix and concurrency (a rollout between them), ``--rounds``
     times (default 3), and each keeps its median run, so drift in what else the machine does
     (Ray's own agents wake up every few seconds) weighs little on their ratios: with one
     run apiece, (c), which does more than (b), once measured 1.13x (b);

4. each target is loaded with ``wrk`` (one thread, ``bench/predict.lua``) at 2, 16 and 64
   connections, after a short warm-up at the same concurrency, with two request mixes:

   - ``latest``: one ticker per request, its newest prediction (no ``as_of``): the daily
     workload; the cache answers after the first request per ticker and model version;
   - ``history``: one ticker per request at a date no earlier request to the same server
     asked for (the store's (ticker, day) pairs shuffled, each run starting where the last
     stopped): every request misses the cache.

   Every request carries an ``X-Client-Id`` from 1,000 clients, which the 90/10 split hashes.

Figures: requests/s, p50 and p99 latency (wrk's, in ms), errors (non-2xx answers, connect,
read, write and timeout errors), where the Serve application's predictions came from during
the run (precomputed tables / cache hits / cache misses, from ``/v1/models``), and the ratios
(b)/(a), (b')/(a), (c)/(b) and (d)/(b) of requests/s. Targets, per request mix: (b) at least
0.5x the requests/s of (a) with a p50 of at most 5 ms at concurrency 2; (c), and (d) (the
shadow and the log together), at least 0.9x the requests/s of (b) at every concurrency; 0
errors; and (d) wrote a log row for every prediction it answered (read back from the data
root after the runs). (b') has no target: it prices the hop to a
variant replica. The script exits 0 either way (it is a benchmark). wrk and the servers share
the 2 cores; the 1-minute load average is printed before and after.

Run: ``.venv/bin/python bench/bench_serve.py`` (``--smoke`` for 5 s runs on 10 tickers);
needs ``wrk`` (Debian: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import requests
import yaml
from bench_data import OUT, fresh_root, load_note, local_ray, write_universe
from fastapi import FastAPI, HTTPException

from ray_app.core.api_keys import KeyEntry, Role, auth_header, hash_api_key, new_api_key
from ray_app.core.secrets import API_KEY_HASHES
from ray_app.core.settings import SECRET_ENV_PREFIX, ClusterSettings, Settings
from ray_app.core.storage import DataRoot
from ray_app.data.feature_store import build_features
from ray_app.data.ingest import run_ingest
from ray_app.data.online import NoFeaturesError, UnknownTickerError
from ray_app.data.predictions import read_predictions
from ray_app.ops import cluster
from ray_app.registry import versions as registry
from ray_app.registry.tracking import connect_mlflow, tracking_uri
from ray_app.serving.features import FeatureTable
from ray_app.serving.loader import ServedModel
from ray_app.serving.rollout import Change, deploy, rollout
from ray_app.serving.schemas import PredictRequest, PredictResponse, TickerPrediction
from ray_app.training.train import fit_in_process, load_training_data

REPO = Path(__file__).resolve().parents[1]
LUA = Path(__file__).resolve().parent / "predict.lua"
SERVE_CONFIG = REPO / "serve_config.yaml"
CONCURRENCY = (2, 16, 64)
MIXES = ("latest", "history")
CLIENTS = 1000
THROUGHPUT_TARGET = 0.5  # (b) / (a) requests/s, at least
P50_TARGET_MS = 5.0  # (b) at concurrency 2, at most
SHADOW_TARGET = 0.9  # (c) / (b) requests/s, at least
READY_TIMEOUT_S = 180.0
REPLICA_ANSWERS = 6  # /v1/models answers in a row that must agree (2 ingress replicas)
LOG_FLUSH_WAIT_S = 8.0  # more than the prediction log's flush interval (5 s)


@dataclass
class Load:
    """One wrk run."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    sources: tuple[int, int, int] | None = None  # precomputed, cache hits, cache misses

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


@dataclass
class Target:
    """A server under test, the target its requests/s are compared with, and what its runs
    measured, by (mix, concurrency)."""

    label: str
    url: str
    sources: Callable[[], tuple[int, int, int]] | None = None
    against: Target | None = None
    runs: dict[tuple[str, int], Load] = field(default_factory=dict)
    answered: int = 0  # requests of every measured run, all rounds


# --- the store ---------------------------------------------------------------------------


def build_store(root: Path, folder: Path) -> Settings:
    """Features of the universe and two registered MLPs: champion (seed 0), challenger (1)."""
    settings = Settings(
        data_root=str(root),
        ingest={"source": "csv", "path": folder},
        ray={"num_cpus": 2},
        split={"n_folds": 1, "test_days": 60, "train_days": 250, "holdout_months": 3},
        train={"hparams": {"epochs": 1}, "torch_threads": 2},
    )
    with local_ray(2):
        failed = run_ingest(settings).failed + build_features(settings).failed
    if failed:
        raise SystemExit(f"feature set incomplete: {', '.join(failed)} failed")
    data = load_training_data(settings)
    assert data.split.holdout is not None
    versions = []
    for seed in (0, 1):
        seeded = settings.model_copy(deep=True)
        seeded.train.seed = seed
        model = fit_in_process(data, seeded, data.split.holdout.train_mask, None)
        with mlflow.start_run(experiment_id=connect_mlflow(settings)) as run:
            uri = registry.log_model(model, data.frame.tail(200))
        versions.append(registry.register_challenger(settings, uri, run.info.run_id, {}))
    registry.promote(settings, versions[0], "bench_serve", "benchmark champion")
    return settings


def request_lines(settings: Settings, mix: str, seed: int) -> list[str]:
    """``<client id>\\t<body>`` lines: per ticker for ``latest``, per (ticker, day) shuffled
    for ``history``; client ids drawn from ``CLIENTS``."""
    table = FeatureTable.load(settings)
    if mix == "latest":
        bodies: list[dict[str, Any]] = [{"tickers": [t]} for t in table.tickers]
    else:
        bodies = [
            {"tickers": [t], "as_of": str(day.astype("datetime64[D]"))}
            for t, (dates, _) in table.frames.items()
            for day in dates
        ]
    rng = random.Random(seed)
    rng.shuffle(bodies)
    return [f"client-{rng.randrange(CLIENTS)}\t{json.dumps(b)}" for b in bodies]


# --- (a) plain FastAPI -------------------------------------------------------------------


def plain_api(settings: Settings) -> FastAPI:
    """The obvious server: one process, the champion and the feature table in memory."""
    version = registry.resolve_version(settings, "champion")
    trained = registry.load_version(settings, version)
    model = ServedModel(settings.mlflow.model_name, version, trained)
    table = FeatureTable.load(settings)
    app = FastAPI()

    @app.post("/v1/predict")
    async def predict(request: PredictRequest) -> PredictResponse:
        try:
            windows = [table.window(t, request.as_of, model.window) for t in request.tickers]
        except (UnknownTickerError, NoFeaturesError) as exc:
            raise HTTPException(404, str(exc)) from None
        preds = model.predict(np.stack([w.rows for w in windows])).tolist()
        return PredictResponse(
            request_id=uuid.uuid4().hex,
            variant="champion",
            model_name=model.name,
            model_version=model.version,
            predictions=[
                TickerPrediction(
                    ticker=w.ticker,
                    predicted_return=p,
                    direction="up" if p > 0 else "down" if p < 0 else "flat",
                    score=None if w.volatility is None else p / w.volatility,
                    feature_date=w.feature_date,
                )
                for w, p in zip(windows, preds, strict=True)
            ],
        )

    return app


def serve_plain(root: Path, port: int) -> None:
    """Entry point of the plain server's process."""
    import uvicorn

    uvicorn.run(
        plain_api(Settings(data_root=str(root))),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
    )


@contextmanager
def plain_server(root: Path, ticker: str) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, __file__, "--plain-server", str(port), "--out", str(root)]
    process = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(url, ticker), 120)
        yield url
    finally:
        process.terminate()
        process.wait(30)


# --- (b) and (c): the Serve application --------------------------------------------------


# The Authorization header of the local admin key, once ``keyed_head`` has made it.
AUTH: dict[str, str] = {}


def keyed_head(cfg: ClusterSettings) -> cluster.ClusterState:
    """``cluster.up`` with one API key for the benchmark, as the env secrets backend gives keys
    to a head: the shipped API is measured with its auth and its Redis rate limit, the key's
    own limit set far above what wrk sends (the shipped 1000/s would cap the load instead).
    wrk sends the key from the environment (bench/predict.lua), never its command line."""
    key = new_api_key()
    entry = KeyEntry(hash=hash_api_key(key), role=Role.admin, rate_limit=10**9)
    hashes = json.dumps({"bench": entry.as_json()})
    state = cluster.up(cfg, {SECRET_ENV_PREFIX + API_KEY_HASHES.upper(): hashes}).state
    AUTH.update(auth_header(key))
    os.environ["RAY_APP_BENCH_KEY"] = key
    return state


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(url: str, ticker: str) -> bool:
    probe = {"tickers": [ticker]}
    answer = requests.post(f"{url}/v1/predict", json=probe, headers=AUTH, timeout=5)
    return answer.status_code == 200


def wait_until(check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server did not answer within {timeout_s:.0f}s")


def serve_config(settings: Settings, out: Path) -> tuple[Path, str]:
    """The repository's serve_config.yaml on free ports, reading the benchmark's store."""
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    port = free_port()
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    env = config["controller_options"]["runtime_env"]["env_vars"]
    env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(free_port())
    env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(free_port())
    args = config["applications"][0]["args"]
    args.update(data_root=settings.data_root, mlflow_tracking_uri=tracking_uri(settings))
    args["precompute"] = False  # first the per-request path: (b')
    path = out / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, f"http://127.0.0.1:{port}"


def models(url: str) -> dict[str, Any]:
    return dict(requests.get(f"{url}/v1/models", headers=AUTH, timeout=10).json())


def sources(url: str) -> tuple[int, int, int]:
    """Predictions so far: from precomputed tables, cache hits, cache misses (variant calls)."""
    cache = models(url)["cache"]
    return int(cache["precomputed"]), int(cache["hits"]), int(cache["misses"])


@contextmanager
def serve_app(settings: Settings, out: Path, ticker: str) -> Iterator[tuple[Path, str, str]]:
    """A head of its own (``cluster.up``) with the application deployed and ready."""
    cfg = ClusterSettings(
        state_dir=out / "cluster",
        dashboard_port=free_port(),
        metrics_port=free_port(),
        num_cpus=2,
    )
    state = keyed_head(cfg)
    os.environ.update(
        RAY_ADDRESS=state.gcs_address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=state.token_path
    )
    try:
        path, url = serve_config(settings, out)
        deploy(path, state.dashboard_url)
        wait_until(lambda: answers(url, ticker), READY_TIMEOUT_S)
        print(f"Serve: HAProxy {'on' if state.haproxy else 'off'}, {url}", flush=True)
        yield path, url, state.dashboard_url
    finally:
        cluster.down(cfg)


def precompute(path: Path, dashboard: str, url: str) -> None:
    """Turn the args' ``precompute`` on (new replicas) and wait for every variant's table."""
    config = yaml.safe_load(path.read_text())
    config["applications"][0]["args"]["precompute"] = True
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    deploy(path, dashboard)
    wait_on_every_replica(lambda: all(v["precomputed"] for v in models(url)["variants"]))


def apply(settings: Settings, path: Path, dashboard: str, url: str, change: Change) -> None:
    """``ray-app rollout`` with ``change``; returns once the ingress reports it."""
    rollout(settings, path, change, actor="bench_serve", reason="benchmark", address=dashboard)

    def applied() -> bool:
        state = models(url)
        weights = {v["name"]: v["weight"] for v in state["variants"]}
        ready = all(v["ready"] for v in state["variants"])
        shadow = (state["shadow"] or {}).get("variant")
        wanted_weight = change.challenger_weight
        log = state["prediction_log"]["enabled"]
        return (
            ready
            and (wanted_weight is None or weights["challenger"] == wanted_weight)
            and (change.shadow is None or shadow == change.shadow)
            and (not change.no_shadow or shadow is None)
            and (change.prediction_log is None or log == change.prediction_log)
        )

    wait_on_every_replica(applied)


def wait_on_every_replica(check: Callable[[], bool]) -> None:
    """Until ``check`` (a question to /v1/models) holds on every ingress replica: each
    answers for itself and HAProxy takes turns, so it must hold on several answers in a row.
    A single answer could let a run start while the other replica still lacked a precomputed
    table and so called the shadow once per request, which would weigh on (c) alone."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        wait_until(check, max(1.0, deadline - time.monotonic()))
        if all(check() for _ in range(REPLICA_ANSWERS)):
            return


# --- loading ----------------------------------------------------------------------------


def wrk(url: str, lines: Path, first: int, connections: int, seconds: float) -> Load:
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
        "--",
        str(lines),
        str(first),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk gave no result: {done.stderr or done.stdout}")
    r = json.loads(line.removeprefix("RESULT "))
    errors = sum(r[k] for k in ("status", "connect", "read", "write", "timeout"))
    return Load(r["requests"], r["duration_us"] / 1e6, r["p50_us"] / 1e3, r["p99_us"] / 1e3, errors)


class Offsets:
    """Where the next run starts in each request file, so ``history`` never repeats a key."""

    def __init__(self) -> None:
        self.next: dict[str, int] = {}

    def take(self, mix: str, used: int) -> int:
        first = self.next.get(mix, 0)
        self.next[mix] = first + used
        return first


def measure(
    targets: list[tuple[Target, Callable[[], None] | None]],
    files: dict[str, Path],
    offsets: Offsets,
    args: argparse.Namespace,
    rounds: int = 1,
) -> None:
    """Warm-up and measured wrk runs at each mix and concurrency. Several targets are
    measured in turn at each step (each after its set-up), ``rounds`` times, and each keeps
    its median run: whatever else the machine does over the minutes of the run weighs on
    their ratio as little as possible (one 15 s run apiece moved a ratio by 10%)."""
    for mix in MIXES:
        for connections in CONCURRENCY:
            loads: dict[str, list[Load]] = {target.label: [] for target, _ in targets}
            for _ in range(rounds):
                for target, set_up in targets:
                    if set_up is not None:
                        set_up()
                    load = load_once(target, files[mix], mix, offsets, connections, args)
                    loads[target.label].append(load)
                    target.answered += load.requests
            for target, _ in targets:
                ranked = sorted(loads[target.label], key=lambda run: run.rps)
                target.runs[(mix, connections)] = ranked[(len(ranked) - 1) // 2]
    used, total = offsets.next.get("history", 0), sum(1 for _ in files["history"].open())
    if used > total:
        print(f"  note: {used} history requests of {total} keys: some repeat")


def load_once(
    target: Target,
    lines: Path,
    mix: str,
    offsets: Offsets,
    connections: int,
    args: argparse.Namespace,
) -> Load:
    warm = wrk(target.url, lines, offsets.next.get(mix, 0), connections, args.warmup)
    offsets.take(mix, warm.requests + connections)
    before = target.sources() if target.sources else None
    load = wrk(target.url, lines, offsets.next.get(mix, 0), connections, args.seconds)
    offsets.take(mix, load.requests + connections)
    if target.sources and before:
        after = target.sources()
        load.sources = (after[0] - before[0], after[1] - before[1], after[2] - before[2])
    print(
        f"  {target.label} {mix:7} c={connections:<3} {load.rps:7.0f} req/s "
        f"p50 {load.p50_ms:6.2f} ms p99 {load.p99_ms:7.2f} ms errors {load.errors}",
        flush=True,
    )
    return load


# --- report -----------------------------------------------------------------------------


def ratio_text(target: Target, key: tuple[str, int]) -> str:
    """Requests/s against the target's baseline in the same step: (b), (b') to (a), (c) to (b)."""
    if target.against is None:
        return ""
    base = target.against
    return f"{target.runs[key].rps / base.runs[key].rps:.2f}x {base.label.split()[0]}"


def print_table(targets: list[Target]) -> None:
    head = (
        f"{'mix':8} {'conc':>4} | {'server':17} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>8} "
        f"{'errors':>6} {'pre/hit/miss':>18} | {'ratio':>10}"
    )
    print(head)
    print("-" * len(head))
    for mix in MIXES:
        for conc in CONCURRENCY:
            for target in targets:
                run = target.runs[(mix, conc)]
                src = "/".join(map(str, run.sources)) if run.sources else "-"
                print(
                    f"{mix:8} {conc:>4} | {target.label:17} {run.rps:7.0f} {run.p50_ms:7.2f} "
                    f"{run.p99_ms:8.2f} {run.errors:>6} {src:>18} | "
                    f"{ratio_text(target, (mix, conc)):>10}"
                )
        print()


def verdict(a: Target, b: Target, c: Target, d: Target) -> list[str]:
    lines = []
    for mix in MIXES:
        low = CONCURRENCY[0]
        ratio = b.runs[(mix, low)].rps / a.runs[(mix, low)].rps
        p50 = b.runs[(mix, low)].p50_ms
        shadow = min(c.runs[(mix, n)].rps / b.runs[(mix, n)].rps for n in CONCURRENCY)
        logged = min(d.runs[(mix, n)].rps / b.runs[(mix, n)].rps for n in CONCURRENCY)
        errors = sum(t.runs[(mix, n)].errors for t in (a, b, c, d) for n in CONCURRENCY)
        checks = {
            f"(b)/(a) {ratio:.2f}x >= {THROUGHPUT_TARGET}x at c={low}": ratio >= THROUGHPUT_TARGET,
            f"p50 {p50:.2f} ms <= {P50_TARGET_MS} ms at c={low}": p50 <= P50_TARGET_MS,
            f"(c)/(b) min {shadow:.2f}x >= {SHADOW_TARGET}x": shadow >= SHADOW_TARGET,
            f"(d)/(b) min {logged:.2f}x >= {SHADOW_TARGET}x": logged >= SHADOW_TARGET,
            f"{errors} errors": errors == 0,
        }
        marks = "; ".join(f"{text} {'PASS' if ok else 'FAIL'}" for text, ok in checks.items())
        lines.append(f"{mix}: {marks}")
    return lines


# --- main -------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tickers", type=int, default=50)
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=15.0, help="each measured run")
    parser.add_argument("--warmup", type=float, default=3.0, help="each warm-up run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="(b), (c), (d) in turn this many times; medians"
    )
    parser.add_argument("--out", type=Path, default=OUT / "serve")
    parser.add_argument("--smoke", action="store_true", help="10 tickers x 4 years, 5 s runs")
    parser.add_argument("--plain-server", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.tickers, args.years, args.seconds, args.warmup, args.rounds = 10, 4, 5.0, 1.0, 1
    return args


def main() -> None:
    args = parse_args()
    if args.plain_server is not None:
        serve_plain(args.out / "data", args.plain_server)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: install it (Debian: apt-get install wrk)")
    print(f"machine: {os.cpu_count()} cores, {load_note()}")
    t0 = time.perf_counter()
    folder = write_universe(args.tickers, args.years, args.seed, OUT)
    root = fresh_root(args.out) / "data"
    settings = build_store(root, folder)
    ticker = FeatureTable.load(settings).tickers[0]
    files = {}
    for mix in MIXES:
        files[mix] = args.out / f"{mix}.txt"
        files[mix].write_text("\n".join(request_lines(settings, mix, args.seed)) + "\n")
    print(
        f"store: {args.tickers} tickers x {args.years} years, champion and challenger "
        f"registered in {time.perf_counter() - t0:.0f}s",
        flush=True,
    )
    a = Target("(a) plain", "")
    with plain_server(args.out, ticker) as url:
        a.url = url
        measure([(a, None)], files, Offsets(), args)
    with serve_app(settings, args.out, ticker) as (path, url, dashboard):
        per_request = Target("(b') per-request", url, lambda: sources(url), against=a)
        b = Target("(b) 90/10", url, lambda: sources(url), against=a)
        c = Target("(c) shadow", url, lambda: sources(url), against=b)
        d = Target("(d) shadow+log", url, lambda: sources(url), against=b)
        offsets = Offsets()  # one app: no run repeats a history key another run asked
        apply(settings, path, dashboard, url, Change(challenger_weight=0.1, prediction_log=False))
        measure([(per_request, None)], files, offsets, args)
        precompute(path, dashboard, url)
        steps = [
            (b, Change(no_shadow=True, prediction_log=False)),
            (c, Change(shadow="challenger", shadow_fraction=1.0, prediction_log=False)),
            (d, Change(shadow="challenger", shadow_fraction=1.0, prediction_log=True)),
        ]
        measure(
            [
                (target, partial(apply, settings, path, dashboard, url, change))
                for target, change in steps
            ],
            files,
            offsets,
            args,
            rounds=args.rounds,
        )
        shadow = models(url)["shadow"]
        time.sleep(LOG_FLUSH_WAIT_S)  # the replicas' last batches reach the data root
    print(f"after the runs: {load_note()}; shadow counts: {shadow}")
    print(log_note(settings, d))
    print()
    print_table([a, per_request, b, c, d])
    for line in verdict(a, b, c, d):
        print(line)


def log_note(settings: Settings, logged: Target) -> str:
    """How many rows the prediction log holds against the predictions (d) answered: every
    answer a row, and every mirrored one a shadow row."""
    frame = read_predictions(DataRoot(settings.data_root))
    answered = logged.answered
    roles = frame["role"].value_counts().to_dict()
    return (
        f"prediction log: {len(frame)} row(s) {roles} for {answered} request(s) answered in "
        "(d)'s measured runs (its warm-ups and rollout probes add a few)"
    )


if __name__ == "__main__":
    main()
