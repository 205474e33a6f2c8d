"""cert-manager objects (``cert-manager.io/v1`` Issuer and Certificate), checked structurally.

No cert-manager CRD is in ../shared/schemas, so, as for the External Secrets objects
(test_external_secrets.py), the fields the chart uses are written down here from cert-manager's
v1 API reference (https://cert-manager.io/docs/reference/api-docs/) and checked strictly: a
field outside this subset (a typo, or one this file does not know yet) is an error to review,
types, enums and Go durations are checked, and ``metadata`` is a Kubernetes ObjectMeta.
"""

from __future__ import annotations

import functools
from typing import Any

import jsonschema

API_VERSION = "cert-manager.io/v1"
GROUP = "cert-manager.io"
DURATION = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"  # Go's time.Duration
_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}
_STRINGS = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


_METADATA = _object(
    {
        "name": _NAME,
        "namespace": _NAME,
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    ("name", "namespace"),
)
_ISSUER_REF = _object(
    {
        "name": _NAME,
        "kind": {"enum": ["Issuer", "ClusterIssuer"]},
        "group": {"const": GROUP},
    },
    ("name",),
)
_USAGES = [
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
]
CERTIFICATE_SPEC = _object(
    {
        "secretName": _NAME,
        "commonName": {"type": "string", "minLength": 1, "maxLength": 64},
        "dnsNames": _STRINGS,
        "ipAddresses": _STRINGS,
        "isCA": {"type": "boolean"},
        "duration": {"type": "string", "pattern": DURATION},
        "renewBefore": {"type": "string", "pattern": DURATION},
        "usages": {"type": "array", "items": {"enum": _USAGES}, "uniqueItems": True},
        "privateKey": _object(
            {
                "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                "size": {"type": "integer"},
                "encoding": {"enum": ["PKCS1", "PKCS8"]},
                "rotationPolicy": {"enum": ["Never", "Always"]},
            }
        ),
        "issuerRef": _ISSUER_REF,
    },
    ("secretName", "issuerRef"),
)
ISSUER_SPEC = {
    **_object(
        {
            "selfSigned": _object({"crlDistributionPoints": _STRINGS}),
            "ca": _object(
                {"secretName": _NAME, "crlDistributionPoints": _STRINGS, "ocspServers": _STRINGS},
                ("secretName",),
            ),
        }
    ),
    "minProperties": 1,
    "maxProperties": 1,  # exactly one issuer type
}
SPECS = {"Certificate": CERTIFICATE_SPEC, "Issuer": ISSUER_SPEC}


def is_cert_manager(doc: dict[str, Any]) -> bool:
    return str(doc.get("apiVersion", "")).partition("/")[0] == GROUP


@functools.cache
def _validator(kind: str) -> jsonschema.protocols.Validator:
    schema = _object(
        {
            "apiVersion": {"const": API_VERSION},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": SPECS[kind],
        },
        ("apiVersion", "kind", "metadata", "spec"),
    )
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validation_errors(doc: dict[str, Any]) -> list[str]:
    """How ``doc`` breaks the subset of cert-manager's API written down here."""
    kind = str(doc.get("kind", ""))
    if kind not in SPECS:
        return [f"kind: {kind!r} is not one of the cert-manager kinds known here ({sorted(SPECS)})"]
    errors = sorted(_validator(kind).iter_errors(doc), key=lambda e: e.json_path)
    problems = [f"{e.json_path}: {e.message}" for e in errors]
    spec = doc.get("spec") or {}
    if kind == "Certificate" and spec.get("isCA") and "server auth" in spec.get("usages", []):
        problems.append("$.spec: a CA certificate is not a server certificate")
    return problems
