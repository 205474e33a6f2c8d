"""Connecting entrypoints to Ray; library code never calls ``ray.init`` itself."""

from __future__ import annotations

import logging
import os
from typing import Any

from ray_app.core.errors import RayAppError
from ray_app.core.settings import Settings


class RayUnavailableError(RayAppError, RuntimeError):
    """Ray could not be reached at the configured address."""


def connect(settings: Settings) -> None:
    """Join the cluster at ``settings.ray.address`` (or ``RAY_ADDRESS``), else the local one.

    With neither, it joins the head `ray-app cluster up` started, else a cluster Ray finds
    on this machine, else starts one; ``ray.num_cpus`` always starts a private instance.

    Ray Data's own progress bars are switched off: the CLI draws one bar per stage instead.
    """
    import ray
    from ray.data import DataContext

    if ray.is_initialized():
        return
    address = settings.ray.address or os.environ.get("RAY_ADDRESS")
    if not address and not settings.ray.num_cpus:
        address = _local_head(settings)
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        _probe(address)
        kwargs["address"] = address
    elif settings.ray.num_cpus:  # a sized instance of our own, even if a cluster runs here
        kwargs.update(address="local", num_cpus=settings.ray.num_cpus, include_dashboard=False)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError) as exc:
        where = address or "a new local instance"
        raise RayUnavailableError(
            f"cannot reach Ray at {where}: {exc}. Start a head (`ray start --head --port 6380`)"
            " or unset RAY_ADDRESS to run on a local instance"
        ) from None
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # Per-operator resource reservation keeps one map task in flight on a 2-CPU cluster;
    # our pipelines are a single map stage, so it only costs parallelism.
    context.op_resource_reservation_enabled = False


def _probe(address: str) -> None:
    """Fail in a second, not after Ray's minutes of retries, when nothing listens there."""
    from ray_app.ops.cluster import port_in_use

    host, _, port = address.rpartition(":")
    if "://" in address or not port.isdigit():
        return  # ray://, auto or a URL: Ray resolves these itself
    if not port_in_use(int(port), host or "127.0.0.1"):
        raise RayUnavailableError(
            f"no Ray head answers at {address}: start one with `ray-app cluster up`, "
            "or fix RAY_ADDRESS / ray.address"
        )


def _local_head(settings: Settings) -> str | None:
    """The head `ray-app cluster up` started, with its token made known to this process."""
    from ray_app.ops.cluster import running

    state = running(settings.cluster)
    if state is None:
        return None
    os.environ.update({k: v for k, v in state.env.items() if k != "RAY_ADDRESS"})
    # Ray reads RAY_AUTH_MODE into its C++ config when first imported; re-read it, as
    # Ray itself does when it turns token auth on for a new local cluster.
    from ray._raylet import Config  # type: ignore[attr-defined]

    Config.initialize("")
    return state.gcs_address
