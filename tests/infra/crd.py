"""Validate custom resources offline against their CustomResourceDefinition, strictly.

A CRD's ``openAPIV3Schema`` is what the API server checks a manifest against. This module turns
it into a JSON Schema (draft 2020-12) that is as strict as ``kubectl apply`` with its default
``--validate=strict`` field validation, so a mistyped field is an error rather than silently
pruned:

- every object schema with ``properties`` and no ``additionalProperties`` gets
  ``additionalProperties: false``, unless it carries ``x-kubernetes-preserve-unknown-fields``;
  an ``x-kubernetes-embedded-resource`` also allows ``apiVersion``, ``kind`` and ``metadata``;
- ``x-kubernetes-int-or-string`` becomes "integer or string"; ``nullable`` admits ``null``;
- ``format: int32`` / ``int64`` bound integers to their range; Go regex patterns with inline
  flags after ``^`` are rewritten for Python;
- ``x-kubernetes-list-type: set`` means unique items, and ``map`` means unique items by the
  ``x-kubernetes-list-map-keys`` (missing keys take the item schema's default, as the API server
  does: a container port without ``protocol`` is TCP);
- the top-level ``apiVersion`` and ``kind`` must name the CRD's group/version and kind, and
  ``metadata`` is checked as a Kubernetes ObjectMeta (schema from ``kubernetes-validate``).

Not checked, as nothing offline can: CEL rules (``x-kubernetes-validations``), admission
webhooks, and enums the CRD does not declare (KubeRay's upgradeStrategy.type, for one).

The CRDs are read in place from ``../shared/schemas`` (next to the repository), one folder per
API group (:data:`CRD_FOLDERS`): KubeRay's ``ray.io`` kinds, the Prometheus operator's
``monitoring.coreos.com`` and Argo CD's ``argoproj.io``. Callers skip with
:func:`missing_reason` where a folder is absent.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO.parent / "shared" / "schemas"
KUBERAY_CRDS = SCHEMAS / "kuberay-crds"
PROMETHEUS_CRDS = SCHEMAS / "prometheus-operator-crds"
ARGOCD_CRDS = SCHEMAS / "argocd-crds"
CRD_FOLDERS = {
    "ray.io": KUBERAY_CRDS,
    "monitoring.coreos.com": PROMETHEUS_CRDS,
    "argoproj.io": ARGOCD_CRDS,
}


def missing_reason(folder: Path) -> str:
    return (
        f"CRDs not found at {folder} (shared/schemas is only present in the dev workspace and CI)"
    )


MISSING_REASON = missing_reason(KUBERAY_CRDS)

_BASE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BASE_LOADER):  # type: ignore[misc,valid-type]
    """The safe loader, reading YAML 1.1's ``=`` (value tag) as the plain string it is in
    Kubernetes (the AlertmanagerConfig CRD has it in an enum)."""


_Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: node.value)
_LOADER = _Loader
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_K8S_DEFS_ID = "https://kubernetes.io/api/_definitions.json"
_OBJECT_META_REF = f"{_K8S_DEFS_ID}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def crds_available(folder: Path = KUBERAY_CRDS) -> bool:
    return folder.is_dir()


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty documents of a (multi-document) YAML file."""
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.load_all(fh, Loader=_LOADER) if doc is not None]


_GO_LEADING_FLAGS = re.compile(r"^\^\(\?([imsU]+)\)")


def python_pattern(pattern: str) -> str:
    """A Go (RE2) ``pattern`` as Python's ``re`` reads it: RE2 allows inline flags after ``^``
    (``^(?i)(abort|warn)?$`` in the PrometheusRule CRD), Python only at the very start."""
    match = _GO_LEADING_FLAGS.match(pattern)
    if match is None:
        return pattern
    return f"(?{match.group(1)})^{pattern[match.end() :]}"


