"""Docs and docstrings name only files, modules and attributes the project has (they drift after a move)."""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("precrop", "trainers", "search")
FOLDERS = "precrop|trainers|search|tests|benchmarks|docs|configs|cluster"
FILE_PATH = re.compile(rf"\b(?:{FOLDERS})/[\w./-]*\.(?:py|md|yaml|sh)\b")
DOTTED = re.compile(r"\b(?:precrop|trainers|search)(?:\.[A-Za-z_]\w*)+")
PLACEHOLDER = re.compile(r"/X\.|<")


def tracked_texts() -> list[tuple[str, str]]:
    """(path, text) of every tracked Markdown and Python file."""
    files = subprocess.run(["git", "ls-files", "*.md", "*.py"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    this = Path(__file__).relative_to(ROOT).as_posix()  # its own examples of stale names are on purpose
    return [(f, (ROOT / f).read_text()) for f in files if (ROOT / f).is_file() and f != this]


def module_names(package: str) -> set[str]:
    """The bare names of every module and subpackage anywhere under `package`."""
    base = ROOT / package
    return {p.stem for p in base.rglob("*.py")} | {p.name for p in base.rglob("*") if p.is_dir()}


def stale_dotted_name(name: str, known: dict[str, set[str]]) -> str | None:
    """Why `name` (like precrop.width.plan.WidthPlan) is stale, or None when it resolves or is not a code path.

    Names that only look dotted (MLflow tags like precrop.role, config keys like search.trials) are left
    alone unless their second part is a module that lives elsewhere in the package (a moved module).
    """
    parts = name.split(".")
    path = ROOT / parts[0]
    for depth, part in enumerate(parts[1:], start=1):
        if (path / part).is_dir():
            path = path / part
        elif (path / f"{part}.py").is_file():
            module = importlib.import_module(".".join(parts[: depth + 1]))
            attr = parts[depth + 1] if depth + 1 < len(parts) else None
            if attr is not None and not hasattr(module, attr):
                return f"{module.__name__} has no attribute {attr}"
            return None
        else:  # not here: stale if a module of that name lives elsewhere in the package (it moved)
            return f"no module {'.'.join(parts[: depth + 1])}" if part in known[parts[0]] else None
    return None


def test_every_named_file_exists() -> None:
    missing = {
        (where, path)
        for where, text in tracked_texts()
        for path in FILE_PATH.findall(text)
        if not PLACEHOLDER.search(path) and not (ROOT / path).exists()
    }
    assert not missing, sorted(missing)


MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def broken_links(where: str, text: str) -> list[tuple[str, str]]:
    """(file, target) of each relative Markdown link in `text` whose target does not exist beside `where`."""
    folder = (ROOT / where).parent
    return [(where, target) for target in MARKDOWN_LINK.findall(text)
            if "://" not in target and not (folder / target).exists()]  # fmt: skip


def test_every_relative_link_resolves() -> None:
    """README.md and docs/ link to each other by relative paths; a moved page breaks them."""
    pages = [(where, text) for where, text in tracked_texts() if where.endswith(".md")]
    assert [link for where, text in pages for link in broken_links(where, text)] == []
    assert broken_links("docs/x.md", "see [a](gone.md) and [b](width.md#the-three-steps)") == [("docs/x.md", "gone.md")]


def test_every_named_module_and_attribute_exists() -> None:
    known = {p: module_names(p) for p in PACKAGES}
    stale = {
        (where, name, why)
        for where, text in tracked_texts()
        for name in set(DOTTED.findall(text))
        if (why := stale_dotted_name(name, known)) is not None
    }
    assert not stale, sorted(stale)


def test_the_checker_catches_a_moved_module_and_a_missing_attribute() -> None:
    known = {p: module_names(p) for p in PACKAGES}
    assert stale_dotted_name("precrop.costmodel", known) == "no module precrop.costmodel"
    assert stale_dotted_name("precrop.width.allocate.ALLOCATORS_GONE", known) is not None
    assert stale_dotted_name("precrop.width.plan.WidthPlan", known) is None
    assert stale_dotted_name("precrop.role", known) is None  # an MLflow tag, not code
    assert stale_dotted_name("search.trials", known) is None  # a config key
