"""The whole test run: tests run in parallel worker processes (pytest-xdist; `-n`, `--dist loadgroup` and
`--no-loadscope-reorder` are in pyproject.toml's addopts), so the README's `pytest` fits in minutes on 2 cores.

What makes that safe and worth it:
- Tests that share a class-, module- or package-scoped fixture (one real search that several tests read,
  a trained model) form one xdist group and run on one worker, so the shared search runs once; so do
  the tests of every module that read one of this project's session-scoped fixtures (the one tiny search
  of tests/search/conftest.py); every other test is scheduled on its own.
- Each worker's PyTorch uses one thread. Workers that each spin two OpenMP threads on two cores fight
  over them, and the run took longer than a serial one (measured: docs/development.md).
- Tests that start Ray run first: they are the longest and mostly wait (on Ray's start, on trial
  processes), and the quick tests fill the cores around them instead of trailing behind. The memory test
  (ten trials in one process, the longest of the opt-in run) goes first of all: collected last, it ran
  alone at the end for three minutes.
"""

from __future__ import annotations

import os

import pytest
from _pytest.nodeid import NodeId

# set before any test module imports torch, which reads these once at import
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, "1")

SHARED_SCOPES = {"class", "module", "package"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Group the tests that share a fixture (by module), then put the tests that start Ray first, the memory
    test first of them (a stable sort: the order within each kind is kept)."""
    for item in items:
        group = _shared_fixture_group(item)
        if group is not None and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: (item.get_closest_marker("ray") is None, item.get_closest_marker("memory") is None))


def _shared_fixture_group(item: pytest.Item) -> str | None:
    """The xdist group of a test that shares a fixture: a session-scoped fixture of this project's tests (one
    search read by several modules) names the group; else a class-, module- or package-scoped one groups
    the test with its module. pytest's own session fixtures (tmp_path_factory) are defined outside
    tests/ and share nothing worth a group."""
    info = getattr(item, "_fixtureinfo", None)
    defs = [d for found in info.name2fixturedefs.values() for d in found] if info is not None else []
    session = sorted(d.argname for d in defs if d.scope == "session" and d.baseid.startswith("tests"))
    if session:
        return f"session fixture {session[0]}"
    if {d.scope for d in defs} & SHARED_SCOPES:
        return item.nodeid.split("::", 1)[0]
    return None


class _GroupsInNodeIds:
    """pytest-xdist (up to 3.8 at least) tells its controller a test's group by appending `@group` to the
    test's node id, writing `item._nodeid`; pytest 9.2 keeps node ids in `item._id` and ignores that, so
    every group silently falls apart (pytest-dev/pytest-xdist#1386, open). This appends it where pytest
    reads it, once xdist's hook has run, and does nothing where xdist already did it."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """Append `@group` to the node id of every grouped test, as xdist's loadgroup scheduler expects."""
        if not getattr(config.option, "loadgroup", False):
            return
        for item in items:
            mark = item.get_closest_marker("xdist_group")
            if mark is None or "@" in item.nodeid.rsplit("]", 1)[-1] or not hasattr(item, "_id"):
                continue
            group = mark.args[0] if mark.args else mark.kwargs.get("name", "default")
            item._id = NodeId.parse(f"{item.nodeid}@{group}")


def pytest_configure(config: pytest.Config) -> None:
    """Register the node-id fix for xdist groups (in the workers, where tests are collected)."""
    config.pluginmanager.register(_GroupsInNodeIds(), "precrop-xdist-groups")
