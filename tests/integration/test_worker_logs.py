"""A Ray worker of a ray-app job redacts URI passwords from every log record it makes, a
library's included (``runtime.connect`` installs ``logs.redact_every_record`` as the job's
``worker_process_setup_hook``), on the session's real Ray head."""

from __future__ import annotations

import io
import logging

import pytest

pytestmark = pytest.mark.integration

URI = "postgresql://mlflow:s3cret@db:5432/mlflow"


def log_in_a_library() -> str:
    """What a library logger with a handler of its own writes (MLflow's lines in a worker
    reach Ray's handlers, never ours)."""
    stream = io.StringIO()
    library = logging.getLogger("mlflow.tracking.test")
    library.addHandler(logging.StreamHandler(stream))
    library.propagate = False
    library.warning("tracking store %s", URI)
    return stream.getvalue()


def test_a_worker_redacts_a_librarys_log_records(ray_address: str) -> None:
    import ray

    line = ray.get(ray.remote(num_cpus=0.1)(log_in_a_library).remote())
    assert line.strip() == "tracking store postgresql://***@db:5432/mlflow"
