"""The package's shape holds: each subpackage imports only what its docstring allows, no
module imports another's private names, samlib never imports streamlit."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMLIB = ROOT / "samlib"
SUBPACKAGES = sorted(p.parent.name for p in SAMLIB.glob("*/__init__.py"))


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import in a file (names empty for ``import x``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def _allowed(package: str) -> set[str]:
    """The samlib parts a subpackage may import, read from its docstring's "May import:"."""
    doc = importlib.import_module(f"samlib.{package}").__doc__ or ""
    found = re.search(r"May import:(.*?)(?:\n\n|$)", doc, re.S)
    assert found, f"samlib.{package}'s docstring does not say what it may import"
    text = " ".join(found.group(1).split())
    named = {m.split(".")[1] for m in re.findall(r"samlib\.\w+", text)}
    if text.startswith("every subpackage"):
        but = re.search(r"but (\w+(?: and \w+)?)", text)
        excluded = set(but.group(1).split(" and ")) if but else set()
        return set(SUBPACKAGES) - excluded | {"errors", "coords", "files", "workspace"} | named
    return named


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_subpackages_import_only_what_their_docstring_allows(package):
    allowed = _allowed(package) | {package}
    used = {}
    for path in (SAMLIB / package).glob("*.py"):
        for module, _ in _imports(path):
            parts = module.split(".")
            if parts[0] == "samlib" and len(parts) > 1:
                used.setdefault(parts[1], path.name)
    extra = {part: where for part, where in used.items() if part not in allowed}
    assert not extra, f"samlib.{package} imports {extra} (allowed: {sorted(allowed)})"


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_subpackages_list_public_names_that_exist(package):
    mod = importlib.import_module(f"samlib.{package}")
    assert mod.__doc__ and mod.__all__
    assert all(hasattr(mod, name) for name in mod.__all__)


def test_no_module_imports_another_modules_private_names():
    files = [*SAMLIB.rglob("*.py"), *(ROOT / d for d in ("app.py",))]
    for folder in ("ui", "pages", "tests", "scripts", "benchmarks"):
        files += list((ROOT / folder).rglob("*.py"))
    bad = [
        f"{path.relative_to(ROOT)}: {module}.{name}"
        for path in files
        for module, names in _imports(path)
        if module.startswith("samlib")
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not bad


def _edits_sys_path(node: ast.AST) -> bool:
    """A call of ``sys.path.<method>(...)`` (insert, append, extend)."""
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return False
    owner = node.func.value
    return (
        isinstance(owner, ast.Attribute)
        and owner.attr == "path"
        and isinstance(owner.value, ast.Name)
        and owner.value.id == "sys"
    )


def test_samlib_never_imports_streamlit_and_nothing_edits_sys_path():
    for path in SAMLIB.rglob("*.py"):
        assert not any(m.split(".")[0] == "streamlit" for m, _ in _imports(path)), path
    for folder in ("samlib", "ui", "pages", "tests", "scripts", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            assert not any(_edits_sys_path(n) for n in ast.walk(tree)), path
