"""locks/: the images' hashed locks match pyproject.toml, and inference stays lean.

`make lock` (scripts/lock.py) writes them; each starts with a fingerprint of the pyproject.toml
sections it was made from, so any change there without `make lock` fails here.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from scripts import lock
from tests.infra import project
from tests.infra.imports import distributions_of, external_imports

pytestmark = pytest.mark.infra

LOCKS = sorted(lock.LOCKS_BY_NAME.values(), key=lambda item: item.name)
PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+)")
# Imported lazily by the data sources and calendar checks only (ray_app/data/sources.py,
# validation.py), which serving never calls: in the `data` extra, not in the inference image.
DATA_SOURCE_IMPORTS = {"yfinance", "bokeh_sampledata", "exchange_calendars"}
NOT_IN_INFERENCE = {
    "optuna",
    "matplotlib",
    "bokeh-sampledata",
    "yfinance",
    "exchange-calendars",
    "mlflow",  # the full MLflow (server, SQL stores) and its scikit-learn, matplotlib
    "scikit-learn",
    "pytest",
}
# scipy is not in the list: LightGBM requires it, and the variants serve every model family.
# The images' interpreter and platform (scripts/lock.py), for environment markers.
ENVIRONMENT = default_environment() | {
    "python_version": lock.PYTHON_VERSION,
    "python_full_version": f"{lock.PYTHON_VERSION}.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def pins(text: str) -> dict[str, str]:
    """Normalised name -> version of every `name==version` line of a lock."""
    return {
        canonicalize_name(m["name"]): m["version"]
        for m in (PIN.match(line) for line in text.splitlines())
        if m
    }


def requirements(pyproject: dict, extras: tuple[str, ...]) -> list[Requirement]:
    """The dependencies plus the extras, self-references (`ray-app[data]`) expanded."""
    project_name = canonicalize_name(pyproject["project"]["name"])
    optional = pyproject["project"].get("optional-dependencies", {})
    found = [Requirement(line) for line in pyproject["project"]["dependencies"]]
    todo, done = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in done:
            continue
        done.add(extra)
        for line in optional[extra]:
            req = Requirement(line)
            if canonicalize_name(req.name) == project_name:
                todo += sorted(req.extras)
            else:
                found.append(req)
    return [r for r in found if r.marker is None or r.marker.evaluate(ENVIRONMENT)]


def unsatisfied(reqs: list[Requirement], locked: dict[str, str]) -> list[str]:
    """Requirements the lock lacks or pins outside their specifier (a local `+cpu` label is
    ignored, as pip ignores it)."""
    problems = []
    for req in reqs:
        version = locked.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req}: not in the lock")
        elif not req.specifier.contains(Version(version).public, prereleases=True):
            problems.append(f"{req}: locked at {version}")
    return problems


def lock_fingerprint(text: str) -> str | None:
    match = re.search(r"^# inputs: (\S+)$", text, re.MULTILINE)
    return match[1] if match else None


@pytest.fixture(params=LOCKS, ids=lambda item: item.name)
def target(request: pytest.FixtureRequest) -> lock.Lock:
    return request.param


def test_lock_is_current_with_pyproject(target: lock.Lock) -> None:
    assert target.path.is_file(), f"{target.path.name} missing: run make lock"
    expected = lock.fingerprint(project.pyproject(), target)
    assert lock_fingerprint(target.path.read_text()) == expected, (
        f"{target.path.name} was made from another pyproject.toml: run make lock"
    )


def test_the_fingerprint_changes_with_any_dependency(target: lock.Lock) -> None:
    changed = copy.deepcopy(project.pyproject())
    changed["project"]["dependencies"].append("left-pad>=1")
    assert lock.fingerprint(changed, target) != lock.fingerprint(project.pyproject(), target)
    loosened = copy.deepcopy(project.pyproject())
    loosened["project"]["optional-dependencies"]["dev"][-1] += ",<99"
    assert lock.fingerprint(loosened, target) != lock.fingerprint(project.pyproject(), target)


def test_lock_satisfies_every_requirement(target: lock.Lock) -> None:
    reqs = requirements(project.pyproject(), target.extras)
    assert not unsatisfied(reqs, pins(target.path.read_text()))


def test_unsatisfied_finds_a_missing_or_outdated_pin() -> None:
    reqs = [Requirement("numpy>=2"), Requirement("torch==2.13.0"), Requirement("redis>=5")]
    assert unsatisfied(reqs, {"numpy": "2.1.0", "torch": "2.13.0+cpu", "redis": "5.0"}) == []
    assert unsatisfied(reqs, {"numpy": "1.26.4", "torch": "2.12.0"}) == [
        "numpy>=2: locked at 1.26.4",
        "torch==2.13.0: locked at 2.12.0",
        "redis>=5: not in the lock",
    ]


def test_every_pin_has_a_hash(target: lock.Lock) -> None:
    text = target.path.read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", text.count("\n# ") + 1)[-1])
    for entry in entries:
        if PIN.match(entry):
            assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), entry.splitlines()[0]
    assert len(pins(text)) > 50


def test_torch_is_locked_per_build(target: lock.Lock) -> None:
    pin = project.pinned_version("torch")
    text = target.path.read_text()
    locked = pins(text)
    cuda = sorted(n for n in locked if n.startswith("nvidia-") or n == "triton")
    if target.torch == "cpu":
        assert locked["torch"] == f"{pin}+cpu", "the CPU wheel from PyTorch's CPU index"
        assert f"--extra-index-url {lock.TORCH_CPU_INDEX}" in text.splitlines()
        assert not cuda, f"CUDA wheels in a CPU lock: {cuda}"
    else:
        assert locked["torch"] == pin, "PyPI's build of torch is the CUDA one"
        assert cuda, "the CUDA build's runtime wheels are missing"
        assert "--extra-index-url" not in text


def test_inference_is_lean() -> None:
    locked = set(pins(lock.LOCKS_BY_NAME["inference"].path.read_text()))
    assert not locked & NOT_IN_INFERENCE, sorted(locked & NOT_IN_INFERENCE)
    train = set(pins(lock.LOCKS_BY_NAME["train"].path.read_text()))
    assert NOT_IN_INFERENCE - {"pytest"} <= train, "the train image has the whole platform"


def serve_entrypoint() -> str:
    """The module serve_config.yaml's application is built from (its import_path)."""
    config = yaml.safe_load((project.REPO / "serve_config.yaml").read_text())
    (app,) = config["applications"]
    return app["import_path"].split(":")[0]


