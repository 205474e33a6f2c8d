""".github/: the CI/CD workflows are valid, and every `run:` step calls a command of this
repository (a make target or a script), so CI and `.ci/run` run the same things."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts import bump_image
from tests.infra import dockerfile, project, tools

pytestmark = pytest.mark.infra

GITHUB = project.REPO / ".github"
WORKFLOWS = sorted((GITHUB / "workflows").glob("*.yml"))
ACTIONS = sorted((GITHUB / "actions").glob("*/action.yml"))
MAKEFILE = project.REPO / "Makefile"
DIGEST = "sha256:" + "ab" * 32


def load(path: Path) -> dict[str, Any]:
    # PyYAML reads the key `on` as True (YAML 1.1); keep it a string.
    return {("on" if k is True else k): v for k, v in yaml.safe_load(path.read_text()).items()}


def steps_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if "runs" in doc:  # a composite action
        return list(doc["runs"].get("steps", []))
    return [step for job in doc["jobs"].values() for step in job.get("steps", [])]


def make_targets(makefile: Path = MAKEFILE) -> set[str]:
    rule = re.compile(r"^([A-Za-z0-9_.-]+(?:\s+[A-Za-z0-9_.-]+)*)\s*:(?!=)")
    return {
        target
        for line in makefile.read_text().splitlines()
        if (m := rule.match(line))
        for target in m[1].split()
    }


def commands(script: str) -> list[list[str]]:
    """The simple commands of a `run:` script (lines, `&&`, `||`, `;`, `|`), as words."""
    found = []
    for line in script.replace("\\\n", " ").splitlines():
        for part in re.split(r"&&|\|\||;|\|", line):
            words = shlex.split(part, comments=True)
            while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                words.pop(0)  # VAR=value prefixes
            if words:
                found.append(words)
    return found


def unknown_commands(script: str, root: Path = project.REPO) -> list[str]:
    """Commands that are neither `make <existing target>` nor an executable repository file."""
    targets = make_targets(root / "Makefile")
    problems = []
    for words in commands(script):
        if words[0] == "make":
            wanted = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
            problems += [f"make {t}: no such target" for t in wanted if t not in targets]
            if not wanted:
                problems.append("make without a target")
        elif "/" in words[0]:
            path = root / words[0]
            if not (path.is_file() and path.stat().st_mode & 0o111):
                problems.append(f"{words[0]}: not an executable file of the repository")
        else:
            problems.append(f"{words[0]}: not a make target or a repository script")
    return problems


@pytest.mark.parametrize("path", WORKFLOWS + ACTIONS, ids=lambda p: p.parent.name + "/" + p.name)
def test_schema(path: Path) -> None:
    schema = "vendor.github-actions" if path.name == "action.yml" else "vendor.github-workflows"
    result = tools.check_jsonschema(schema, path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps: {run: make}\n")
    assert tools.check_jsonschema("vendor.github-workflows", bad).returncode != 0


def test_checkov_finds_nothing_in_the_workflows() -> None:
    """checkov's GitHub Actions checks: 0 findings, or each waived inline with a reason."""
    result = tools.checkov("--framework", "github_actions", "-d", str(GITHUB))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Failed checks: 0" in result.stdout, result.stdout
    text = "\n".join(p.read_text() for p in WORKFLOWS + ACTIONS)
    waivers = re.findall(r"checkov:skip=(\w+):?(.*)", text)
    assert all(reason.strip() for _, reason in waivers), "a waiver gives its reason"


def test_the_workflows() -> None:
    assert {p.stem for p in WORKFLOWS} == {"test", "images", "infra", "deploy"}


@pytest.mark.parametrize("path", WORKFLOWS + ACTIONS, ids=lambda p: p.parent.name + "/" + p.name)
def test_every_run_step_calls_a_repository_command(path: Path) -> None:
    for step in steps_of(load(path)):
        if "run" in step:
            assert not unknown_commands(step["run"]), (step.get("name"), step["run"])
        elif step["uses"].startswith("./"):
            assert (project.REPO / step["uses"]).exists(), step["uses"]


def test_run_step_check_can_fail() -> None:
    assert unknown_commands("make lint\n.ci/run") == []
    assert unknown_commands("make lint no-such-target") == ["make no-such-target: no such target"]
    assert unknown_commands("FOO=1 scripts/nope.sh --x") == [
        "scripts/nope.sh: not an executable file of the repository"
    ]
    assert unknown_commands("pip install x && make test") == [
        "pip: not a make target or a repository script"
    ]


def test_test_workflow_runs_lint_and_ci_run_with_the_services() -> None:
    (job,) = load(GITHUB / "workflows" / "test.yml")["jobs"].values()
    runs = [step["run"] for step in job["steps"] if "run" in step]
    assert runs == ["make lint", ".ci/run"]
    assert (project.REPO / ".ci" / "run").read_text().rstrip().endswith("make test")
    ports = {name: svc["ports"] for name, svc in job["services"].items()}
    assert ports == {"postgres": ["5432:5432"], "redis": ["6379:6379"]}
    assert job["services"]["postgres"]["env"]["POSTGRES_DB"] == "test"


