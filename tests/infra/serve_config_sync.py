"""Copy serve_config.yaml into cluster/ray-service.yaml's ``serveConfigV2`` block, verbatim.

The RayService serves exactly what ``serve run serve_config.yaml`` serves locally, so the file
is the single source and the manifest holds a copy: a YAML literal block whose text is the
file's text, comments included. After editing serve_config.yaml (or ``ray-app rollout`` wrote
it), refresh the copy; tests/infra/test_kuberay_workloads.py fails until it matches::

    .venv/bin/python -m tests.infra.serve_config_sync          # rewrite the block
    .venv/bin/python -m tests.infra.serve_config_sync --check  # exit 1 when out of date
"""

from __future__ import annotations

import argparse
import re
import sys

from tests.infra.project import CLUSTER, REPO

SERVE_CONFIG = REPO / "serve_config.yaml"
RAY_SERVICE = CLUSTER / "ray-service.yaml"

_HEADER = re.compile(r"^(?P<indent> *)serveConfigV2: *\|[-+]?[ \t]*$")


def literal_block(text: str, indent: str) -> tuple[str, list[str]]:
    """The block indicator and the indented lines of a literal block holding ``text``."""
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    if first[:1] in (" ", "\t"):
        raise ValueError("the text's first non-empty line is indented: YAML needs it flush left")
    if "\t" in "".join(line[: len(line) - len(line.lstrip())] for line in lines):
        raise ValueError("the text indents with tabs, which YAML does not allow")
    if not text.endswith("\n"):
        chomp = "-"
    elif text.endswith("\n\n"):
        chomp = "+"
    else:
        chomp = ""
    body = [f"{indent}{line}\n" if line else "\n" for line in lines]
    return "|" + chomp, body


def render(manifest: str, serve_config: str) -> str:
    """``manifest`` with its one ``serveConfigV2`` literal block replaced by ``serve_config``."""
    lines = manifest.splitlines(keepends=True)
    headers = [i for i, line in enumerate(lines) if _HEADER.match(line.rstrip("\n"))]
    if len(headers) != 1:
        raise ValueError(f"expected one 'serveConfigV2: |' line, found {len(headers)}")
    start = headers[0]
    header_match = _HEADER.match(lines[start].rstrip("\n"))
    assert header_match is not None
    indent = header_match["indent"]
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith(indent + " ")):
        end += 1
    # Blank lines between the block and the next key separate; they are not content.
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    indicator, body = literal_block(serve_config, indent + "  ")
    header = f"{indent}serveConfigV2: {indicator}\n"
    return "".join([*lines[:start], header, *body, *lines[end:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if stale")
    args = parser.parse_args(argv)
    current = RAY_SERVICE.read_text(encoding="utf-8")
    wanted = render(current, SERVE_CONFIG.read_text(encoding="utf-8"))
    if wanted == current:
        print(f"{RAY_SERVICE.relative_to(REPO)} is up to date with serve_config.yaml")
        return 0
    if args.check:
        print(
            f"{RAY_SERVICE.relative_to(REPO)} is stale: run python -m tests.infra.serve_config_sync"
        )
        return 1
    RAY_SERVICE.write_text(wanted, encoding="utf-8")
    print(f"updated {RAY_SERVICE.relative_to(REPO)} from serve_config.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
