"""The serving layer: Ray Serve, an ingress and one deployment per model variant.

``app.build_app`` is the entry point named by ``serve_config.yaml``; ``rollout`` changes
weights, the shadow and model versions of a running application through ``serve deploy``.
It reads what training wrote (the registry, the feature store) but never imports training
(``.importlinter``). May import ``registry``, ``models``, ``data`` and ``core``.
Nothing is imported here, so ``import ray_app.serving.args`` stays free of Ray and torch.
"""
