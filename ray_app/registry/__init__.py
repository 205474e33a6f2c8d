"""The registry layer: everything that talks to MLflow.

Owns ``tracking`` (tracking URI, artifact location, lineage tags) and ``versions`` (the
pyfunc model, registration, aliases, promote and rollback), ``integrity`` (the files' hashes
and their check, without MLflow), ``audit`` (the hash-chained trail) and ``keys`` (audited API
key changes). It records the
quality gate's verdict but never scores a model, so serving can load models through it
without loading training code. May import ``models``, ``data`` and ``core``.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    """``ray_app.registry.DailyReturnModel``: the path under which every version registered
    before the package was split into layers pickled its pyfunc class, so that
    ``mlflow.pyfunc.load_model`` of such a version still finds it. The platform itself never
    unpickles a model (``versions.load_version`` reads weights and JSON). Imported lazily.
    """
    if name == "DailyReturnModel":
        from ray_app.registry.versions import DailyReturnModel

        return DailyReturnModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
