"""Lock the images' dependencies with hashes: one file per image under locks/ (`make lock`).

Each lock is `uv pip compile pyproject.toml` for the image's extras, for the images' Python
(CPython 3.11 on x86_64 manylinux, the rayproject/ray base), with a sha256 of every file. The
images install them with `pip install --require-hashes --no-deps -r locks/<image>.txt`.

PyTorch is locked per build. The CPU locks take `torch==<pin>+cpu` from PyTorch's CPU index
(an override: the `+cpu` wheel has no CUDA dependencies, so none are locked), and the file says
where to find it with `--extra-index-url`. The GPU lock takes the plain PyPI wheel, which is the
CUDA build, with its `nvidia-*` runtime wheels.

Each lock starts with a fingerprint of the pyproject.toml sections it was made from;
tests/infra/test_locks.py fails when pyproject.toml changed since (run `make lock`).

    python scripts/lock.py [--uv PATH] [--torch-cpu-find-links URL] [--only NAME ...]

`--torch-cpu-find-links` (env TORCH_CPU_FIND_LINKS) is where uv looks for the CPU wheel: by
default PyTorch's page `https://download.pytorch.org/whl/cpu/torch/`; a folder holding the same
wheel file (for a machine without access to that host) gives the same hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
LOCKS = REPO / "locks"
PYPROJECT = REPO / "pyproject.toml"
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"
PYPI = "https://pypi.org/simple"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_CPU_FIND_LINKS = TORCH_CPU_INDEX + "/torch/"


@dataclass(frozen=True)
class Lock:
    """One image's lock: the pyproject extras it installs and its PyTorch build."""

    name: str
    extras: tuple[str, ...]
    torch: str  # "cpu" or "cuda"

    @property
    def path(self) -> Path:
        return LOCKS / f"{self.name}.txt"


# The Dockerfile's targets and the lock each installs (`gpu` is the GPU worker image).
LOCKS_BY_NAME = {
    lock.name: lock
    for lock in (
        Lock("inference", (), "cpu"),
        Lock("data", ("data",), "cpu"),
        Lock("train", ("data", "train", "postgres"), "cpu"),
        Lock("dev", ("dev",), "cpu"),
        Lock("gpu", ("data", "train", "postgres"), "cuda"),
    )
}


def load_pyproject(path: Path = PYPROJECT) -> dict[str, Any]:
    with path.open("rb") as fh:
        return tomllib.load(fh)


def fingerprint(pyproject: dict[str, Any], lock: Lock) -> str:
    """sha256 of what the lock is made from: requires-python, dependencies and every extra."""
    project = pyproject["project"]
    inputs = {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "lock": [lock.name, list(lock.extras), lock.torch, PYTHON_VERSION, PLATFORM],
    }
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def torch_pin(pyproject: dict[str, Any]) -> str:
    for line in pyproject["project"]["dependencies"]:
        name, sep, version = line.partition("==")
        if name.strip() == "torch" and sep:
            return version.strip()
    raise SystemExit("pyproject.toml must pin torch with ==")


def header(pyproject: dict[str, Any], lock: Lock) -> str:
    extras = ",".join(lock.extras) or "none"
    lines = [
        f"# Lock of the `{lock.name}` image: pyproject.toml dependencies, extras: {extras};",
        f"# CPython {PYTHON_VERSION}, {PLATFORM}; torch: {lock.torch}. Made by `make lock`",
        "# (scripts/lock.py): do not edit. Installed with",
        f"#   pip install --require-hashes --no-deps -r locks/{lock.name}.txt",
        f"# inputs: {fingerprint(pyproject, lock)}",
    ]
    if lock.torch == "cpu":
        lines.append(f"--extra-index-url {TORCH_CPU_INDEX}")
    return "\n".join(lines) + "\n"


def compile_lock(lock: Lock, uv: str, find_links: str) -> str:
    pyproject = load_pyproject()
    command = [
        uv,
        "pip",
        "compile",
        str(PYPROJECT),
        "--generate-hashes",
        "--no-header",
        "--quiet",
        "--python-version",
        PYTHON_VERSION,
        "--python-platform",
        PLATFORM,
        "--default-index",
        PYPI,
    ]
    for extra in lock.extras:
        command += ["--extra", extra]
    with tempfile.TemporaryDirectory() as tmp:
        if lock.torch == "cpu":
            override = Path(tmp) / "torch-cpu.txt"
            override.write_text(f"torch=={torch_pin(pyproject)}+cpu\n")
            command += ["--override", str(override), "--find-links", find_links]
        result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
        body = result.stdout.replace(tmp + "/", "scripts/lock.py:")
    if result.returncode != 0:
        raise SystemExit(f"uv pip compile failed for {lock.name}:\n{result.stderr}")
    body = body.replace(str(PYPROJECT), "pyproject.toml")
    check(lock, body, torch_pin(pyproject))
    return header(pyproject, lock) + body


def check(lock: Lock, body: str, pin: str) -> None:
    """Refuse a lock with the wrong PyTorch build."""
    names = {line.split("==")[0] for line in body.splitlines() if "==" in line}
    cuda = sorted(n for n in names if n.startswith("nvidia-") or n == "triton")
    if lock.torch == "cpu":
        if f"torch=={pin}+cpu" not in body or cuda:
            raise SystemExit(f"{lock.name}: expected torch=={pin}+cpu and no CUDA wheels {cuda}")
    elif f"torch=={pin} " not in body or not cuda:
        raise SystemExit(f"{lock.name}: expected the CUDA torch=={pin} from PyPI")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uv", default=os.environ.get("UV", "uv"), help="the uv executable")
    parser.add_argument(
        "--torch-cpu-find-links",
        default=os.environ.get("TORCH_CPU_FIND_LINKS") or TORCH_CPU_FIND_LINKS,
        help="page or folder holding the torch CPU wheel",
    )
    parser.add_argument("--only", nargs="*", choices=sorted(LOCKS_BY_NAME), help="locks to make")
    args = parser.parse_args(argv)
    LOCKS.mkdir(exist_ok=True)
    for name in args.only or sorted(LOCKS_BY_NAME):
        lock = LOCKS_BY_NAME[name]
        lock.path.write_text(compile_lock(lock, args.uv, args.torch_cpu_find_links))
        count = sum(1 for line in lock.path.read_text().splitlines() if "==" in line)
        print(f"{lock.path.relative_to(REPO)}: {count} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
