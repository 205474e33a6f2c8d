"""The monitoring layer: how the served models do once the outcomes are known.

Owns ``outcomes`` (served predictions joined with the realised next-day returns, scored per
variant, model version and day, and over rolling windows: the ``monitor`` step), the A/B
statistics (``ab``, ``stats``, ``report``, ``promotion``) and ``drift``. Reads what serving
logged, ingest stored and training registered through ``data`` and ``registry``, and writes
tables under the data root that the prediction API exports as gauges (serving never imports
this layer) and MLflow metrics through ``registry``. May import ``registry``, ``models``,
``data`` and ``core``, never ``training``.
"""
