"""Connecting entrypoints to Ray; library code never calls ``ray.init`` itself."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ray_app.core.errors import RayAppError
from ray_app.core.raycli import use_token
from ray_app.core.settings import Settings

WORKER_SETUP_HOOK = "ray_app.core.logs.redact_every_record"


class RayUnavailableError(RayAppError, RuntimeError):
    """Ray could not be reached at the configured address."""


def connect(settings: Settings) -> None:
    """Join the cluster ``_address`` finds, else start a local instance for this command.

    The token is turned on for this process and what it starts (``use_token``) whatever
    the caller exported. Ray Data's own progress bars are switched off: the CLI draws one
    bar per stage instead.
    """
    import ray
    from ray.data import DataContext

    if ray.is_initialized():
        return
    use_token(settings.cluster.token_path)
    address = _address(settings)
    kwargs: dict[str, Any] = {
        "logging_level": logging.WARNING,
        "log_to_driver": True,
        # Every worker of the job redacts URI passwords from its log records (MLflow's too).
        "runtime_env": {"worker_process_setup_hook": WORKER_SETUP_HOOK},
    }
    if address:
        kwargs["address"] = address
    else:  # an instance of this command's own, even if a cluster runs here
        kwargs.update(address="local", num_cpus=settings.ray.num_cpus, include_dashboard=False)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError) as exc:
        where = address or "a new local instance"
        raise RayUnavailableError(
            f"cannot reach Ray at {where}: {exc}. Start a head (`ray-app cluster up`)"
            " or unset RAY_ADDRESS to run on a local instance"
        ) from None
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # Per-operator resource reservation keeps one map task in flight on a 2-CPU cluster;
    # our pipelines are a single map stage, so it only costs parallelism.
    context.op_resource_reservation_enabled = False


def _address(settings: Settings) -> str | None:
    """``ray.address``, else ``RAY_ADDRESS``, else the head `ray-app cluster up` started,
    else the cluster Ray's own pointer names if it answers; None: start a local instance.

    ``ray.num_cpus`` always starts a private instance of that size. Every address is
    probed first, so a dead one fails in a second instead of after Ray's minutes of retries.
    """
    explicit = settings.ray.address or os.environ.get("RAY_ADDRESS")
    if explicit:
        _probe(explicit)
        return explicit
    if settings.ray.num_cpus:
        return None
    return _local_head(settings) or _ray_pointer()


def _probe(address: str) -> None:
    """Fail in a second, not after Ray's minutes of retries, when nothing listens there."""
    if "://" in address or not address.rpartition(":")[2].isdigit():
        return  # ray://, auto or a URL: Ray resolves these itself
    if not _answers(address):
        raise RayUnavailableError(
            f"no Ray head answers at {address}: start one with `ray-app cluster up`, "
            "or fix RAY_ADDRESS / ray.address"
        )


def _answers(address: str) -> bool:
    from ray_app.ops.cluster import port_in_use

    host, _, port = address.rpartition(":")
    return port.isdigit() and port_in_use(int(port), host or "127.0.0.1")


def _local_head(settings: Settings) -> str | None:
    """The head `ray-app cluster up` started; one that died is an error, not a reason to
    run somewhere else."""
    from ray_app.ops.cluster import alive, recorded

    state = recorded(settings.cluster)
    if state is None:
        return None
    if not alive(state):
        raise RayUnavailableError(
            f"the Ray head at {state.gcs_address} (recorded in {settings.cluster.state_dir}) "
            "is dead: `ray-app cluster up` cleans up after it and starts a new one"
        )
    return state.gcs_address


def _ray_pointer() -> str | None:
    """The cluster the last `ray start` on this machine wrote into Ray's temp folder, if it
    still answers (a plain ``ray.init()`` would retry a dead one for minutes)."""
    from ray._common.utils import get_ray_address_file

    pointer = Path(get_ray_address_file(None))
    address = pointer.read_text().strip() if pointer.is_file() else ""
    return address if address and _answers(address) else None
