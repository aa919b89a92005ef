"""pyproject.toml declares what the product imports, and the default install stays under
licences compatible with the project's Apache-2.0.

Every third-party module that labeler/, backend/, explain/, db/ and models/ import maps (through
the installed distributions' own records) to a declared requirement: a module-level import to a
default dependency, an import inside a function to a default dependency or an optional extra
other than `test` and `bench`. Every default dependency is imported, or is a runtime plugin named
below with its reason. No distribution of the default install declares a GPL licence."""
from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
PACKAGES = ("labeler", "backend", "explain", "db", "models")
# default dependencies that no product module imports by name, and why they are there
PLUGINS = {
    "psycopg": "SQLAlchemy's PostgreSQL driver, chosen by DATABASE_URL=postgresql+psycopg://...",
}


def names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


DEFAULT = names(PROJECT["dependencies"])
OPTIONAL = set().union(*(names(reqs) for extra, reqs in PROJECT["optional-dependencies"].items() if extra not in ("test", "bench")))


class Imports(ast.NodeVisitor):
    """Top-level module names of absolute imports: (module level, inside a function)."""

    def __init__(self):
        self.depth, self.eager, self.lazy = 0, set(), set()

    def _function(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def _add(self, module: str):
        (self.lazy if self.depth else self.eager).add(module.split(".")[0])

    def visit_Import(self, node):
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node):
        if node.level == 0:
            self._add(node.module)


def product_imports() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> files importing it at module level, module -> files importing it in a function)."""
    eager, lazy = {}, {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            found = Imports()
            found.visit(ast.parse(path.read_text(), filename=str(path)))
            for module in found.eager:
                eager.setdefault(module, set()).add(str(path.relative_to(REPO)))
            for module in found.lazy - found.eager:
                lazy.setdefault(module, set()).add(str(path.relative_to(REPO)))
    return eager, lazy


def third_party(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: files for m, files in modules.items() if m not in sys.stdlib_module_names and m not in PACKAGES}


@functools.cache
def installed_modules() -> dict[str, list[str]]:
    return md.packages_distributions()


def distributions(module: str) -> set[str]:
    return {canonicalize_name(d) for d in installed_modules().get(module, [])}


def test_the_scan_sees_the_product_imports():
    eager, lazy = product_imports()
    assert {"numpy", "keras", "pydicom", "urllib3", "certifi", "scipy"} <= set(third_party(eager))
    assert {"httpx", "tf_keras"} <= set(third_party(lazy))  # labeler/cli.py, models/loading.py
    assert "os" in eager and "os" not in third_party(eager)
    assert distributions("PIL") == {"pillow"} and distributions("cv2") == {"opencv-python-headless"}


def test_every_module_level_import_is_a_default_dependency():
    eager, _ = product_imports()
    undeclared = {m: sorted(files) for m, files in third_party(eager).items() if not distributions(m) & DEFAULT}
    assert undeclared == {}, f"imported but not in [project] dependencies: {undeclared}"


def test_every_import_inside_a_function_is_declared_somewhere_the_product_installs():
    _, lazy = product_imports()
    allowed = DEFAULT | OPTIONAL
    undeclared = {m: sorted(files) for m, files in third_party(lazy).items() if not distributions(m) & allowed}
    assert undeclared == {}, f"imported but neither a dependency nor in a product extra: {undeclared}"


def test_every_default_dependency_is_imported_or_a_named_plugin():
    eager, lazy = product_imports()
    used = set().union(*(distributions(m) for m in third_party({**lazy, **eager})))
    assert sorted(DEFAULT - used) == sorted(canonicalize_name(p) for p in PLUGINS)


def licence(dist: md.Distribution) -> str:
    meta = dist.metadata
    classifiers = [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    return " | ".join(filter(None, [meta.get("License-Expression"), (meta.get("License") or "")[:200], *classifiers]))


def default_install() -> dict[str, md.Distribution]:
    """The installed distributions the default dependencies pull in, transitively."""
    found: dict[str, tuple[md.Distribution, frozenset[str]]] = {}
    todo = [Requirement(r) for r in PROJECT["dependencies"]]
    while todo:
        requirement = todo.pop()
        name, extras = canonicalize_name(requirement.name), frozenset(requirement.extras)
        if name in found and extras <= found[name][1]:
            continue
        dist = md.distribution(requirement.name)
        extras |= found.get(name, (dist, frozenset()))[1]
        found[name] = (dist, extras)
        for line in dist.requires or []:
            needed = Requirement(line)
            if needed.marker is None or any(needed.marker.evaluate({"extra": e}) for e in ("", *extras)):
                todo.append(needed)
    return {name: dist for name, (dist, _) in found.items()}


def test_the_default_install_has_no_gpl_distribution():
    installed = default_install()
    assert {"tensorflow", "pydicom", "pillow", "psycopg-binary"} <= set(installed)
    gpl = {name: licence(d) for name, d in installed.items() if re.search(r"(?<!L)GPL|General Public", licence(d).replace("Lesser General Public", "LGPL"))}
    assert gpl == {}, f"GPL in the default install (make it an optional extra): {gpl}"


def test_the_project_licence_is_declared_and_shipped():
    assert PROJECT["license"] == "Apache-2.0" and PROJECT["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "the cxr-labeler authors" in text
