"""Run a precrop search: `python search.py CONFIG [options]`, the same as `precrop search CONFIG`.

This is the file `ray submit cluster/<cloud>.yaml search.py -- CONFIG` uploads, alone, to the head
node's home directory, where the project is installed. There, this file sits in the working directory
and would shadow the installed `search` package, both in this process and in Ray workers (Ray puts the
driver's working directory on their sys.path). So: as a script, it drops its own directory from
sys.path; imported as `search` (in a worker), it replaces itself with the installed package.
"""

import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _path_without_here() -> list[str]:
    return [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def _installed_search_spec() -> "importlib.machinery.ModuleSpec | None":
    """The spec of the installed `search` package, asking every import hook (editable installs use one)."""
    saved = sys.path[:]
    sys.path[:] = _path_without_here()
    try:
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec("search", None) if find_spec is not None else None
            if spec is not None and spec.submodule_search_locations:
                return spec
        return None
    finally:
        sys.path[:] = saved


def _load_installed_search_package() -> None:
    """Import the real `search` package and put it in sys.modules in place of this file."""
    spec = _installed_search_spec()
    if spec is None or spec.loader is None:
        raise ImportError("the precrop-search package is not installed here: pip install precrop-search")
    package = importlib.util.module_from_spec(spec)
    sys.modules["search"] = package
    spec.loader.exec_module(package)


if __name__ == "__main__":
    if not os.path.isdir(os.path.join(_HERE, "search")):
        sys.path[:] = _path_without_here()
    from search.cli import main

    sys.exit(main(["search", *sys.argv[1:]]))
elif not os.path.isdir(os.path.join(_HERE, "search")):
    _load_installed_search_package()
