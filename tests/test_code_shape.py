"""The shape of the product code a newcomer reads: no import cycle, no file over 400 lines, no function over 50."""

from __future__ import annotations

import ast
import pathlib

import grimp
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("precrop", "trainers", "search")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 50


def product_files() -> list[pathlib.Path]:
    """Every Python file of the product packages."""
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def import_cycles(graph: grimp.ImportGraph, packages: tuple[str, ...] = PACKAGES) -> set[tuple[str, str]]:
    """Pairs of modules of `packages` that import each other, directly or through others (each pair once)."""
    cycles = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.split(".")[0] in packages and graph.chain_exists(importer=imported, imported=module):
                cycles.add((min(module, imported), max(module, imported)))
    return cycles


def long_functions(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    """`file:function (lines)` for each function or method of `path` longer than MAX_FUNCTION_LINES."""
    tree = ast.parse(path.read_text())
    return [f"{path.relative_to(root)}:{node.name} ({node.end_lineno - node.lineno + 1})"
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno is not None and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def test_no_import_cycle_in_the_product() -> None:
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)
    assert import_cycles(graph) == set()


def test_a_cycle_is_found_when_there_is_one(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cycle finder is not vacuous: three modules importing each other in a ring are reported."""
    package = tmp_path / "loop"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("import loop.b\n")
    (package / "b.py").write_text("import loop.c\n")
    (package / "c.py").write_text("import loop.a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("loop", cache_dir=None)
    assert import_cycles(graph, ("loop",)) == {("loop.a", "loop.c"), ("loop.b", "loop.c"), ("loop.a", "loop.b")}


def test_no_product_file_is_over_400_lines() -> None:
    lines = {str(path.relative_to(ROOT)): path.read_text().count("\n") for path in product_files()}
    assert {name: n for name, n in lines.items() if n > MAX_FILE_LINES} == {}


def test_no_product_function_is_over_50_lines() -> None:
    assert [f for path in product_files() for f in long_functions(path)] == []


def test_the_function_measure_counts_a_long_function(tmp_path: pathlib.Path) -> None:
    """long_functions is not vacuous: a 51-line function is reported, a 50-line one is not."""
    body = "\n".join(f"    x{i} = {i}" for i in range(49))
    source = tmp_path / "long.py"
    source.write_text(f"def fifty():\n{body}\n\n\ndef fifty_one():\n{body}\n    return 1\n")
    assert long_functions(source, tmp_path) == ["long.py:fifty_one (51)"]
