"""The core layer: typed settings, the errors a user can fix, the data root and secrets.

Owns ``settings`` (one ``Settings`` object from YAML, environment and CLI options),
``errors`` (``RayAppError``), ``storage`` (``DataRoot``: atomic Parquet and JSON writes on
any pyarrow filesystem), ``secrets`` (one interface over environment, file and Vault
backends; values as ``SecretStr``, re-read every ``secrets.refresh_s``) and ``api_keys`` (the
HTTP API's key hashes, read through ``secrets``). May import nothing else of ray_app: every
other layer builds on it (enforced by import-linter, see ``.importlinter``).
"""
