"""The user documentation in docs/ stays true: its playbooks run on the lab and it covers every module.

Every page's ```yaml block whose first line is `# docs-playbook` is a complete playbook; it runs
against the lab exactly as printed on the page (`pytest -s` shows the output and the run time).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from conftest import REPO, run_playbook

DOCS = REPO / "docs"
MODULE_DIR = REPO / "plugins" / "modules"
MARKER = "# docs-playbook"
FENCE = re.compile(r"^```yaml[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def playbooks(page: Path) -> list[str]:
    return [block for block in FENCE.findall(page.read_text()) if block.lstrip().startswith(MARKER)]


PAGES = sorted(DOCS.glob("*.md"))
PAGES_WITH_PLAYBOOKS = [page for page in PAGES if playbooks(page)]


def test_docs_exist():
    assert (DOCS / "README.md").exists(), "docs/README.md is the index of the documentation"
    assert PAGES_WITH_PLAYBOOKS, "no docs page carries a playbook"


@pytest.mark.parametrize("page", PAGES_WITH_PLAYBOOKS, ids=lambda p: p.name)
def test_docs_playbook_runs(page, lab_hosts, tmp_path):
    for index, text in enumerate(playbooks(page)):
        playbook = tmp_path / f"{page.stem}-{index}.yml"
        playbook.write_text(text)
        started = time.monotonic()
        proc = run_playbook(playbook)
        elapsed = time.monotonic() - started
        print(proc.stdout)
        print(f"docs/{page.name} playbook {index}: rc={proc.returncode} in {elapsed:.1f} s")
        assert proc.returncode == 0, f"docs/{page.name} playbook {index} failed:\n{proc.stdout[-20000:]}"
        assert "failed=0" in proc.stdout and "unreachable=0" in proc.stdout


def test_index_lists_existing_pages():
    index = (DOCS / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", index)
    assert links, "docs/README.md links no page"
    missing = [link for link in links if not (DOCS / link).exists()]
    assert not missing, f"docs/README.md lists pages that do not exist: {missing}"
    unlisted = [page.name for page in PAGES if page.name != "README.md" and page.name not in links]
    assert not unlisted, f"docs pages missing from docs/README.md: {unlisted}"


def test_every_module_is_documented():
    text = "\n".join(page.read_text() for page in PAGES)
    modules = sorted(p.stem for p in MODULE_DIR.glob("*.py") if p.stem != "__init__")
    missing = [m for m in modules if not re.search(rf"virtnode\.kvm\.{re.escape(m)}\b", text)]
    assert not missing, f"modules no docs page mentions: {missing}"
