"""What importing a module of ray_app imports at module level, read from the source (no import).

Statements that run at import count: module and class bodies, `if`/`try` blocks, but not
`if TYPE_CHECKING:` blocks; imports inside functions (lazy ones) count when asked for.
"""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.utils import canonicalize_name

from tests.infra import project

PACKAGE = "ray_app"


def module_file(module: str, root: Path = project.REPO) -> Path | None:
    path = root / Path(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def _import_time_nodes(body: list[ast.stmt], lazy: bool = False) -> Iterator[ast.stmt]:
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if lazy:
                yield from (n for n in ast.walk(node) if isinstance(n, ast.stmt))
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _import_time_nodes(node.orelse, lazy)
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            yield from _import_time_nodes(getattr(node, field, []), lazy)


def module_imports(module: str, path: Path, lazy: bool = False) -> set[str]:
    """Dotted names imported when ``module`` (source ``path``) is imported; with ``lazy``, also
    those its functions import when called."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _import_time_nodes(ast.parse(path.read_text()).body, lazy):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


def external_imports(*modules: str, lazy: bool = False, root: Path = project.REPO) -> set[str]:
    """Top-level names outside ray_app and the standard library that ``modules`` import (with
    ``lazy``, also inside functions, following ray_app modules imported there too)."""
    seen: set[str] = set()
    external: set[str] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:n]) for n in range(1, len(parts))]  # parents run first
        path = module_file(module, root)
        if path is None:
            continue
        for name in module_imports(module, path, lazy):
            top = name.split(".")[0]
            if top == PACKAGE:
                todo.append(name)
            elif top not in sys.stdlib_module_names and top != "__future__":
                external.add(top)
    return external


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return packages_distributions()


def distributions_of(import_name: str) -> set[str]:
    """Normalised distribution names that provide a top-level import (in this environment)."""
    return {canonicalize_name(d) for d in _distributions().get(import_name, [])}
