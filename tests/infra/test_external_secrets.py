"""cluster/external-secrets/: External Secrets Operator objects, checked structurally (no ESO
CRD is in shared/schemas) and against what the code and the Ray manifests expect."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from ray_app.core.settings import VaultSettings
from tests.infra import crd, project

pytestmark = pytest.mark.infra

FOLDER = project.CLUSTER / "external-secrets"
API = "external-secrets.io/v1"
_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")  # Go's time.Duration


def documents() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(FOLDER.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in crd.load_yaml_documents(path)
    ]


def one(kind: str) -> dict[str, Any]:
    found = [d for d in documents() if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} under {FOLDER}"
    return found[0]


def _get(doc: dict[str, Any], dotted: str) -> Any:
    node: Any = doc
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


# The fields each kind needs for ESO to act on it (from ESO's v1 API reference).
REQUIRED = {
    "SecretStore": [
        "metadata.name",
        "spec.provider.vault.server",
        "spec.provider.vault.path",
        "spec.provider.vault.version",
        "spec.provider.vault.auth.kubernetes.mountPath",
        "spec.provider.vault.auth.kubernetes.role",
        "spec.provider.vault.auth.kubernetes.serviceAccountRef.name",
    ],
    "ExternalSecret": [
        "metadata.name",
        "spec.refreshInterval",
        "spec.secretStoreRef.name",
        "spec.secretStoreRef.kind",
        "spec.target.name",
        "spec.dataFrom",
    ],
}


def eso_errors(doc: dict[str, Any], stores: set[str]) -> list[str]:
    """What ESO would refuse or do wrong with ``doc``; ``stores``: the SecretStores beside it."""
    kind = doc.get("kind")
    if doc.get("apiVersion") != API or kind not in REQUIRED:
        return [f"not an {API} SecretStore or ExternalSecret: {doc.get('apiVersion')}/{kind}"]
    errors = [f"{field} is missing" for field in REQUIRED[kind] if not _get(doc, field)]
    if kind == "SecretStore":
        vault = _get(doc, "spec.provider.vault") or {}
        if vault.get("version") != "v2":
            errors.append("the vault provider must read KV version v2")
        if not str(vault.get("server", "")).startswith("https://"):
            errors.append("Vault must be reached over https")
    else:
        if not _DURATION.match(str(_get(doc, "spec.refreshInterval"))):
            errors.append("spec.refreshInterval is not a duration")
        ref = _get(doc, "spec.secretStoreRef") or {}
        if ref.get("kind") != "SecretStore" or ref.get("name") not in stores:
            errors.append(f"spec.secretStoreRef names no SecretStore here: {ref}")
        for entry in _get(doc, "spec.dataFrom") or []:
            if not _get(entry, "extract.key"):
                errors.append("every spec.dataFrom entry needs extract.key")
    return errors


def store_names() -> set[str]:
    return {d["metadata"]["name"] for d in documents() if d.get("kind") == "SecretStore"}


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_objects_have_what_eso_needs(doc: dict[str, Any]) -> None:
    assert eso_errors(doc, store_names()) == []


@pytest.mark.parametrize(
    ("kind", "mutate", "expected"),
    [
        ("SecretStore", lambda d: d.update(apiVersion="external-secrets.io/v1beta1"), "not an"),
        ("SecretStore", lambda d: d["spec"]["provider"]["vault"].update(version="v1"), "KV"),
        ("SecretStore", lambda d: d["spec"]["provider"]["vault"].pop("auth"), "auth.kubernetes"),
        ("ExternalSecret", lambda d: d["spec"].update(refreshInterval="soon"), "duration"),
        ("ExternalSecret", lambda d: d["spec"]["secretStoreRef"].update(name="x"), "names no"),
        ("ExternalSecret", lambda d: d["spec"].pop("target"), "spec.target.name is missing"),
    ],
)
def test_the_check_can_fail(kind: str, mutate: Any, expected: str) -> None:
    doc = copy.deepcopy(one(kind))
    mutate(doc)
    assert any(expected in e for e in eso_errors(doc, store_names()))


def test_they_read_what_the_vault_backend_reads() -> None:
    """The same KV mount and secret as ``secrets.vault``'s defaults, so one Vault layout
    serves pods (ESO) and machines outside the cluster (the vault backend)."""
    defaults = VaultSettings()
    assert one("SecretStore")["spec"]["provider"]["vault"]["path"] == defaults.mount
    keys = [e["extract"]["key"] for e in one("ExternalSecret")["spec"]["dataFrom"]]
    assert keys == [defaults.path]


def test_vault_logs_in_as_the_ray_pods_service_account(ray_cluster: dict[str, Any]) -> None:
    account = ray_cluster["spec"]["headGroupSpec"]["template"]["spec"]["serviceAccountName"]
    auth = one("SecretStore")["spec"]["provider"]["vault"]["auth"]["kubernetes"]
    assert auth["serviceAccountRef"]["name"] == account


def test_the_kustomization_builds_both_into_the_namespace() -> None:
    built = project.kustomize_build(FOLDER)
    assert sorted((d["kind"], d["metadata"]["namespace"]) for d in built) == [
        ("ExternalSecret", "ray-app"),
        ("SecretStore", "ray-app"),
    ]
