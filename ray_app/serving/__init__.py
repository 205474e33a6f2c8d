"""Online serving on Ray Serve: an ingress and one deployment per model variant.

``app.build_app`` is the entry point named by ``serve_config.yaml``; ``rollout`` changes
weights, the shadow and model versions of a running application through ``serve deploy``.
Nothing is imported here, so ``import ray_app.serve.args`` stays free of Ray and torch.
"""
