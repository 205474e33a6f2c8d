"""Secrets: one interface over three backends, chosen by ``settings.secrets.backend``.

- ``env``: the variable ``RAY_APP_SECRET_<NAME>`` (``RAY_APP_SECRET_MLFLOW_PASSWORD``);
- ``file``: the file ``<secrets.dir>/<name>``, as a mounted Kubernetes Secret lays them out;
- ``vault``: the key ``<name>`` of one KV v2 secret in Vault or OpenBao, read with ``hvac``.

Values travel as pydantic ``SecretStr`` from the moment a backend reads them, so a repr, a
log line or a traceback shows ``**********``; errors name the secret and where it was looked
for, never its value. A value is reused for ``secrets.refresh_s`` seconds and then read
again, which bounds how long a long-running process (the Serve ingress) keeps a rotated-out
value. Outside ``environment: dev`` a placeholder (``changeme``, MLflow's old default admin
password ``password1234``, an empty value, ...) is refused when it is read, which is when a
component starts.

The secrets the project reads (each only where the configuration needs it):
``mlflow_password`` (basic auth at a tracking server), ``mlflow_db_password`` (a PostgreSQL
tracking store), ``redis_password`` (the online store and the API's rate limit),
``api_key_hashes`` (the HTTP API's keys, see ``ray_app.core.api_keys``) and ``api_client_key``
(the key the platform's own requests send: the deployment's smoke prediction, the replay).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from ray_app.core.errors import RayAppError
from ray_app.core.settings import SECRET_ENV_PREFIX, SecretsSettings, Settings, VaultSettings

MLFLOW_PASSWORD = "mlflow_password"
MLFLOW_DB_PASSWORD = "mlflow_db_password"
REDIS_PASSWORD = "redis_password"
API_KEY_HASHES = "api_key_hashes"
API_CLIENT_KEY = "api_client_key"

# Values that are someone's example, not a secret: refused outside dev. "password1234" is
# the admin password older MLflow versions shipped in basic_auth.ini (GHSA-gq3w-7jj3-x7gr).
PLACEHOLDERS = frozenset(
    {"", "changeme", "change-me", "change_me", "password", "admin", "secret", "password1234"}
)

# Lower-case identifiers only: a name becomes a file name and an environment variable.
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class SecretError(RayAppError):
    """A secret is missing, unreadable or refused; the message names it, never its value."""


class SecretBackend(Protocol):
    def read(self, name: str) -> SecretStr | None:
        """The secret's current value; None when the backend has no such secret."""
        ...

    def where(self, name: str) -> str:
        """Where ``name`` is looked for, for error messages."""
        ...

    def write(self, name: str, value: str) -> None:
        """Replace the secret's value (``ray-app keys``); SecretError where it cannot."""
        ...


class EnvBackend:
    """``RAY_APP_SECRET_<NAME>`` variables: for dev and CI, and for pods given them by a
    Kubernetes Secret (``envFrom``), which a rotation reaches only on restart."""

    def read(self, name: str) -> SecretStr | None:
        value = os.environ.get(self._variable(name))
        return None if value is None else SecretStr(value)

    def where(self, name: str) -> str:
        return f"environment variable {self._variable(name)}"

    def write(self, name: str, value: str) -> None:
        raise SecretError(
            f"the env secrets backend cannot be written: set {self._variable(name)} where the "
            "processes start (or use the file or vault backend)"
        )

    @staticmethod
    def _variable(name: str) -> str:
        return SECRET_ENV_PREFIX + name.upper()


