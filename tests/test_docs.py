"""The documentation's promises that point at tests: every test ``docs/platform-fidelity.md`` names exists, so a
reader checking a fact against its page finds the test that holds the sandbox to it."""

from __future__ import annotations

import ast
import re

from tests.conftest import REPO

REFERENCE = re.compile(r"tests/((?:\w+/)*test_\w+\.py)::(\w+)")


def _tests(path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_test_the_fidelity_page_names_exists():
    text = (REPO / "docs" / "platform-fidelity.md").read_text()
    references = REFERENCE.findall(text)
    assert len(references) > 60
    missing = sorted({f"{file}::{name}" for file, name in references
                      if not (REPO / "tests" / file).exists() or name not in _tests(REPO / "tests" / file)})
    assert missing == []
