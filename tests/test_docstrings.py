"""Every public function, class and method of the five packages carries a docstring.

The house style (``shared/architecture.md``, "Docstrings and names") asks public functions to say
shapes, units and a ``Raises:`` line for each ``RidlError`` or rejection they raise. This test
checks only the floor of that rule, which a machine can check: that a docstring is there at all.
It reads the source with :mod:`ast` (nothing is imported, so no back-end or Prefect is needed).

Public means: a module-level function or class whose name does not start with ``_``, and a
method of such a class whose name does not start with ``_`` (dunders included in "private":
``__init__`` is described by its class). Functions nested in functions are not public.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ridl", "export", "deid_recipes", "curation", "flows")

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _public(name: str) -> bool:
    return not name.startswith("_")


def _undocumented(path: Path) -> list[str]:
    """``module.py:line name`` for each public definition of ``path`` without a docstring."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    rel = path.relative_to(ROOT).as_posix()
    missing: list[str] = []

    def check(node: Definition, qualname: str) -> None:
        if ast.get_docstring(node) is None:
            missing.append(f"{rel}:{node.lineno} {qualname}")

    for node in tree.body:
        if not isinstance(node, Definition) or not _public(node.name):
            continue
        check(node, node.name)
        if isinstance(node, ast.ClassDef):
            for member in node.body:
                if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef) and _public(
                    member.name
                ):
                    check(member, f"{node.name}.{member.name}")
    return missing


def _modules(package: str) -> list[Path]:
    return sorted(
        p for p in (ROOT / package).rglob("*.py") if "tests" not in p.relative_to(ROOT).parts
    )


@pytest.mark.parametrize("package", PACKAGES)
def test_public_definitions_have_docstrings(package: str) -> None:
    missing = [item for path in _modules(package) for item in _undocumented(path)]
    assert not missing, "public definitions without a docstring:\n  " + "\n  ".join(missing)


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_have_docstrings(package: str) -> None:
    """Each non-empty module says what room it is in the layout (see README's layout table)."""
    missing = [
        path.relative_to(ROOT).as_posix()
        for path in _modules(package)
        if path.read_text(encoding="utf-8").strip()
        and ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) is None
    ]
    assert not missing, "modules without a docstring:\n  " + "\n  ".join(missing)