class FileBackend:
    """One file per secret: a mounted Kubernetes Secret (which kubelet updates in place, so a
    rotation reaches a running pod) or Docker's ``/run/secrets``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.expanduser()

    def read(self, name: str) -> SecretStr | None:
        try:
            text = (self.folder / name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SecretError(
                f"cannot read secret {name} from {self.where(name)}: {type(exc).__name__}"
            ) from None
        return SecretStr(text.rstrip("\r\n"))  # editors and `echo` add a trailing newline

    def where(self, name: str) -> str:
        return f"file {self.folder / name}"

    def write(self, name: str, value: str) -> None:
        """Beside the file, then renamed over it, mode 0600: a reader sees the old value or
        the new one, never half of one."""
        staged = self.folder / f".{name}.new"
        try:
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(value)
            staged.replace(self.folder / name)
        except OSError as exc:
            raise SecretError(
                f"cannot write secret {name} to {self.where(name)}: {type(exc).__name__}"
            ) from None


class VaultBackend:
    """Keys of one KV v2 secret in Vault or OpenBao, read with ``hvac`` and a token."""

    def __init__(self, config: VaultSettings) -> None:
        import hvac

        self.config = config
        self.client = hvac.Client(url=config.address, timeout=config.timeout_s)

    def read(self, name: str) -> SecretStr | None:
        import hvac.exceptions
        import requests

        self.client.token = self._token().get_secret_value()
        try:
            answer = self.client.secrets.kv.v2.read_secret_version(
                path=self.config.path,
                mount_point=self.config.mount,
                raise_on_deleted_version=True,
            )
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise SecretError(
                f"cannot read secret {name} from {self.where(name)}: {type(exc).__name__}"
            ) from None
        value = answer["data"]["data"].get(name)
        if value is None:
            return None
        # KV v2 values are any JSON: a mapping such as api_key_hashes may be stored as one.
        return SecretStr(value if isinstance(value, str) else json.dumps(value))

    def where(self, name: str) -> str:
        config = self.config
        return f"Vault {config.address}, key {name} of {config.mount}/{config.path}"

    def write(self, name: str, value: str) -> None:
        """One key of the KV v2 secret, the others kept (a PATCH: a new secret version)."""
        import hvac.exceptions
        import requests

        self.client.token = self._token().get_secret_value()
        kv, where = self.client.secrets.kv.v2, {"path": self.config.path}
        try:
            try:
                kv.patch(secret={name: value}, mount_point=self.config.mount, **where)
            except hvac.exceptions.InvalidPath:  # no secret yet: made, unless one appeared
                kv.create_or_update_secret(
                    secret={name: value}, cas=0, mount_point=self.config.mount, **where
                )
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise SecretError(
                f"cannot write secret {name} to {self.where(name)}: {type(exc).__name__}"
            ) from None

    def _token(self) -> SecretStr:
        """Read at every request: a Vault Agent renews the token in its sink file."""
        token = os.environ.get(self.config.token_env)
        if token:
            return SecretStr(token)
        if self.config.token_file is not None:
            try:
                return SecretStr(self.config.token_file.expanduser().read_text().strip())
            except OSError as exc:
                raise SecretError(
                    f"cannot read the Vault token file {self.config.token_file}: "
                    f"{type(exc).__name__}"
                ) from None
        raise SecretError(
            f"no Vault token: set {self.config.token_env} or secrets.vault.token_file"
        )


def backend_for(config: SecretsSettings) -> SecretBackend:
    """The backend ``config.backend`` names."""
    if config.backend == "env":
        return EnvBackend()
    if config.backend == "file":
        return FileBackend(config.dir)
    return VaultBackend(config.vault)


class Secrets:
    """Secrets by name, each read value reused for ``refresh_s`` seconds."""

    def __init__(
        self,
        backend: SecretBackend,
        refresh_s: float,
        allow_placeholders: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.refresh_s = refresh_s
        self.allow_placeholders = allow_placeholders
        self._clock = clock
        self._cache: dict[str, tuple[float, SecretStr | None]] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> SecretStr:
        """The secret ``name``; a SecretError when it is not set."""
        value = self.optional(name)
        if value is None:
            raise SecretError(f"secret {name} is not set ({self.backend.where(name)})")
        return value

    def optional(self, name: str, *, fresh: bool = False) -> SecretStr | None:
        """The secret ``name``, or None when it is not set (for what may run without one).
        ``fresh`` reads the backend whatever the cache holds: a change reads what it changes."""
        if not _NAME.match(name):
            raise SecretError(f"{name!r} is not a secret name (lower case, digits, _)")
        now = self._clock()
        with self._lock:
            cached = self._cache.get(name)
        if cached is not None and now - cached[0] < self.refresh_s and not fresh:
            return cached[1]
        value = self.backend.read(name)
        if value is not None:
            self._refuse_placeholder(name, value)
        with self._lock:
            self._cache[name] = (now, value)
        return value

    def set(self, name: str, value: str) -> None:
        """Write ``name`` through the backend; this process reads it back at once."""
        if not _NAME.match(name):
            raise SecretError(f"{name!r} is not a secret name (lower case, digits, _)")
        self._refuse_placeholder(name, SecretStr(value))
        self.backend.write(name, value)
        with self._lock:
            self._cache.pop(name, None)

    def _refuse_placeholder(self, name: str, value: SecretStr) -> None:
        if self.allow_placeholders:
            return
        if value.get_secret_value().strip().lower() in PLACEHOLDERS:
            raise SecretError(
                f"secret {name} ({self.backend.where(name)}) is empty or a well-known "
                "placeholder/default; refused outside environment dev"
            )


def open_secrets(settings: Settings) -> Secrets:
    """The secrets of ``settings``: its backend, refresh interval and environment."""
    config = settings.secrets
    return Secrets(
        backend_for(config),
        refresh_s=config.refresh_s,
        allow_placeholders=settings.environment == "dev",
    )


# Userinfo runs to the last ``@`` before the path, as urllib reads it: a password may hold an
# unencoded ``@``, and stopping at the first one would leave the rest of it in the message.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#]*@")


def redact_uris(text: str) -> str:
    """``text`` with the userinfo of every URI in it replaced by ``***``: error messages and
    log lines quote URIs from settings and from libraries' exceptions, and a tracking or
    database URI may carry ``user:password@``."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
