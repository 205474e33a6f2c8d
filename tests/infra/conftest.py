"""Fixtures of the static infrastructure checks: parsed files and the schemas in ../shared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.infra import crd, project


@pytest.fixture(scope="session")
def ray_version() -> str:
    return project.ray_version()


@pytest.fixture(scope="session")
def kuberay_crds() -> Path:
    """The KubeRay CRD folder, read in place; the test skips where it is absent."""
    if not crd.crds_available():
        pytest.skip(crd.MISSING_REASON)
    return crd.KUBERAY_CRDS


@pytest.fixture(scope="session")
def grafana_schemas() -> Path:
    if not project.GRAFANA_SCHEMAS.is_dir():
        pytest.skip(
            f"Grafana dashboard schemas not found at {project.GRAFANA_SCHEMAS} "
            "(shared/schemas is only present in the dev workspace and CI)"
        )
    return project.GRAFANA_SCHEMAS


@pytest.fixture(scope="session")
def ray_cluster() -> dict[str, Any]:
    """The RayCluster document of cluster/ray-cluster.yaml."""
    docs = crd.load_yaml_documents(project.CLUSTER / "ray-cluster.yaml")
    clusters = [d for d in docs if d.get("kind") == "RayCluster"]
    assert len(clusters) == 1, "cluster/ray-cluster.yaml must hold exactly one RayCluster"
    return clusters[0]


@pytest.fixture(scope="session")
def prometheus_crds() -> Path:
    """The prometheus-operator CRD folder, read in place; the test skips where it is absent."""
    if not crd.crds_available(crd.PROMETHEUS_CRDS):
        pytest.skip(crd.missing_reason(crd.PROMETHEUS_CRDS))
    return crd.PROMETHEUS_CRDS


@pytest.fixture(scope="session")
def argocd_crds() -> Path:
    """The Argo CD CRD folder, read in place; the test skips where it is absent."""
    if not crd.crds_available(crd.ARGOCD_CRDS):
        pytest.skip(crd.missing_reason(crd.ARGOCD_CRDS))
    return crd.ARGOCD_CRDS
