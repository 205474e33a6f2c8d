"""The models layer: model families, baselines, and how predictions are scored.

Owns ``networks`` (PyTorch MLP and GRU, the scaler, baselines, ``TrainedModel``) and
``metrics`` (RMSE, IC, backtests: shared by training's evaluation and, later, live
monitoring). May import ``core`` and ``data`` (the target's name), and never Ray, so a
model runs in any bare Python process (a forbidden contract in ``.importlinter``).
"""
