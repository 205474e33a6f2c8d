"""The import-linter contracts in pyproject.toml hold, and they can fail.

The second half copies the package to a temporary folder, adds one module with a
deliberately wrong import, and checks that `lint-imports` names the broken contract: a
contract that could never fail would prove nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_the_package_keeps_every_contract() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


WRONG_IMPORTS = {
    "serving imports training": (
        {"serving/wrong.py": "from ray_app.training import train\n"},
        "Serving never imports training BROKEN",
    ),
    "serving reaches training through a lower layer": (
        {
            "serving/wrong.py": "from ray_app.registry import wrong\n",
            "registry/wrong.py": "from ray_app.training import gate\n",
        },
        "Serving never imports training BROKEN",
    ),
    "models import Ray inside a function": (
        {"models/wrong.py": "def f():\n    import ray.train\n"},
        "Models never import Ray BROKEN",
    ),
    "monitoring imports training": (
        {"monitoring/wrong.py": "from ray_app.training import gate\n"},
        "Monitoring never imports training BROKEN",
    ),
    "serving imports monitoring": (
        {"serving/wrong.py": "from ray_app.monitoring import ab\n"},
        "Layers: each imports only from those below it BROKEN",
    ),
    "core imports data": (
        {"core/wrong.py": "from ray_app.data import ingest\n"},
        "Layers: each imports only from those below it BROKEN",
    ),
    "registry imports training": (
        {"registry/wrong.py": "from ray_app.training import gate\n"},
        "Layers: each imports only from those below it BROKEN",
    ),
}


@pytest.mark.parametrize(("files", "contract"), WRONG_IMPORTS.values(), ids=WRONG_IMPORTS)
def test_a_wrong_import_is_reported(tmp_path: Path, files: dict[str, str], contract: str) -> None:
    shutil.copytree(REPO / "ray_app", tmp_path / "ray_app", ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    for module, source in files.items():
        (tmp_path / "ray_app" / module).write_text(source)
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert contract in result.stdout
    first = next(iter(files)).removesuffix(".py").replace("/", ".")
    assert f"ray_app.{first}" in result.stdout
