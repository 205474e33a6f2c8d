"""The local HTTPS front's parts without a Ray cluster: generated and user certificates (real
TLS handshakes through Python's ssl module), the front's HAProxy config (checked by HAProxy
itself), and the launcher that moves Serve's HAProxy stats and metrics ports to loopback
(applied to the config Ray's own template renders)."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ray_app.core.settings import ClusterSettings, Settings, SettingsError, load_settings
from ray_app.ops import tls
from ray_app.ops.cluster import serve_haproxy_launcher


@contextmanager
def tls_server(certfile: Path, keyfile: Path) -> Iterator[int]:
    """A one-connection TLS server on 127.0.0.1; its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(10)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with context.wrap_socket(conn, server_side=True) as secured:
                secured.recv(1)
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()
        thread.join(10)


def handshake(port: int, cafile: Path, server_name: str) -> str:
    """A verifying TLS client's handshake; the protocol version agreed."""
    context = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as secured,
    ):
        version = secured.version()
        secured.sendall(b"x")
    assert version is not None
    return version


# --- generated certificates --------------------------------------------------------------


def test_generated_certificate_is_trusted_through_the_local_ca(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    cert = tls.local_certificate(folder, tls.certificate_names([]))
    assert cert.ca == folder / "ca.pem"
    for name in ("localhost", "127.0.0.1", "::1"):
        with tls_server(cert.certfile, cert.keyfile) as port:
            assert handshake(port, cert.ca, name) in ("TLSv1.2", "TLSv1.3")
    with (
        tls_server(cert.certfile, cert.keyfile) as port,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        handshake(port, cert.ca, "example.com")
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    for key in ("key.pem", "ca-key.pem"):
        assert oct((folder / key).stat().st_mode & 0o777) == "0o600", key


def test_generated_certificate_is_kept_then_renewed_for_new_names(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    first = tls.local_certificate(folder, tls.certificate_names([]))
    pem, ca_pem = first.certfile.read_bytes(), (folder / "ca.pem").read_bytes()
    tls.local_certificate(folder, tls.certificate_names([]))
    assert first.certfile.read_bytes() == pem, "a current certificate is reused"
    names = tls.certificate_names(["ray.example.lan"], host="10.1.2.3")
    assert names[-2:] == ["ray.example.lan", "10.1.2.3"]
    renewed = tls.local_certificate(folder, names)
    assert renewed.certfile.read_bytes() != pem
    # The CA is name-constrained to the names it was made for: a new name needs a new CA.
    assert (folder / "ca.pem").read_bytes() != ca_pem
    assert renewed.ca is not None
    with tls_server(renewed.certfile, renewed.keyfile) as port:
        handshake(port, renewed.ca, "ray.example.lan")


def test_the_local_ca_cannot_vouch_for_other_names(tmp_path: Path) -> None:
    """Name constraints: even with the CA's key, a certificate for another name fails."""
    folder = tmp_path / "tls"
    cert = tls.local_certificate(folder, tls.certificate_names([]))
    ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((folder / "ca-key.pem").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    rogue = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("example.com")]), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    rogue_cert, rogue_key = tmp_path / "rogue.pem", tmp_path / "rogue-key.pem"
    rogue_cert.write_bytes(rogue.public_bytes(serialization.Encoding.PEM))
    rogue_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert cert.ca is not None
    with tls_server(rogue_cert, rogue_key) as port, pytest.raises(ssl.SSLCertVerificationError):
        handshake(port, cert.ca, "example.com")


# --- a user's certificate ----------------------------------------------------------------


@pytest.fixture
def user_pair(tmp_path: Path) -> tuple[trustme.CA, Path, Path]:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return ca, cert, key


def test_user_certificate_is_checked(
    user_pair: tuple[trustme.CA, Path, Path], tmp_path: Path
) -> None:
    _, cert, key = user_pair
    assert tls.user_certificate(cert, key) == tls.Certificate(cert, key)
    other = trustme.CA().issue_cert("localhost")
    wrong_key = tmp_path / "other-key.pem"
    wrong_key.write_bytes(other.private_key_pem.bytes())
    with pytest.raises(tls.TlsError, match="is not the key of the certificate"):
        tls.user_certificate(cert, wrong_key)
    locked = tmp_path / "locked.pem"
    secret = serialization.load_pem_private_key(key.read_bytes(), None)
    locked.write_bytes(
        secret.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass phrase"),
        )
    )
    with pytest.raises(tls.TlsError, match="is encrypted"):
        tls.user_certificate(cert, locked)
    with pytest.raises(tls.TlsError, match="No such file"):
        tls.user_certificate(tmp_path / "missing.pem", key)
    with pytest.raises(tls.TlsError, match="holds no PEM certificate"):
        tls.user_certificate(key, key)


def test_settings_take_both_files_or_neither(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both certfile and keyfile"):
        Settings(cluster={"tls": {"certfile": str(tmp_path / "c.pem")}})
    config = tmp_path / "c.yaml"
    config.write_text("cluster:\n  haproxy_stats_host: 0.0.0.x\n")
    with pytest.raises(SettingsError, match="haproxy_stats_host"):
        load_settings(config)
    assert ClusterSettings().haproxy_stats_host == "127.0.0.1"
    assert ClusterSettings().tls.enabled is False


# --- the front's config ------------------------------------------------------------------


def haproxy_check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tls.haproxy_binary(), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30
    )


def test_front_config_is_valid_haproxy(
    user_pair: tuple[trustme.CA, Path, Path], tmp_path: Path
) -> None:
    _, cert, key = user_pair
    bundled = tls.bundle(tls.Certificate(cert, key), tmp_path / "front.pem")
    assert oct(bundled.stat().st_mode & 0o777) == "0o600"
    text = tls.front_config(bundled, "127.0.0.1:18443", "127.0.0.1:18000")
    assert "ssl-min-ver TLSv1.2" in text and "ssl crt" in text
    config = tmp_path / "front.cfg"
    config.write_text(text)
    done = haproxy_check(config)
    assert done.returncode == 0, done.stderr + done.stdout
    config.write_text(text.replace("ssl-min-ver TLSv1.2", "ssl-min-ver TLSv9"))
    assert haproxy_check(config).returncode != 0, "the check can fail"


def test_public_url_and_serve_port(tmp_path: Path) -> None:
    assert tls.public_url("127.0.0.1", 8443) == "https://localhost:8443"
    assert tls.public_url("0.0.0.0", 8443) == "https://localhost:8443"
    assert tls.public_url("10.0.0.5", 443) == "https://10.0.0.5:443"
    assert tls.address("::1", 8443) == "[::1]:8443"
    repo = Path(__file__).resolve().parents[2]
    assert tls.serve_port(repo / "serve_config.yaml") == 8000
    assert tls.serve_port(tmp_path / "missing.yaml") == tls.SERVE_DEFAULT_PORT


# --- Serve's HAProxy on loopback ---------------------------------------------------------


def ray_haproxy_config(folder: Path, host: str) -> Path:
    """The config Serve's HAProxyManager writes, rendered by Ray's own template and code."""
    from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig
    from ray.serve.config import HTTPOptions

    cfg = HAProxyConfig(
        socket_path=str(folder / "admin.sock"),
        server_state_base=str(folder),
        server_state_file=str(folder / "server-state"),
        metrics_socket_path=str(folder / "metrics.sock"),
        http_options=HTTPOptions(host=host, port=18000),
        stats_port=18404,
        metrics_port=19101,
    )
    path = folder / "haproxy.cfg"
    HAProxyApi(cfg=cfg, config_file_path=str(path))._generate_config_file_internal()
    return path


def binds(config: Path) -> list[str]:
    return [
        ln.split()[1] for ln in config.read_text().splitlines() if ln.strip().startswith("bind ")
    ]


@pytest.mark.parametrize("serve_host", ["127.0.0.1", "0.0.0.0"])
def test_launcher_moves_stats_and_metrics_to_loopback(tmp_path: Path, serve_host: str) -> None:
    folder = tmp_path / "hap"
    folder.mkdir()
    config = ray_haproxy_config(folder, serve_host)
    assert sorted(binds(config)) == sorted(
        [":19101", f"{'*' if serve_host == '0.0.0.0' else serve_host}:18000", "*:18404"]
    )
    real = tmp_path / "real-haproxy"
    real.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$(dirname "$0")/args"\n')
    real.chmod(0o755)
    cfg = ClusterSettings(state_dir=tmp_path / "state")
    launcher = serve_haproxy_launcher(cfg, {"RAY_SERVE_HAPROXY_BINARY_PATH": str(real)})
    assert launcher is not None and os.access(launcher, os.X_OK)
    done = subprocess.run([str(launcher), "-db", "-f", str(config), "-dR"], timeout=30)
    assert done.returncode == 0
    assert (tmp_path / "args").read_text().split() == ["-db", "-f", str(config), "-dR"]
    http = "*:18000" if serve_host == "0.0.0.0" else "127.0.0.1:18000"
    assert sorted(binds(config)) == sorted(["127.0.0.1:19101", http, "127.0.0.1:18404"])
    assert "mode 600 level admin" in config.read_text()
    frontend = config.read_text().split("frontend http_frontend\n", 1)[1].splitlines()
    assert frontend[0].split() == [
        *("http-request", "del-header", "x-request-id", "unless"),
        *("{", "req.hdr(x-request-id)", "-m", "reg", "^[A-Za-z0-9._-]{1,64}$", "}"),
    ]
    checked = haproxy_check(config)
    assert checked.returncode == 0, checked.stderr + checked.stdout


def test_the_image_launcher_drops_a_bad_request_id_and_opens_the_stats_ports(
    tmp_path: Path,
) -> None:
    """`ray-app cluster haproxy-launcher`, as the inference image runs it for KubeRay, where
    Serve's HAProxy would otherwise echo any X-Request-ID: the same rule as `cluster up`'s,
    the stats and Prometheus ports on every address for the pod's scrapes."""
    from tests.conftest import ray_app_command

    folder = tmp_path / "hap"
    folder.mkdir()
    config = ray_haproxy_config(folder, "0.0.0.0")
    script = tmp_path / "serve-haproxy"
    done = ray_app_command(
        ["cluster", "haproxy-launcher", str(script), "--stats-host", "0.0.0.0"], {}, plain=True
    )
    assert done.returncode == 0, done.stderr
    assert os.access(script, os.X_OK) and script.stat().st_mode & 0o077 == 0
    text = script.read_text()
    assert "del-header x-request-id" in text and "exec " in text
    # Serve runs it with its own arguments; -c makes the real HAProxy check the edited config
    checked = subprocess.run(
        [str(script), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout
    assert sorted(binds(config)) == sorted(["0.0.0.0:19101", "*:18000", "0.0.0.0:18404"])
    assert "del-header x-request-id unless" in config.read_text()


def test_launcher_is_off_without_a_host(tmp_path: Path) -> None:
    cfg = ClusterSettings(state_dir=tmp_path, haproxy_stats_host=None)
    assert serve_haproxy_launcher(cfg, {}) is None
