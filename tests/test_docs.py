"""The documentation's promises that point at tests: every test ``docs/platform-fidelity.md`` and
``docs/reliability.md`` name exists, so a reader checking a fact against its page, or a fault against its outcome,
finds the test that holds it."""

from __future__ import annotations

import ast
import re

import pytest

from tests.conftest import REPO

REFERENCE = re.compile(r"tests/((?:\w+/)*test_\w+\.py)::(\w+)")


def _tests(path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


@pytest.mark.parametrize(("page", "at_least"), [("platform-fidelity.md", 60), ("reliability.md", 15)])
def test_every_test_a_page_names_exists(page, at_least):
    text = (REPO / "docs" / page).read_text()
    references = REFERENCE.findall(text)
    assert len(references) >= at_least
    missing = sorted({f"{file}::{name}" for file, name in references
                      if not (REPO / "tests" / file).exists() or name not in _tests(REPO / "tests" / file)})
    assert missing == []
