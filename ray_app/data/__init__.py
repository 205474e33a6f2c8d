"""The data layer: bars in, validated and versioned; point-in-time features out.

Owns the sources (sample, csv, yahoo), validation, ingest (raw Parquet + manifest, the data
version), the per-ticker feature functions and their target, the offline feature store
(feature sets per version), the online lookup (Parquet or Redis) and the catalog behind
``ray-app data status``. May import only ``core``; training and serving read what it wrote.
"""
