"""The processes of this machine as Ray's: which are Ray's, which Ray session each serves, which drive a search.

Shared by `precrop doctor` (search/record/doctor.py) and the reaper of an embedded Ray (search/run/reaper.py); it
imports neither torch nor MLflow, so the reaper starts in a fraction of a second.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from precrop.errors import UserError

# session_2026-11-30_07-16-08_644318_20380: Ray's session folder, named after the process that started Ray
SESSION = re.compile(r"session_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_\d+_(\d+)")
# a Python script of the ray package (dashboard, monitor, log_monitor, agents, workers before they rename)
_RAY_SCRIPT = re.compile(r"[/\\]ray[/\\](?:core|dashboard|_private|autoscaler)[/\\]")
_RAY_BINARIES = ("raylet", "gcs_server", "plasma_store")
_DRIVER_COMMANDS = ("search", "study")
_ANCESTOR_DEPTH = 64


@dataclass(frozen=True)
class ProcessInfo:
    """One process of this machine, as `precrop doctor` and the reaper look at it."""

    pid: int
    ppid: int
    cmdline: tuple[str, ...]
    rss_bytes: int = 0
    started: float = 0.0  # seconds since the epoch
    open_paths: tuple[str, ...] = ()  # files it holds open (a Ray process: its session's logs)

    @property
    def name(self) -> str:
        """`ray::ImplicitFunc`, `raylet`, or the script a Python process runs."""
        args = [a for a in self.cmdline if a]
        if not args:
            return "?"
        if args[0].startswith("ray::"):
            return args[0]
        script = next((a for a in args[1:3] if a.endswith(".py")), None)
        return os.path.basename(script or args[0])


def list_processes() -> list[ProcessInfo]:
    """The processes of this machine (psutil); their open files only where the session must come from them."""
    try:
        import psutil  # type: ignore[import-untyped]  # no type information shipped
    except ImportError:
        raise UserError("precrop needs psutil to list processes: pip install psutil") from None
    found = []
    for proc in psutil.process_iter(["pid", "ppid", "cmdline", "create_time", "memory_info"]):
        info = proc.info
        cmdline = tuple(info["cmdline"] or ())
        paths: tuple[str, ...] = ()
        if cmdline and cmdline[0].startswith("ray::"):
            try:
                paths = tuple(f.path for f in proc.open_files())
            except (psutil.Error, OSError):  # gone meanwhile, or another user's
                paths = ()
        rss = info["memory_info"].rss if info["memory_info"] is not None else 0
        found.append(ProcessInfo(info["pid"], info["ppid"] or 0, cmdline, rss, info["create_time"] or 0.0, paths))
    return found


def is_ray_process(proc: ProcessInfo) -> bool:
    """A process of Ray: raylet, gcs_server, a `ray::` worker, or a script of the ray package."""
    args = proc.cmdline
    if not args:
        return False
    if args[0].startswith("ray::") or os.path.basename(args[0]) in _RAY_BINARIES:
        return True
    return any(_RAY_SCRIPT.search(a) for a in args[:3])


def is_search_driver(proc: ProcessInfo) -> bool:
    """A process running `precrop search`, `precrop study` or a `search.py` script."""
    args = [a for a in proc.cmdline[:8] if a]
    for i, arg in enumerate(args):
        base = os.path.basename(arg)
        if base == "search.py":
            return True
        if base == "precrop" or (arg == "search.cli" and i > 0 and args[i - 1] == "-m"):
            command = next((a for a in args[i + 1 :] if not a.startswith("-")), "")
            return command in _DRIVER_COMMANDS
    return False


def session_of(proc: ProcessInfo, by_pid: Mapping[int, ProcessInfo]) -> str | None:
    """The Ray session of `proc`: named in its command line or open files, else in an ancestor's."""
    current: ProcessInfo | None = proc
    for _ in range(_ANCESTOR_DEPTH):
        if current is None:
            return None
        for text in (*current.cmdline, *current.open_paths):
            match = SESSION.search(text)
            if match:
                return match.group(0)
        current = by_pid.get(current.ppid) if current.ppid not in (0, current.pid) else None
    return None


def ancestors(proc: ProcessInfo, by_pid: Mapping[int, ProcessInfo]) -> Iterable[ProcessInfo]:
    """The live ancestors of `proc`, its parent first (init and the process itself excluded)."""
    current = by_pid.get(proc.ppid) if proc.ppid != proc.pid else None
    for _ in range(_ANCESTOR_DEPTH):
        if current is None or current.pid <= 1:
            return
        yield current
        current = by_pid.get(current.ppid) if current.ppid != current.pid else None


def processes_of_ray_started_by(processes: Iterable[ProcessInfo], starter_pid: int) -> list[ProcessInfo]:
    """The Ray processes among `processes` whose session the process `starter_pid` started (Ray names a
    session after the process that started it: `session_<time>_<pid>`)."""
    listed = list(processes)
    by_pid = {p.pid: p for p in listed}
    found = []
    for proc in listed:
        session = session_of(proc, by_pid) if is_ray_process(proc) else None
        match = SESSION.fullmatch(session) if session else None
        if match is not None and int(match.group(1)) == starter_pid:
            found.append(proc)
    return found
