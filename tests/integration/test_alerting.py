"""An alert reaches someone: a real Prometheus and Alertmanager, on 127.0.0.1, end to end.

A drift table with a feature over its threshold is written under a data root with the drift
step's own writer; a Ray actor on the session's head runs the ingress's exporter
(``ray_app.serving.quality.QualityGauges``, the code the prediction API runs), so the gauges
go out through the head's metrics export port; Prometheus scrapes that port and evaluates the
real rules file, whose ``for:`` durations are shortened here by code; Alertmanager runs the
real ``monitoring/alertmanager.yml``, whose webhooks are pointed by code at a tiny HTTP
server in this test. The test measures the time from the exporter's start to the webhook's
POST of ``RayAppFeatureDrift`` and asserts it stays within ``DELIVERY_BOUND_S``.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from ray_app.core.storage import DataRoot
from ray_app.data.drift_table import FEATURE, PREDICTION, write_drift
from tests.conftest import REPO, Head, free_port
from tests.infra.project import find_tool

pytestmark = pytest.mark.integration

RULES = REPO / "monitoring" / "prometheus" / "alerts.yml"
ALERTMANAGER = REPO / "monitoring" / "alertmanager.yml"
# Ray's metrics agent reports every few seconds, Prometheus scrapes and evaluates every second,
# Alertmanager waits a second before it sends a group.
DELIVERY_BOUND_S = 40.0
SHORT_FOR = "1s"


@dataclass
class Receiver:
    """The webhook: every POSTed alert with the time it arrived."""

    url: str
    alerts: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def first(self, alertname: str) -> tuple[float, dict[str, Any]] | None:
        return next((a for a in self.alerts if a[1]["labels"]["alertname"] == alertname), None)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            now = time.monotonic()
            found.alerts += [(now, alert) for alert in body["alerts"]]
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    found.url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield found
    server.shutdown()


def short_rules(into: Path) -> Path:
    """The real rules file with every ``for:`` shortened, so a test need not wait an hour."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = SHORT_FOR
    path = into / "alerts.yml"
    path.write_text(yaml.safe_dump(rules))
    return path


def local_alertmanager(into: Path, webhook: str) -> Path:
    """The real Alertmanager config with its webhooks sent here and its waits shortened."""
    config = yaml.safe_load(ALERTMANAGER.read_text())
    for route in [config["route"], *config["route"].get("routes", [])]:
        route.update({"group_wait": "1s", "group_interval": "1s"})
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook
    path = into / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def prometheus_config(into: Path, metrics: str, alertmanager: str) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(short_rules(into))],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": [metrics]}]}],
    }
    path = into / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def servers(tmp_path: Path, ray_head: Head, receiver: Receiver) -> Iterator[str]:
    """Alertmanager and Prometheus on free ports; Prometheus's address."""
    prometheus, alertmanager = find_tool("prometheus"), find_tool("prometheus-alertmanager")
    if prometheus is None or alertmanager is None:
        pytest.skip("prometheus / prometheus-alertmanager not installed (Debian packages)")
    am_port, prom_port = free_port(), free_port()
    metrics = f"127.0.0.1:{ray_head.env['RAY_APP_CLUSTER__METRICS_PORT']}"
    commands = [
        [
            alertmanager,
            f"--config.file={local_alertmanager(tmp_path, receiver.url)}",
            f"--storage.path={tmp_path / 'am'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
        ],
        [
            prometheus,
            f"--config.file={prometheus_config(tmp_path, metrics, f'127.0.0.1:{am_port}')}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
    ]
    logs = [(tmp_path / f"{Path(c[0]).name}.log").open("w") for c in commands]
    procs = [
        subprocess.Popen(c, stdout=log, stderr=subprocess.STDOUT)
        for c, log in zip(commands, logs, strict=True)
    ]
    try:
        yield f"http://127.0.0.1:{prom_port}"
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        for log in logs:
            log.close()


def drifted_table(day: dt.date) -> pd.DataFrame:
    common = {
        "day": pd.Timestamp(day),
        "variant": "champion",
        "model_name": "ray-app-daily-return",
        "model_version": "1",
        "ks_pvalue": 0.01,
        "psi_threshold": 0.2,
        "ks_threshold": 0.2,
        "n_reference": 5000,
        "n_current": 500,
        "reference_start": pd.Timestamp("2010-01-04"),
        "reference_end": pd.Timestamp("2012-06-29"),
        "source": "prediction_log",
    }
    return pd.DataFrame(
        [
            {**common, "kind": FEATURE, "name": "ret_1d", "psi": 0.9, "ks": 0.1, "drifted": True},
            {**common, "kind": FEATURE, "name": "vol_5d", "psi": 0.05, "ks": 0.1, "drifted": False},
            {**common, "kind": PREDICTION, "name": "predicted_return", "psi": 0.05, "ks": 0.1}
            | {"drifted": False},
        ]
    )


def test_a_drift_alert_reaches_the_webhook(
    ray_address: str, tmp_path: Path, servers: str, receiver: Receiver
) -> None:
    import ray

    from ray_app.serving.quality import QualityGauges

    root = tmp_path / "data"
    write_drift(DataRoot(str(root)), dt.date(2026, 3, 2), drifted_table(dt.date(2026, 3, 2)), "")

    @ray.remote(num_cpus=0)
    class Exporter:
        """What every ingress replica runs, in an actor of its own."""

        def __init__(self, uri: str) -> None:
            self.gauges = QualityGauges(DataRoot(uri), read_every_s=1.0, set_every_s=1.0)

        async def start(self) -> None:
            self.gauges.start()

    exporter = Exporter.remote(str(root))  # type: ignore[attr-defined]
    started = time.monotonic()
    ray.get(exporter.start.remote())
    try:
        while time.monotonic() - started < DELIVERY_BOUND_S:
            if receiver.first("RayAppFeatureDrift"):
                break
            time.sleep(0.2)
        delivered = receiver.first("RayAppFeatureDrift")
        assert delivered is not None, (
            f"no RayAppFeatureDrift at the webhook within {DELIVERY_BOUND_S:.0f} s; "
            f"Prometheus saw: {firing(servers)}"
        )
        at, alert = delivered
        print(f"alert delivered {at - started:.1f} s after the gauges were first exported")
        assert alert["labels"]["feature"] == "ret_1d" and alert["labels"]["variant"] == "champion"
        assert alert["labels"]["severity"] == "warning" and alert["status"] == "firing"
        assert "PSI 0.90" in alert["annotations"]["summary"]
        assert not [a for _, a in receiver.alerts if a["labels"].get("feature") == "vol_5d"]
    finally:
        ray.kill(exporter)


def firing(prometheus: str) -> list[str]:
    """The alerts Prometheus has, for a failure message."""
    with urllib.request.urlopen(f"{prometheus}/api/v1/alerts", timeout=5) as answer:
        alerts = json.loads(answer.read())["data"]["alerts"]
    return [f"{a['labels']['alertname']} {a['state']}" for a in alerts]
