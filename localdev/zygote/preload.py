"""What a zygote imports before it forks: read from the functions' own source.

Every ``import x`` and ``from x import y`` (at any depth: functions import heavy modules lazily
in ``init``) in the environment's function folders and in ``shared/`` and ``events/``, keeping
the third-party ones. Ours are left to each replica: a module of ours may read its settings at
import, and each replica has its own settings. The zygote skips what its interpreter does not
have (``shared/`` serves every environment).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

OURS = frozenset({"functions", "shared", "events", "localdev", "bench", "tests"})
# Imported first, in the order the runtime imports them: prometheus_client must be imported
# before feast, whose metrics module otherwise switches it to multiprocess files in /tmp (an open
# file each replica would inherit). The runtime imports it before any handler, so do we.
FIRST = ("prometheus_client", "flask", "gunicorn.app.base", "gunicorn.workers.gthread")
# Only the Dask engine imports these, and ``distributed`` starts threads of its own: a replica
# that needs them imports them after the fork.
SKIP_TOP = frozenset({"dask", "distributed"})
SKIP = frozenset({"xgboost.dask"})
# Set in the zygote's environment only: the libraries here that start a thread when imported.
FORK_SAFE_ENV = {
    "OPENBLAS_NUM_THREADS": "1",  # OpenBLAS starts its thread pool at load
    "JE_ARROW_MALLOC_CONF": "background_thread:false",  # pyarrow's jemalloc purger thread
}


def imported_modules(source: str) -> set[str]:
    """Absolute module names a Python source imports, at any depth (``from a import b`` gives
    ``a`` and ``a.b``: b may be a submodule)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def _source_of(name: str, repo_root: Path) -> Path | None:
    """Our module's file (``shared.modelling`` → shared/modelling.py), None if not ours."""
    if name.split(".")[0] not in OURS:
        return None
    base = repo_root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def third_party(names: Iterable[str]) -> list[str]:
    """The third-party names in import order: the runtime's own (``FIRST``), then sorted."""
    kept = {
        name
        for name in names
        if (top := name.split(".")[0]) not in OURS
        and top not in sys.stdlib_module_names
        and top not in SKIP_TOP
        and name not in SKIP
    }
    return [*FIRST, *sorted(kept - set(FIRST))]


def modules_for(directories: Iterable[Path], repo_root: Path) -> list[str]:
    """What to preload for the functions in ``directories``: the third-party modules their
    source imports, following our own modules they import (``shared.*``, ``events.*``) and
    the runtime that serves them."""
    files = [path for root in directories for path in sorted(Path(root).rglob("*.py"))]
    files.append(repo_root / "shared" / "runtime.py")
    seen_files: set[Path] = set()
    names: set[str] = set()
    while files:
        path = files.pop()
        if path in seen_files:
            continue
        seen_files.add(path)
        for name in imported_modules(path.read_text(encoding="utf-8")):
            names.add(name)
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # a package's __init__ runs on import too
                source = _source_of(".".join(parts[:depth]), repo_root)
                if source is not None and source not in seen_files:
                    files.append(source)
    return third_party(names)
