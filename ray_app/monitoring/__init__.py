"""The monitoring layer: how the served models do once the outcomes are known.

Owns ``outcomes`` (served predictions joined with the realised next-day returns, scored per
variant, model version and day, and over rolling windows: the ``monitor`` step), the A/B
statistics (``ab``, ``stats``, ``report``, ``promotion``) and drift. Reads what serving logged
and ingest stored through ``data``, and writes MLflow metrics through ``registry``; may import
``registry``, ``models``, ``data`` and ``core``, never ``training``.
"""
