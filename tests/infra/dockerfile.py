"""docker/Dockerfile read statically: instructions, stages (targets) and what each installs."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from tests.infra import project

DOCKERFILE = project.DOCKER / "Dockerfile"


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


@dataclass(frozen=True)
class Stage:
    name: str
    base: str  # an image reference, or the name of an earlier stage
    parent: Stage | None  # the earlier stage it starts from
    own: tuple[Instruction, ...]  # FROM and what follows it, up to the next FROM

    @property
    def instructions(self) -> list[Instruction]:
        """Everything that built this stage's filesystem and config: the parents' and its own."""
        return (self.parent.instructions if self.parent else []) + list(self.own)

    @property
    def image(self) -> str:
        """The external image at the root of the chain."""
        return self.parent.image if self.parent else self.base


def stages(instructions: list[Instruction]) -> dict[str, Stage]:
    found: dict[str, Stage] = {}
    groups: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            groups.append([])
        assert groups, f"line {ins.line}: {ins.keyword} before the first FROM"
        groups[-1].append(ins)
    for index, group in enumerate(groups):
        _, words = flags_and_args(group[0].args)
        name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(index)
        found[name] = Stage(name, words[0], found.get(words[0]), tuple(group))
    return found


def dockerfile_stages(path: Path = DOCKERFILE) -> dict[str, Stage]:
    return stages(parse_dockerfile(path.read_text()))


def targets(path: Path = DOCKERFILE) -> set[str]:
    """Stages that are images (built with --target): those no other stage starts from."""
    all_stages = dockerfile_stages(path)
    parents = {s.parent.name for s in all_stages.values() if s.parent}
    return set(all_stages) - parents


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
