"""The data layer: bars in, validated and versioned; point-in-time features out.

Owns the sources (sample, csv, yahoo), validation, ingest (raw Parquet + manifest, the data
version), the per-ticker feature functions and their target, the offline feature store
(feature sets per version), the online lookup (Parquet or Redis), the catalog behind
``ray-app data status``, and the tables the serving loop leaves under the data root: the
prediction log (``predictions``), the variants' precomputed signals (``signals``) and the
monitor's live metrics (``live_metrics``), whose layouts live here so that serving and
monitoring share them without importing each other. May import only ``core``; training,
serving and monitoring read what it wrote.
"""
