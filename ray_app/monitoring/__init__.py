"""The monitoring layer: live quality, A/B statistics and drift of what is served.

It reads what serving logged and training registered (the prediction log, the feature store,
the registry) and writes tables under the data root that the prediction API exports as
gauges. May import registry, models, data and core; serving never imports it.
"""
