"""Monitoring: live quality from realised returns, paired A/B evidence, drift.

It reads what training and serving wrote (the registry, the feature store, the prediction
log) and never imports training; serving never imports it.
"""
