"""Benchmark of HTTPS for the local prediction API: where TLS should terminate.

Why: Serve's HAProxy ingress (Ray's own config template) binds without TLS, so HTTPS needs
either (a) a TLS-terminating proxy in front of it, or (b) Serve's Python proxy, which honours
``http_options.ssl_keyfile``/``ssl_certfile``, instead of HAProxy. ``ray-app cluster up --tls``
does (a) with a second HAProxy (ray_app/ops/tls.py); this script measures whether that is the
faster choice, on the same application, with plain HTTP measured in the same run.

What it does, in one run:

1. builds the store of bench_serve.py (a synthetic universe, features, two registered MLPs:
   champion and challenger) and a certificate for localhost (``tls.local_certificate``:
   ECDSA P-256, the one `cluster up --tls` generates);
2. head 1 (``cluster.up`` with HAProxy, as ``ray-app cluster up``) runs the repository's
   ``serve_config.yaml`` application on free ports, every variant's predictions precomputed;
   ``cluster.start_tls`` adds the HTTPS front (as ``cluster up --tls``). Measured, in turn at
   each step: (p) plain HTTP to Serve's HAProxy, the baseline; (a) HTTPS through the front;
3. head 2 (``cluster.haproxy: false``), the same application on Serve's Python proxy
   (``RAY_SERVE_ENABLE_HA_PROXY=0``): (q) plain HTTP; then Serve is restarted with the
   certificate in ``http_options``: (b) HTTPS through the Python proxy;
4. each target is loaded with ``wrk`` (one thread, ``bench/predict.lua``, the ``latest`` mix of
   bench_serve.py: one ticker per request) after a warm-up: with keep-alive at 2, 16 and 64
   connections, and with ``Connection: close`` at 16 (a TCP connection, and a TLS handshake,
   per request: clients that do not reuse connections).

Figures: requests/s, p50 and p99 latency (ms), errors, and each target's requests/s as a
ratio of (p) at the same step (head 1, same run). The verdict compares (a) and (b) at every
step; the script exits 0 either way (it is a benchmark). wrk and the servers share the
machine; the 1-minute load average is printed before and after.

Run: ``.venv/bin/python bench/bench_tls.py`` (``--smoke``: 10 tickers x 4 years, 4 s runs);
needs ``wrk`` (Debian: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests
import yaml
from bench_data import OUT, fresh_root, load_note, write_universe
from bench_serve import (
    AUTH,
    LUA,
    SERVE_CONFIG,
    build_store,
    free_port,
    keyed_head,
    request_lines,
    wait_until,
)

from ray_app.core.raycli import ray_cli, token_env
from ray_app.core.settings import ClusterSettings, Settings, TlsSettings
from ray_app.ops import cluster, tls
from ray_app.registry.tracking import tracking_uri
from ray_app.serving.features import FeatureTable
from ray_app.serving.rollout import deploy

STEPS = (("keep-alive", 2), ("keep-alive", 16), ("keep-alive", 64), ("close", 16))
READY_TIMEOUT_S = 240.0


@dataclass
class Run:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


@dataclass
class Target:
    key: str
    label: str
    url: str = ""
    runs: dict[str, Run] = field(default_factory=dict)


def wrk(url: str, lines: Path, mode: str, connections: int, seconds: float) -> Run:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    command += ["--timeout", "10s", "-s", str(LUA), url, "--", str(lines), "0"]
    if mode == "close":
        command.append("close")
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk gave no result: {done.stderr or done.stdout}")
    r = json.loads(line.removeprefix("RESULT "))
    errors = sum(r[k] for k in ("status", "connect", "read", "write", "timeout"))
    return Run(r["requests"], r["duration_us"] / 1e6, r["p50_us"] / 1e3, r["p99_us"] / 1e3, errors)


def measure(targets: list[Target], lines: Path, args: argparse.Namespace) -> None:
    """Each step (mode, connections) for every target in turn: drift weighs little on ratios."""
    for mode, connections in STEPS:
        step = f"{mode} c={connections}"
        for target in targets:
            wrk(target.url, lines, mode, connections, args.warmup)
            run = wrk(target.url, lines, mode, connections, args.seconds)
            target.runs[step] = run
            print(
                f"  {target.label:28} {step:15} {run.rps:7.0f} req/s  p50 {run.p50_ms:7.2f} ms"
                f"  p99 {run.p99_ms:8.2f} ms  errors {run.errors}",
                flush=True,
            )


# --- the application on a head --------------------------------------------------------------


def serve_config(settings: Settings, out: Path, name: str, *, haproxy: bool) -> Path:
    """The repository's serve_config.yaml on free ports, reading the benchmark's store."""
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": free_port()}
    env = config["controller_options"]["runtime_env"]["env_vars"]
    env["RAY_SERVE_ENABLE_HA_PROXY"] = "1" if haproxy else "0"
    env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(free_port())
    env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(free_port())
    args = config["applications"][0]["args"]
    args.update(data_root=settings.data_root, mlflow_tracking_uri=tracking_uri(settings))
    path = out / f"serve_config.{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def http_url(path: Path) -> str:
    options = yaml.safe_load(path.read_text())["http_options"]
    scheme = "https" if options.get("ssl_certfile") else "http"
    return f"{scheme}://127.0.0.1:{options['port']}"


def ready(url: str, ticker: str, ca: Path | None) -> bool:
    verify: str | bool = str(ca) if ca else True
    probe = requests.post(
        f"{url}/v1/predict", json={"tickers": [ticker]}, headers=AUTH, timeout=5, verify=verify
    )
    if probe.status_code != 200:
        return False
    models = requests.get(f"{url}/v1/models", headers=AUTH, timeout=5, verify=verify)
    variants = models.json()["variants"]
    return all(v["ready"] and v.get("precomputed", True) for v in variants)


@contextmanager
def head(out: Path, *, haproxy: bool) -> Iterator[tuple[ClusterSettings, cluster.ClusterState]]:
    cfg = ClusterSettings(
        state_dir=out / "cluster",
        dashboard_port=free_port(),
        metrics_port=free_port(),
        num_cpus=os.cpu_count() or 2,
        haproxy=haproxy,
        tls=TlsSettings(port=free_port()),
    )
    state = keyed_head(cfg)
    try:
        yield cfg, state
    finally:
        cluster.down(cfg)


def serve_shutdown(dashboard: str) -> None:
    env = {**os.environ, **token_env()}
    command = [ray_cli("serve"), "shutdown", "-y", "-a", dashboard]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)


# --- report ------------------------------------------------------------------------------


def print_table(targets: list[Target], base: Target) -> None:
    head_line = (
        f"{'step':15} | {'target':28} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>8} {'err':>4} | ratio"
    )
    print(head_line)
    print("-" * len(head_line))
    for mode, connections in STEPS:
        step = f"{mode} c={connections}"
        for target in targets:
            run = target.runs[step]
            ratio = run.rps / base.runs[step].rps
            print(
                f"{step:15} | {target.label:28} {run.rps:7.0f} {run.p50_ms:7.2f} "
                f"{run.p99_ms:8.2f} {run.errors:>4} | {ratio:.2f}x (p)"
            )
        print()


def verdict(front: Target, python: Target) -> str:
    wins = [step for step in front.runs if front.runs[step].rps > python.runs[step].rps]
    faster = "front HAProxy" if len(wins) * 2 > len(front.runs) else "Serve's Python proxy"
    speedups = ", ".join(
        f"{step}: {front.runs[step].rps / python.runs[step].rps:.1f}x" for step in front.runs
    )
    return f"faster HTTPS: {faster} (front/Python proxy requests/s: {speedups})"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tickers", type=int, default=20)
    parser.add_argument("--years", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=10.0, help="each measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="each warm-up run")
    parser.add_argument("--out", type=Path, default=OUT / "tls")
    parser.add_argument("--smoke", action="store_true", help="10 tickers x 4 years, 4 s runs")
    args = parser.parse_args()
    if args.smoke:
        args.tickers, args.years, args.seconds, args.warmup = 10, 4, 4.0, 1.0
    return args


def main() -> None:
    args = parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: install it (Debian: apt-get install wrk)")
    print(f"machine: {os.cpu_count()} cores, {load_note()}", flush=True)
    folder = write_universe(args.tickers, args.years, args.seed, OUT)
    root = fresh_root(args.out) / "data"
    settings = build_store(root, folder)
    ticker = FeatureTable.load(settings).tickers[0]
    lines = args.out / "latest.txt"
    lines.write_text("\n".join(request_lines(settings, "latest", args.seed)) + "\n")
    cert = tls.local_certificate(args.out / "cert", tls.certificate_names([]))
    assert cert.ca is not None
    plain = Target("p", "(p) HTTP, Serve's HAProxy")
    front = Target("a", "(a) HTTPS, front HAProxy")
    python_plain = Target("q", "(q) HTTP, Python proxy")
    python_tls = Target("b", "(b) HTTPS, Python proxy")

    with head(args.out, haproxy=True) as (cfg, state):
        path = serve_config(settings, args.out, "haproxy", haproxy=True)
        deploy(path, state.dashboard_url)
        plain.url = http_url(path)
        wait_until(lambda: ready(plain.url, ticker, None), READY_TIMEOUT_S)
        upstream = yaml.safe_load(path.read_text())["http_options"]["port"]
        tls_cfg = cfg.model_copy(
            update={
                "tls": TlsSettings(port=cfg.tls.port, certfile=cert.certfile, keyfile=cert.keyfile)
            }
        )
        state = cluster.start_tls(tls_cfg, state, upstream)
        assert state.tls is not None
        front.url = f"https://127.0.0.1:{cfg.tls.port}"
        wait_until(lambda: ready(front.url, ticker, cert.ca), READY_TIMEOUT_S)
        measure([plain, front], lines, args)

    with head(args.out, haproxy=False) as (cfg, state):
        path = serve_config(settings, args.out, "python", haproxy=False)
        deploy(path, state.dashboard_url)
        python_plain.url = http_url(path)
        wait_until(lambda: ready(python_plain.url, ticker, None), READY_TIMEOUT_S)
        measure([python_plain], lines, args)
        serve_shutdown(state.dashboard_url)
        config = yaml.safe_load(path.read_text())
        config["http_options"].update(
            ssl_keyfile=str(cert.keyfile), ssl_certfile=str(cert.certfile)
        )
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        deploy(path, state.dashboard_url)
        python_tls.url = http_url(path)
        wait_until(lambda: ready(python_tls.url, ticker, cert.ca), READY_TIMEOUT_S)
        measure([python_tls], lines, args)

    print(f"after the runs: {load_note()}")
    print()
    targets = [plain, front, python_plain, python_tls]
    print_table(targets, plain)
    print(verdict(front, python_tls))
    results = {
        t.key: {"label": t.label, **{s: asdict(r) for s, r in t.runs.items()}} for t in targets
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