def missing_from(lock_path: Path, import_names: set[str]) -> set[str]:
    locked = set(pins(lock_path.read_text()))
    return {name for name in import_names if not distributions_of(name) & locked}


def test_inference_lock_holds_what_serving_imports() -> None:
    """Everything the Serve application imports is in the inference lock; only the data
    sources' lazy imports are not, and they belong to the data extra."""
    inference = lock.LOCKS_BY_NAME["inference"].path
    entry = serve_entrypoint()
    assert entry == "ray_app.serving.app"
    assert not missing_from(inference, external_imports(entry))
    assert missing_from(inference, external_imports(entry, lazy=True)) == DATA_SOURCE_IMPORTS
    data = {
        canonicalize_name(Requirement(r).name)
        for r in project.pyproject()["project"]["optional-dependencies"]["data"]
    }
    assert {d for name in DATA_SOURCE_IMPORTS for d in distributions_of(name)} <= data


def test_serving_import_check_can_fail() -> None:
    """Evaluation draws its plots with matplotlib, which the inference lock lacks."""
    inference = lock.LOCKS_BY_NAME["inference"].path
    lazy = external_imports("ray_app.training.evaluate", lazy=True)
    assert "matplotlib" in missing_from(inference, lazy) - DATA_SOURCE_IMPORTS
