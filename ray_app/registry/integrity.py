"""What a model version's files must be, and the check every load makes; no MLflow here.

At registration the sha256 of each file of a model's folder (``TrainedModel.save``: weights
and JSON) is recorded as a version tag ``sha256.<file>``; a load refuses files that do not
match, or a version that has no such tags. Kept apart from ``versions`` (which imports MLflow)
so that a serving replica can check a cached copy against hashes it already holds without
importing MLflow, a second or more of a restarting replica's time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from ray_app.core.errors import RayAppError

HASH_TAG = "sha256."


class RegistryError(RayAppError, LookupError):
    """A registered model, version or alias that does not exist, or a move that makes no sense."""


class ModelIntegrityError(RegistryError):
    """A version whose files are not those recorded at registration, or were never recorded."""


def file_hashes(folder: Path) -> dict[str, str]:
    """``sha256.<file>`` -> hex digest of every file of a model folder: the version tags a
    load checks, so a file changed in the artifact store is refused, not served."""
    return {
        f"{HASH_TAG}{path.name}": hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.iterdir())
        if path.is_file()
    }


def recorded(tags: Mapping[str, str]) -> dict[str, str]:
    """The file hashes among a version's tags."""
    return {k: v for k, v in tags.items() if k.startswith(HASH_TAG)}


def check_files(name: str, version: int, tags: Mapping[str, str], folder: Path) -> None:
    """Refuse ``folder`` unless its files are exactly those whose hashes ``tags`` record for
    ``version`` of model ``name`` (ModelIntegrityError naming the files, never a digest)."""
    hashes = recorded(tags)
    if not hashes:
        raise ModelIntegrityError(
            f"version {version} of {name!r} has no file hashes (registered before they were "
            "recorded): an operator checks it and runs `ray-app models verify --backfill`"
        )
    found = file_hashes(folder)
    if found != hashes:
        changed = sorted(
            k.removeprefix(HASH_TAG)
            for k in hashes.keys() | found.keys()
            if hashes.get(k) != found.get(k)
        )
        raise ModelIntegrityError(
            f"version {version} of {name!r}: file(s) {', '.join(changed)} do not match the "
            "sha256 recorded at registration; refusing to load it"
        )
