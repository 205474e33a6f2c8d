"""Generate the reference pages in docs/ from the code: settings, Serve args and the CLI.

``docs/settings.md``, ``docs/serve-config.md`` and ``docs/cli.md`` are hand-written pages with
generated blocks between marker comments. Each block is rendered from the code that defines it,
so the code is the one source and the pages cannot drift from it:

- ``settings``: every field of ``ray_app.core.settings.Settings`` (dotted key, ``RAY_APP_*``
  variable, type with its bounds, default, description);
- ``serve-args`` and ``serve-user-config``: ``ServeArgs``, ``IngressConfig`` and
  ``VariantConfig`` of ``ray_app/serving/args.py``;
- ``families``: each model family's hyperparameters (its ``Params``, ``train.hparams`` when
  it is ``train.model``) and default search space, from the family table;
- ``cli``: Typer's own Markdown generator (what ``typer ray_app.cli utils docs`` writes), in
  plain mode, so the text does not depend on the terminal.

After changing a setting, an option or a help text, regenerate; ``make lint`` and
tests/infra/test_docs_sync.py fail until the pages match::

    .venv/bin/python -m tests.infra.docs_sync          # rewrite the blocks (make docs)
    .venv/bin/python -m tests.infra.docs_sync --check  # exit 1 when a block is stale
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import re
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeGuard, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tests.infra.project import REPO

DOCS = REPO / "docs"
SETTINGS_PAGE = DOCS / "settings.md"
SERVE_PAGE = DOCS / "serve-config.md"
CLI_PAGE = DOCS / "cli.md"
TRAINING_PAGE = DOCS / "training.md"

_BEGIN = "<!-- BEGIN GENERATED: {name} (python -m tests.infra.docs_sync; do not edit) -->"
_END = "<!-- END GENERATED: {name} -->"

_SCALARS: dict[Any, str] = {
    bool: "bool",
    int: "int",
    float: "float",
    str: "string",
    Path: "path",
    dt.date: "date (YYYY-MM-DD)",
    Any: "any",
}


def _cell(text: str) -> str:
    """Text that stays inside one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _is_model(annotation: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _optional(annotation: Any) -> tuple[Any, bool]:
    """``X`` and whether ``annotation`` was ``X | None``."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) < len(get_args(annotation)) and len(args) == 1:
            return args[0], True
    return annotation, False


def _bounds(metadata: list[Any]) -> str:
    """``>= 1``, ``in [0, 1)``, ``matching `^...$```: the constraints pydantic enforces."""
    found: dict[str, Any] = {}
    for item in metadata:
        for attr in ("ge", "gt", "le", "lt", "min_length", "pattern"):
            value = getattr(item, attr, None)
            if value is not None:
                found[attr] = value
    parts = []
    low = ("[", found["ge"]) if "ge" in found else ("(", found["gt"]) if "gt" in found else None
    high = ("]", found["le"]) if "le" in found else (")", found["lt"]) if "lt" in found else None
    if low and high:
        parts.append(f"in {low[0]}{low[1]}, {high[1]}{high[0]}")
    elif low:
        parts.append(f"{'>=' if low[0] == '[' else '>'} {low[1]}")
    elif high:
        parts.append(f"{'<=' if high[0] == ']' else '<'} {high[1]}")
    if "min_length" in found:
        parts.append(f"(at least {found['min_length']})")
    if "pattern" in found:
        parts.append(f"matching `{found['pattern']}`")
    return " ".join(parts)


def type_text(annotation: Any, metadata: list[Any] | None = None) -> str:
    """How a field's type reads in the reference: ``int >= 1 or null``, `` `a` | `b` ``."""
    inner, optional = _optional(annotation)
    origin, args = get_origin(inner), get_args(inner)
    if origin is Literal:
        text = " | ".join(f"`{a}`" for a in args)
    elif _is_model(inner):
        text = f"`{inner.__name__}`"
    elif origin is list:
        text = f"list of {type_text(args[0])}"
    elif origin is tuple:
        text = "[" + ", ".join(type_text(a) for a in args) + "]"
    elif origin is dict:
        text = f"mapping {type_text(args[0])} -> {type_text(args[1])}"
    elif inner in _SCALARS:
        text = _SCALARS[inner]
    else:
        raise TypeError(f"no documentation rendering for the type {inner!r}")
    bounds = _bounds(metadata or [])
    if bounds:
        text = f"{text} {bounds}"
    return f"{text} or null" if optional else text


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (Path, dt.date)):
        return str(value)
    return value


