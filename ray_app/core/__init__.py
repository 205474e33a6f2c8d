"""The core layer: typed settings, the errors a user can fix, and the data root.

Owns ``settings`` (one ``Settings`` object from YAML, environment and CLI options),
``errors`` (``RayAppError``) and ``storage`` (``DataRoot``: atomic Parquet and JSON writes
on any pyarrow filesystem). May import nothing else of ray_app: every other layer builds on
it (enforced by import-linter, see ``.importlinter``).
"""
