"""The layering the README draws: explain/, models/ and db/ import nothing else of the project;
backend/ and labeler/ use them and never each other (imports read with ast, also those inside
functions)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("explain", "models", "db", "backend", "labeler")
ALLOWED = {
    "explain": {"explain"},
    "models": {"models"},
    "db": {"db"},
    "backend": {"backend", "explain", "models", "db"},
    "labeler": {"labeler", "explain", "models", "db"},
}


def project_imports(package: str) -> dict[str, set[str]]:
    """Module path -> the project packages it imports."""
    found = {}
    for path in (REPO / package).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(REPO))] = names & set(PACKAGES)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_the_layering_allows(package):
    wrong = {module: sorted(names - ALLOWED[package]) for module, names in project_imports(package).items()}
    assert {module: names for module, names in wrong.items() if names} == {}
