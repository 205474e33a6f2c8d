"""The training layer: splits, the Ray Train loop, Ray Tune searches, evaluation, the gate.

Owns ``splits`` (walk-forward with an embargo), ``train`` (the loop shared by Ray Train,
Tune trials and evaluation refits), ``tune`` (Ray Tune + Optuna), ``evaluate`` (walk-forward
and holdout reports against baselines), ``gate`` (the quality gate and champion scoring)
and ``release`` (train, evaluate, register, gate, promote). May import ``registry``,
``models``, ``data`` and ``core``. Serving never imports it (``.importlinter``).
"""