def test_images_workflow_builds_every_target(ray_version: str) -> None:
    doc = load(GITHUB / "workflows" / "images.yml")
    assert set(doc["on"]["push"]) == {"branches", "tags"}
    built = set()
    for job in doc["jobs"].values():
        for step in job.get("steps", []):
            if step.get("uses") == "./.github/actions/build-image":
                target = step["with"]["target"]
                built |= (
                    set(job["strategy"]["matrix"]["target"]) if "matrix" in target else {target}
                )
    assert built == dockerfile.targets()
    assert doc["env"]["RAY_VERSION"] == ray_version
    assert doc["jobs"]["deploy"]["with"]["image"].endswith(f":{ray_version}")
    action = load(GITHUB / "actions" / "build-image" / "action.yml")
    (build,) = [s for s in steps_of(action) if s.get("uses", "").startswith("docker/build-push")]
    assert build["with"]["file"] == "docker/Dockerfile"
    assert build["with"]["sbom"] is True and build["with"]["provenance"] == "mode=max"


def test_infra_workflow_applies_behind_an_environment() -> None:
    jobs = load(GITHUB / "workflows" / "infra.yml")["jobs"]
    plan = [s["run"] for s in jobs["plan"]["steps"] if "run" in s]
    assert plan == ["make tf-fmt", "make tf-validate", "make tf-plan"]
    assert jobs["apply"]["environment"] == "production"
    assert "refs/heads/main" in jobs["apply"]["if"]


# --- scripts/bump_image.py, which deploy.yml runs (make bump-image) ---------------------------

CHART_VALUES = """\
image:
  repository: ghcr.io/ray-app/ray-app
  tag: "2.60.0"
  digest: ""  # written by CI
  pullPolicy: IfNotPresent
gpu:
  image:
    repository: ghcr.io/ray-app/ray-app
    tag: "2.60.0-gpu"
    digest: ""
"""
MANIFEST = """\
containers:
  - image: ghcr.io/ray-app/ray-app:2.60.0
  - image: ghcr.io/ray-app/ray-app:2.60.0-gpu
  - image: ghcr.io/ray-app/ray-app:2.60.0@sha256:{old}
""".format(old="0" * 64)


def bump(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = project.REPO / "scripts" / "bump_image.py"
    return tools.run([sys.executable, str(script), "--root", str(root), *args])


def test_deploy_workflow_bumps_with_the_script() -> None:
    (job,) = load(GITHUB / "workflows" / "deploy.yml")["jobs"].values()
    runs = [step["run"] for step in job["steps"] if "run" in step]
    assert runs == ['make bump-image IMAGE="$IMAGE" DIGEST="$DIGEST"']
    recipe = MAKEFILE.read_text().split("\nbump-image:")[1].split("\n\n")[0]
    assert "scripts/bump_image.py --image $(IMAGE) --digest $(DIGEST)" in recipe


def test_bump_pins_the_chart_digest_and_only_that_tag(tmp_path: Path) -> None:
    values = tmp_path / "charts" / "ray-app" / "values.yaml"
    values.parent.mkdir(parents=True)
    values.write_text(CHART_VALUES)
    result = bump(tmp_path, "--image", "ghcr.io/ray-app/ray-app:2.60.0", "--digest", DIGEST)
    assert result.returncode == 0, result.stderr
    doc = yaml.safe_load(values.read_text())
    assert doc["image"]["digest"] == DIGEST and doc["gpu"]["image"]["digest"] == ""
    assert '  digest: "' + DIGEST + '"  # written by CI\n' in values.read_text()
    again = values.read_text()
    assert (
        bump(tmp_path, "--image", "ghcr.io/ray-app/ray-app:2.60.0", "--digest", DIGEST).returncode
        == 0
    )
    assert values.read_text() == again, "idempotent"


def test_bump_pins_image_references(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(MANIFEST)
    image = "ghcr.io/ray-app/ray-app:2.60.0"
    assert bump(tmp_path, "--image", image, "--digest", DIGEST, str(manifest)).returncode == 0
    images = [c["image"] for c in yaml.safe_load(manifest.read_text())["containers"]]
    assert images == [f"{image}@{DIGEST}", f"{image}-gpu", f"{image}@{DIGEST}"]


def test_bump_fails_where_nothing_names_the_image(tmp_path: Path) -> None:
    result = bump(tmp_path, "--image", "ghcr.io/ray-app/ray-app:9.9.9", "--digest", DIGEST)
    assert result.returncode == 1 and "no manifest names" in result.stderr
    assert bump(tmp_path, "--image", "x/y:1", "--digest", "sha256:short").returncode == 2


def test_bump_finds_the_real_manifests() -> None:
    """Where the chart is in the repository, the default files hold the platform image."""
    files = sorted({p for g in bump_image.DEFAULT_GLOBS for p in project.REPO.glob(g)})
    if not files:
        pytest.skip("no charts/*/values*.yaml in this checkout yet")
    repository, tag = bump_image.split_image(f"ghcr.io/ray-app/ray-app:{project.ray_version()}")
    assert any(
        bump_image.bump_helm_values(p.read_text(), repository, tag, DIGEST) != p.read_text()
        for p in files
    )


# --- the tools make test installs ---------------------------------------------------------------


def test_make_test_installs_checkov_where_the_tests_look() -> None:
    prerequisites = re.search(r"^test:(.*)$", MAKEFILE.read_text(), re.MULTILINE)
    assert prerequisites and "tools-checkov" in prerequisites[1].split()
    dry_run = tools.run(["make", "-n", "-B", "-C", str(project.REPO), "tools-checkov"])
    assert dry_run.returncode == 0, dry_run.stderr
    venv = tools.CHECKOV.parent.parent.relative_to(project.REPO)
    assert f"{venv}/bin/pip install --quiet checkov==" in dry_run.stdout
    assert "/.tools/" in (project.REPO / ".gitignore").read_text().splitlines()
