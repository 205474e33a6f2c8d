"""The operations layer: the local Ray head, connecting to Ray, and the serving end of the
daily pipeline.

Owns ``cluster`` (``ray-app cluster up/down/status``), ``runtime`` (``connect``: the only
place that calls ``ray.init``), ``deploy`` (``serve deploy`` of the registry's versions
and the smoke request) and ``backup`` (``ray-app backup/restore`` of a local data root). It
sits above training and serving; the Dagster assets of ``ray_app.orchestration``, the CLI
and ``jobs/`` sit above it.
"""
