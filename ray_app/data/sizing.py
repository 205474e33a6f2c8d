"""How many Ray tasks a data stage splits its tickers into.

Ingest and features size their Ray Data map stages from the cluster's CPUs; this lives with
the data layer (not with ``ops.runtime``, which connects entry points to Ray) so that data
never imports the layer above it.
"""

from __future__ import annotations

import math


def blocks_for(items: int, per_cpu: int = 4) -> int:
    """How many Ray tasks to split ``items`` into: a few per CPU to balance load, no more."""
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return max(1, min(items, cpus * per_cpu))


def batch_size_for(items: int, per_cpu: int = 4) -> int:
    """Items per Ray Data batch, so ``items`` split into ``blocks_for(items)`` tasks."""
    return max(1, math.ceil(items / blocks_for(items, per_cpu)))