def default_text(field: FieldInfo) -> str:
    """The default as it would be written in YAML, or ``required``."""
    if field.is_required():
        return "required"
    value = _plain(field.get_default(call_default_factory=True))
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{json.dumps(value)}`"


def _description(owner: type[BaseModel], name: str, field: FieldInfo) -> str:
    if not field.description:
        raise ValueError(
            f"{owner.__name__}.{name} has no description: add Field(description=...) "
            "so the generated reference can say what it is"
        )
    return _cell(field.description)


def _doc(model: type[BaseModel]) -> str:
    """The first paragraph of a model's docstring, on one line."""
    doc = inspect.getdoc(model) or ""
    return " ".join(doc.split("\n\n")[0].split())


def _referenced(annotation: Any) -> Iterator[type[BaseModel]]:
    """Models named inside a list, a mapping or an optional: documented in their own table."""
    inner, _ = _optional(annotation)
    if _is_model(inner):
        yield inner
    for arg in get_args(inner):
        yield from _referenced(arg)


@dataclass
class _Table:
    title: str
    doc: str
    rows: list[tuple[str, ...]]


def _tables(
    model: type[BaseModel],
    prefix: str,
    title: str,
    env_prefix: str | None,
    referenced: dict[str, type[BaseModel]],
) -> list[_Table]:
    """One table of ``model``'s own fields, then one per nested section, depth first."""
    rows: list[tuple[str, ...]] = []
    sections: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if _is_model(field.annotation):
            sections.append((key, field.annotation))
            continue
        for ref in _referenced(field.annotation):
            referenced.setdefault(ref.__name__, ref)
        row = [f"`{key}`"]
        if env_prefix is not None:
            row.append(f"`{env_prefix}{key.replace('.', '__').upper()}`")
        row += [
            _cell(type_text(field.annotation, field.metadata)),
            _cell(default_text(field)),
            _description(model, name, field),
        ]
        rows.append(tuple(row))
    tables = [_Table(title, _doc(model), rows)] if rows else []
    for key, section in sections:
        tables += _tables(section, f"{key}.", f"`{key}`", env_prefix, referenced)
    return tables


def _markdown(tables: list[_Table], columns: list[str], level: int) -> str:
    out: list[str] = []
    for table in tables:
        out.append(f"{'#' * level} {table.title}\n")
        if table.doc:
            out.append(f"{table.doc}\n")
        out.append("| " + " | ".join(columns) + " |")
        out.append("|" + "---|" * len(columns))
        out += ["| " + " | ".join(row) + " |" for row in table.rows]
        out.append("")
    return "\n".join(out)


def _referenced_tables(referenced: dict[str, type[BaseModel]]) -> list[_Table]:
    tables: list[_Table] = []
    done: set[str] = set()
    while len(done) < len(referenced):
        for name in sorted(set(referenced) - done):
            done.add(name)
            tables += _tables(referenced[name], "", f"`{name}`", None, referenced)
    return tables


def settings_reference(model: type[BaseModel] | None = None) -> str:
    """Tables of every setting: key, environment variable, type, default, description."""
    if model is None:
        from ray_app.core.settings import ENV_PREFIX, Settings

        model, env_prefix = Settings, ENV_PREFIX
    else:
        env_prefix = "RAY_APP_"
    referenced: dict[str, type[BaseModel]] = {}
    tables = _tables(model, "", "Top level", env_prefix, referenced)
    text = _markdown(tables, ["Key", "Environment variable", "Type", "Default", "Meaning"], 2)
    more = _referenced_tables(referenced)
    if more:
        text += "\n" + _markdown(more, ["Key", "Type", "Default", "Meaning"], 2)
    return text


def serve_args_reference() -> str:
    """Tables of ``ServeArgs``, the application ``args`` in serve_config.yaml."""
    from ray_app.serving.args import ServeArgs

    referenced: dict[str, type[BaseModel]] = {}
    tables = _tables(ServeArgs, "", "`ServeArgs`", None, referenced)
    tables += _referenced_tables(referenced)
    return _markdown(tables, ["Key", "Type", "Default", "Meaning"], 3)


def user_config_reference() -> str:
    """Tables of the deployments' ``user_config``: what a rollout changes without restarts."""
    from ray_app.serving.args import IngressConfig, VariantConfig

    referenced: dict[str, type[BaseModel]] = {}
    tables = _tables(IngressConfig, "", "`Ingress`: `IngressConfig`", None, referenced)
    tables += _tables(VariantConfig, "", "Each variant: `VariantConfig`", None, referenced)
    return _markdown(tables, ["Key", "Type", "Default", "Meaning"], 3)


def families_reference() -> str:
    """Per family in the table: its window, hyperparameters and default search space."""
    from ray_app.models.families import get, names

    out: list[str] = []
    for name in names():
        family = get(name)
        tables = _tables(family.Params, "", f"`{name}`: `{family.Params.__name__}`", None, {})
        out.append(_markdown(tables, ["Key", "Type", "Default", "Meaning"], 4))
        space = ", ".join(
            f"`{key}` {dim.model_dump_json(exclude_none=True)}"
            for key, dim in family.default_space.items()
        )
        out.append(f"Default search space: {space}.\n")
    return "\n".join(out)


def _full_short_help(command: Any) -> None:
    """Give every command its whole first help line as its short help.

    Click cuts a command's summary in a group's list at 45 characters; the reference shows the
    whole line. This changes only the click objects built for the docs, not the CLI.
    """
    if command.help and not command.short_help:
        command.short_help = inspect.cleandoc(command.help).split("\n\n")[0].replace("\n", " ")
    for sub in getattr(command, "commands", {}).values():
        _full_short_help(sub)


def cli_reference(app: Any = None) -> str:
    """Typer's Markdown for every command, in plain mode (no HTML, no terminal width)."""
    import typer
    from typer.cli import get_docs_for_click
    from typer.core import MARKUP_MODE_KEY

    if app is None:
        from ray_app.cli import app
    command = typer.main.get_command(app)
    _full_short_help(command)
    ctx = typer.Context(command, info_name="ray-app", obj={MARKUP_MODE_KEY: None})
    docs = get_docs_for_click(obj=command, ctx=ctx, name="ray-app", indent=1)
    return docs.strip() + "\n"


@dataclass(frozen=True)
class Block:
    name: str
    page: Path
    render: Callable[[], str]


BLOCKS = (
    Block("settings", SETTINGS_PAGE, settings_reference),
    Block("serve-args", SERVE_PAGE, serve_args_reference),
    Block("serve-user-config", SERVE_PAGE, user_config_reference),
    Block("cli", CLI_PAGE, cli_reference),
    Block("families", TRAINING_PAGE, families_reference),
)


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the generated block ``name`` holding ``body``; the markers must exist."""
    begin, end = _BEGIN.format(name=name), _END.format(name=name)
    pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.DOTALL)
    matches = pattern.findall(text)
    if len(matches) != 1:
        raise ValueError(f"expected one generated block {name!r} ({begin} ... {end})")
    return pattern.sub(lambda _: f"{begin}\n\n{body.strip()}\n\n{end}", text)


def render_pages(blocks: tuple[Block, ...] = BLOCKS, root: Path = REPO) -> dict[Path, str]:
    """Each page's current text and its text with every block regenerated, by path."""
    pages: dict[Path, str] = {}
    for block in blocks:
        path = root / block.page.relative_to(REPO)
        text = pages.get(path) or path.read_text(encoding="utf-8")
        pages[path] = replace_block(text, block.name, block.render())
    return pages


def stale_pages(blocks: tuple[Block, ...] = BLOCKS, root: Path = REPO) -> list[Path]:
    """The pages whose generated blocks differ from what the code renders now."""
    return [
        path
        for path, wanted in render_pages(blocks, root).items()
        if path.read_text(encoding="utf-8") != wanted
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if stale")
    args = parser.parse_args(argv)
    stale = stale_pages()
    names = ", ".join(str(p.relative_to(REPO)) for p in stale)
    if not stale:
        print("docs/ is up to date with the code")
        return 0
    if args.check:
        print(f"stale: {names}: run make docs (python -m tests.infra.docs_sync)")
        return 1
    for path, text in render_pages().items():
        if path in stale:
            path.write_text(text, encoding="utf-8")
    print(f"updated {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
