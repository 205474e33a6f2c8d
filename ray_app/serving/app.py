"""``build_app``: the typed application builder that ``serve_config.yaml`` names.

The graph is an ingress and one deployment per model variant, composed with handles::

    HTTP -> Ingress (FastAPI; features, cache, routing, shadow) -> <variant> (@serve.batch)

``serve run serve_config.yaml`` and ``serve deploy serve_config.yaml`` validate the file's
``args`` into ``ServeArgs`` (Serve reads the annotation; this module must therefore not use
``from __future__ import annotations``) and call ``build_app``.
"""

from typing import cast

from ray.serve import Application, Deployment

from ray_app.serving import ingress, variant
from ray_app.serving.args import INGRESS, ServeArgs

# @serve.deployment turned both classes into Deployments; Ray's annotations do not say so.
Ingress = cast(Deployment, ingress.Ingress)
Variant = cast(Deployment, variant.Variant)


def build_app(args: ServeArgs) -> Application:
    """The serving graph for ``args``; the user_config of each deployment starts from the args
    and is what ``ray-app rollout`` changes afterwards."""
    variants = {
        spec.name: Variant.options(
            name=spec.name,
            ray_actor_options={"num_cpus": args.num_cpus.variant},
            user_config=args.variant_config(spec).model_dump(mode="json"),
        ).bind(spec.name, args)
        for spec in args.variants
    }
    return Ingress.options(
        name=INGRESS,
        ray_actor_options={"num_cpus": args.num_cpus.ingress},
        user_config=args.ingress_config().model_dump(mode="json"),
    ).bind(args, variants)
