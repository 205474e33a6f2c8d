"""ray-app: daily stock prediction on Ray, from one laptop to a KubeRay cluster.

Importing the package does nothing: every stage acts only when called, and only the
entrypoints (the CLI and jobs/) configure logging and connect to Ray.
"""

__version__ = "0.1.0"
