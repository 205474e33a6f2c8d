"""The MLflow user the Ray nodes of the Compose stack run as, made by the stack's MLflow admin.

Run once per `docker compose up` by the one-shot service ``mlflow-user`` (docker/compose.yaml,
which mounts this file), before the Ray nodes start: it creates user ``RAY_APP_MLFLOW__USERNAME``
with the password in the secret file ``mlflow_password``, or sets that password when the user
exists (the secret was rotated). The nodes hold that password only, never the admin's, as on
Kubernetes (docs/operations.md, "MLflow's basic-auth app"). Standard library only.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

USERS = "/api/2.0/mlflow/users"


def call(url: str, admin_password: str, path: str, method: str, body: dict[str, str]) -> int:
    """The HTTP status of ``method`` ``path`` with ``body``, sent as the admin."""
    token = base64.b64encode(f"admin:{admin_password}".encode()).decode()
    request = urllib.request.Request(
        f"{url}{USERS}/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:  # the first call is slow
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def ensure_user(url: str, secrets: Path, username: str) -> str:
    """Create ``username`` with its secret password, or set that password: what was done."""
    admin_password = (secrets / "mlflow_admin_password").read_text().strip()
    user = {"username": username, "password": (secrets / "mlflow_password").read_text().strip()}
    created = call(url, admin_password, "create", "POST", user)
    if created == 200:
        return "created"
    updated = call(url, admin_password, "update-password", "PATCH", user)
    if updated == 200:
        return "password set"
    raise SystemExit(f"MLflow user {username}: create answered {created}, update {updated}")


if __name__ == "__main__":
    done = ensure_user(
        os.environ.get("MLFLOW_URL", "http://mlflow:5000"),
        Path(os.environ.get("SECRETS_DIR", "/run/secrets")),
        os.environ["RAY_APP_MLFLOW__USERNAME"],
    )
    print(f"MLflow user {os.environ['RAY_APP_MLFLOW__USERNAME']}: {done}", file=sys.stderr)
