"""The operations layer: the local Ray head, connecting to Ray, and the daily pipeline.

Owns ``cluster`` (``ray-app cluster up/down/status``), ``runtime`` (``connect``: the only
place that calls ``ray.init``) and ``pipeline`` (ingest, features, search, release, deploy,
smoke request). It sits above training and serving and chains them; only the CLI and
``jobs/`` sit above it.
"""
