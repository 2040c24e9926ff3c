"""Every ```python block of docs/*.md runs (numpy backend), every figure a page shows exists, and the reference
summaries beside the figures are strict JSON, as every JSON file lgd writes."""

import json
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(DOCS.glob("*.md"))


def _python_blocks(text: str) -> list:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_pages_exist():
    names = {page.name for page in PAGES}
    assert {"getting-started.md", "api.md", "backends.md", "models.md", "science.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_python_examples_run(page):
    for block in _python_blocks(page.read_text()):
        exec(compile(block, str(page), "exec"), {"__name__": "docs_example"})


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_linked_figures_and_pages_exist(page):
    for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
        if "://" not in target:
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_every_example_page_has_examples():
    assert sum(len(_python_blocks(page.read_text())) for page in PAGES) >= 5


@pytest.mark.parametrize("summary", sorted((DOCS / "figures").glob("*.json")), ids=lambda path: path.name)
def test_the_reference_summaries_are_strict_json(summary):
    def refuse(token):
        raise ValueError(f"{summary.name} is not strict JSON: {token}")

    json.loads(summary.read_text(), parse_constant=refuse)
