"""What the end-to-end tests share: the daily pipeline submitted as `make run` does it, on a
smoke configuration of the sample data, and JSON over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO, free_port, local_auth

RAY = str(Path(sys.executable).with_name("ray"))


@dataclass(frozen=True)
class SmokePipeline:
    """A configuration that trains in seconds, and a Serve config on a port of its own."""

    config: Path
    serve_config: Path
    url: str


def smoke_pipeline(folder: Path, search: bool = True) -> SmokePipeline:
    """The smoke configuration; ``search=False`` trains the settings' hyperparameters
    instead of searching (for tests about something else than the pipeline's steps)."""
    port = free_port()
    serve_config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    serve_config["http_options"]["port"] = port
    serve_path = folder / "serve_config.yaml"
    serve_path.write_text(yaml.safe_dump(serve_config, sort_keys=False))
    url = f"http://127.0.0.1:{port}"
    config = {
        "ingest": {"source": "sample", "tickers": ["AAPL", "GOOG", "IBM", "MSFT"]},
        "split": {"n_folds": 2, "test_days": 60, "holdout_months": 3},
        "train": {"hparams": {"hidden_size": 8, "epochs": 2, "batch_size": 512}},
        "tune": {"num_samples": 2, "max_concurrent": 2, "scheduler": "none"},
        "pipeline": {"serve_config": str(serve_path), "serve_url": url, "search": search},
    }
    config_path = folder / "smoke.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return SmokePipeline(config_path, serve_path, url)


def submit_pipeline(
    dashboard: str, config: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """`ray job submit` of jobs/pipeline.py, as `make run` does it."""
    return subprocess.run(
        [
            RAY,
            "job",
            "submit",
            "--address",
            dashboard,
            "--working-dir",
            str(REPO),
            "--",
            sys.executable,  # the project's environment, as the head runs from it
            "jobs/pipeline.py",
            "--config",
            str(config),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def post(url: str, payload: dict[str, Any], timeout: float = 10) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"content-type": "application/json", **local_auth()}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
