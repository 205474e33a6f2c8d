"""The orchestration layer: the daily pipeline as Dagster software-defined assets.

Owns ``assets`` (the bar source, raw bars, feature set, search, model release, deployment,
with their code versions, data versions and asset checks), ``definitions`` (the daily job,
the after-close schedule, the new-raw-data sensor, and the planner that picks the stale
assets), ``instance`` (Dagster's instance home and storage: SQLite under the data root, or
PostgreSQL), ``runner`` (``run_daily``: one run in-process, as `ray-app pipeline` and
jobs/pipeline.py do it) and ``location`` (the code location `dagster dev` loads).

It sits at the top, under the CLI only: the heavy work in each asset is the Ray code of the
layers below it, which every asset body reaches through ``ray_app.ops.runtime.connect``.
"""
