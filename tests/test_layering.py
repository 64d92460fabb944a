"""The engine core depends on nothing above it: no import of the server or the entry points."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "radixserve"
CORE = ["managers", "model_executor", "mem_cache", "models", "layers", "attention", "sampling", "kernels"]
ABOVE = ("radixserve.server", "radixserve.entrypoints")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


@pytest.mark.parametrize("package", CORE)
def test_core_imports_nothing_above_it(package: str) -> None:
    files = sorted((PACKAGE / package).rglob("*.py"))
    assert files, f"no sources under radixserve/{package}"
    bad = {f"{f.relative_to(PACKAGE)}: {m}" for f in files for m in imported_modules(f)
           if any(m == above or m.startswith(above + ".") for above in ABOVE)}
    assert not bad, sorted(bad)


def test_the_check_sees_function_level_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from radixserve.server.errors import APIError\n    import radixserve.entrypoints\n")
    assert {"radixserve.server.errors", "radixserve.entrypoints"} <= imported_modules(src)