def to_json_schema(node: Any) -> Any:
    """A strict JSON Schema equivalent of one OpenAPI v3 structural schema node (recursive)."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("x-kubernetes-validations", "description", "example"):
            continue  # CEL rules cannot be evaluated here; prose is not a constraint
        elif key == "pattern" and isinstance(value, str):
            out[key] = python_pattern(value)
        else:
            out[key] = to_json_schema(value)

    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.get("nullable"):
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
    if out.get("type") == "integer" and out.get("format") in _INT_RANGES:
        low, high = _INT_RANGES[out["format"]]
        out.setdefault("minimum", low)
        out.setdefault("maximum", high)
    if out.get("x-kubernetes-embedded-resource") and "properties" in out:
        for implicit in ("apiVersion", "kind"):
            out["properties"].setdefault(implicit, {"type": "string"})
        out["properties"].setdefault("metadata", {"type": "object"})
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    return out


def _list_map_keys(validator, keys, instance, schema) -> Iterator[jsonschema.ValidationError]:
    """``x-kubernetes-list-type: map``: no two items may share the same key values."""
    if schema.get("x-kubernetes-list-type") != "map" or not isinstance(instance, list):
        return
    item_props = schema.get("items", {}).get("properties", {})
    seen: dict[tuple[Any, ...], int] = {}
    for index, item in enumerate(instance):
        if not isinstance(item, dict):
            continue
        key = tuple(item.get(k, item_props.get(k, {}).get("default")) for k in keys)
        if key in seen:
            shown = ", ".join(f"{k}={v!r}" for k, v in zip(keys, key, strict=True))
            yield jsonschema.ValidationError(
                f"items {seen[key]} and {index} share the list-map key ({shown})"
            )
        else:
            seen[key] = index


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"x-kubernetes-list-map-keys": _list_map_keys}
)


@functools.cache
def _k8s_definitions() -> Resource:
    """Kubernetes' own definitions (ObjectMeta, ...) as shipped, strict, by kubernetes-validate."""
    import kubernetes_validate.utils as kv

    folder = f"kubernetes-json-schema/v{kv.latest_version()}-local-strict"
    contents = kv.schema_contents(f"{folder}/_definitions.json", kv.latest_version())
    return Resource.from_contents(contents)


def crd_file(kind: str, group: str = "ray.io") -> Path:
    """The CRD file of a kind: ``RayCluster`` -> ``kuberay-crds/ray.io_rayclusters.yaml``,
    ``PodMonitor`` -> ``...monitoring.coreos.com_podmonitors.yaml``, ``Application`` ->
    ``argocd-crds/application-crd.yaml``."""
    if group not in CRD_FOLDERS:
        raise ValueError(f"no CRDs for API group {group!r}; known: {sorted(CRD_FOLDERS)}")
    folder = CRD_FOLDERS[group]
    for name in (f"{group}_{kind.lower()}s.yaml", f"{kind.lower()}-crd.yaml"):
        if (folder / name).is_file():
            return folder / name
    return folder / f"{group}_{kind.lower()}s.yaml"


@functools.cache
def crd_schema(kind: str, version: str = "v1", group: str = "ray.io") -> dict[str, Any]:
    """The strict JSON Schema of a whole ``<kind>`` object of API version ``<group>/<version>``."""
    path = crd_file(kind, group)
    if not path.is_file():
        raise FileNotFoundError(f"no CRD for kind {kind!r}: {path} does not exist")
    (crd,) = load_yaml_documents(path)
    if (
        crd.get("kind") != "CustomResourceDefinition"
        or crd["spec"]["names"]["kind"] != kind
        or crd["spec"]["group"] != group
    ):
        raise ValueError(f"{path} is not the CustomResourceDefinition of {kind}")
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    if version not in versions:
        raise ValueError(f"{kind} has no version {version!r}; it has {sorted(versions)}")
    schema = to_json_schema(versions[version]["schema"]["openAPIV3Schema"])
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"const": f"{crd['spec']['group']}/{version}"}
    props["kind"] = {"const": kind}
    props["metadata"] = {"$ref": _OBJECT_META_REF}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


@functools.cache
def _validator(kind: str, version: str, group: str) -> jsonschema.protocols.Validator:
    registry: Registry = Registry().with_resource(_K8S_DEFS_ID, _k8s_definitions())
    schema = crd_schema(kind, version, group)
    _Validator.check_schema(schema)
    return _Validator(schema, registry=registry)


def validation_errors(doc: dict[str, Any]) -> list[str]:
    """Every way ``doc`` breaks its CRD, as ``path: message`` lines; empty when it is valid.

    The kind, group and version come from the document itself (``apiVersion: ray.io/v1``).
    """
    api_version = str(doc.get("apiVersion", ""))
    group, _, version = api_version.partition("/")
    if group not in CRD_FOLDERS or not version:
        return [f"apiVersion: {api_version!r} is not a custom resource of {sorted(CRD_FOLDERS)}"]
    kind = str(doc.get("kind", ""))
    validator = _validator(kind, version, group)
    errors = sorted(validator.iter_errors(doc), key=lambda e: e.json_path)
    return [f"{e.json_path}: {e.message}" for e in errors]


def is_custom_resource(doc: dict[str, Any]) -> bool:
    """Whether ``doc`` is of an API group whose CRDs :func:`validation_errors` knows."""
    return str(doc.get("apiVersion", "")).partition("/")[0] in CRD_FOLDERS


def dump_schema(kind: str, version: str = "v1", group: str = "ray.io") -> str:
    """The converted schema as JSON text, to inspect what is being enforced."""
    return json.dumps(crd_schema(kind, version, group), indent=2, sort_keys=True)
