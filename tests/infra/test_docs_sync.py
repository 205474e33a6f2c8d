"""The generated reference pages in docs/ match the code, and the check can fail.

Also: every relative link in README.md and docs/ names a file (and a heading) that exists, so
moving a section out of the README cannot leave a dead link behind.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import typer
from pydantic import BaseModel, Field, create_model

from ray_app.core.settings import ClusterSettings, IngestSettings, Settings
from tests.infra import docs_sync
from tests.infra.project import REPO

pytestmark = pytest.mark.infra

PAGES = sorted({block.page for block in docs_sync.BLOCKS})


def _copy_docs(tmp_path: Path) -> Path:
    """A copy of the pages under ``tmp_path`` laid out like the repository."""
    for page in PAGES:
        target = tmp_path / page.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(page, target)
    return tmp_path


def test_generated_pages_are_current() -> None:
    stale = docs_sync.stale_pages()
    assert not stale, (
        f"{[str(p.relative_to(REPO)) for p in stale]} are stale: run make docs "
        "(python -m tests.infra.docs_sync)"
    )
    assert docs_sync.main(["--check"]) == 0


def test_check_fails_when_a_generated_line_is_edited(tmp_path: Path) -> None:
    root = _copy_docs(tmp_path)
    page = root / "docs" / "settings.md"
    text = page.read_text(encoding="utf-8")
    edited = text.replace("| `8265` |", "| `8266` |")
    assert edited != text
    page.write_text(edited, encoding="utf-8")
    assert docs_sync.stale_pages(root=root) == [page]
    # Rewriting restores exactly the committed page.
    assert docs_sync.render_pages(root=root)[page] == text


def test_check_fails_when_a_setting_changes(tmp_path: Path) -> None:
    root = _copy_docs(tmp_path)
    changed = create_model(
        "ChangedSettings",
        __base__=Settings,
        new_knob=(int, Field(3, ge=1, description="A setting the page does not list yet")),
    )
    blocks = (docs_sync.Block("settings", docs_sync.SETTINGS_PAGE, lambda: _render(changed)),)
    assert docs_sync.stale_pages(blocks, root) == [root / "docs" / "settings.md"]
    rendered = docs_sync.render_pages(blocks, root)[root / "docs" / "settings.md"]
    row = "| `new_knob` | `RAY_APP_NEW_KNOB` | int >= 1 | `3` | A setting the page does not list"
    assert row in rendered


def _render(model: type[BaseModel]) -> str:
    return docs_sync.settings_reference(model)


def test_check_fails_when_a_command_changes(tmp_path: Path) -> None:
    root = _copy_docs(tmp_path)
    other = typer.Typer()

    @other.command()
    def hello(name: str = typer.Option("x", help="Who to greet")) -> None:
        """Say hello."""

    @other.command()
    def bye() -> None:
        """Say bye."""

    blocks = (docs_sync.Block("cli", docs_sync.CLI_PAGE, lambda: docs_sync.cli_reference(other)),)
    assert docs_sync.stale_pages(blocks, root) == [root / "docs" / "cli.md"]
    assert "* `--name <str>`: Who to greet  [default: x]" in docs_sync.cli_reference(other)


def test_a_setting_without_a_description_is_refused() -> None:
    class Section(BaseModel):
        documented: int = Field(1, description="Has one")
        bare: int = 2

    model = create_model("WithBare", __base__=BaseModel, section=(Section, Section()))
    with pytest.raises(ValueError, match=r"Section\.bare has no description"):
        docs_sync.settings_reference(model)


def test_types_and_bounds_read_as_in_the_reference() -> None:
    ingest = IngestSettings.model_fields
    cluster = ClusterSettings.model_fields
    assert docs_sync.type_text(ingest["source"].annotation) == "`sample` | `csv` | `yahoo`"
    assert docs_sync.type_text(ingest["tickers"].annotation) == "list of string"
    port = cluster["gcs_port"]
    assert docs_sync.type_text(port.annotation, port.metadata) == "int in [1024, 65535] or null"
    assert docs_sync.default_text(ingest["tickers"]) == "`[]`"
    assert docs_sync.default_text(cluster["state_dir"]) == "`~/.ray-app`"


def test_cli_reference_does_not_depend_on_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "20")
    narrow = docs_sync.cli_reference()
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert docs_sync.cli_reference() == narrow
    # Plain mode: no HTML entities from rich's export, no cut command summaries.
    assert "&gt;" not in narrow and "&#x27;" not in narrow
    assert "* `ingest`: Fetch, validate and store daily bars per ticker, in parallel on Ray." in (
        narrow
    )


def test_blocks_need_their_markers() -> None:
    with pytest.raises(ValueError, match="expected one generated block 'cli'"):
        docs_sync.replace_block("# a page without markers\n", "cli", "body")


_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors: set[str] = set()
    for line in _FENCE.sub("", markdown).splitlines():
        if not line.startswith("#"):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        anchor, n = slug, 1
        while anchor in anchors:
            anchor, n = f"{slug}-{n}", n + 1
        anchors.add(anchor)
    return anchors


def _resolves(page: Path, target: str) -> bool:
    path, _, anchor = target.partition("#")
    linked = (page.parent / path).resolve() if path else page
    if not linked.exists():
        return False
    return not anchor or anchor in _anchors(linked.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "page",
    [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_relative_links_resolve(page: Path) -> None:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    broken = [
        target
        for target in _LINK.findall(text)
        if "://" not in target and not target.startswith("mailto:") and not _resolves(page, target)
    ]
    assert not broken, f"{page.relative_to(REPO)} links to what does not exist: {broken}"


def test_a_dead_link_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## A section\n", encoding="utf-8")
    assert _resolves(page, "#a-section") and _resolves(page, "page.md#title")
    assert not _resolves(page, "#gone") and not _resolves(page, "other.md")
