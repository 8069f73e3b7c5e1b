"""`precrop doctor`'s first check: Ray processes that no live program owns (how it judges: search/record/doctor.py).

Apart from the MLflow and record checks because it reads only the process table (search/infra/processes.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from search.infra.processes import (
    SESSION,
    ProcessInfo,
    ancestors,
    is_ray_process,
    is_search_driver,
    session_of,
)

_NODE_ID = re.compile(r"^--node[-_]id=([0-9a-f]+)$")


# a starter may be a moment younger than the processes it started (start times are rounded by the kernel)
_START_SLACK_S = 1.0


_YOUNG_S = 60.0


@dataclass(frozen=True)
class StaleProcess:
    """A Ray process that no live program owns."""

    pid: int
    name: str
    rss_mb: float
    age_s: float
    session: str
    why: str


@dataclass(frozen=True)
class KeptSession:
    """Ray processes that are in use: a `ray start` cluster or a live program's Ray (reported as info)."""

    session: str
    owner: str
    pids: tuple[int, ...]


@dataclass(frozen=True)
class ProcessScan:
    """What the process scan found, and what the run judgement needs from it."""

    stale: tuple[StaleProcess, ...] = ()
    kept: tuple[KeptSession, ...] = ()
    command: str = ""
    live_nodes: frozenset[str] = frozenset()
    owners: tuple[int, ...] = ()  # live processes that may drive a search (drivers, owners of a live Ray)
    notes: tuple[str, ...] = ()


def scan_processes(processes: Sequence[ProcessInfo], cluster_address: str | None, now: float) -> ProcessScan:
    """Sort the Ray processes among `processes` into stale ones and kept sessions (see the module docstring).

    `cluster_address`: the GCS address of this machine's `ray start` cluster (search.infra.ray_private), or None;
    `now`: seconds since the epoch, for the ages.
    """
    by_pid = {p.pid: p for p in processes}
    drivers = tuple(sorted(p.pid for p in processes if is_search_driver(p)))
    groups: dict[str, list[ProcessInfo]] = {}
    for proc in processes:
        if is_ray_process(proc):
            groups.setdefault(session_of(proc, by_pid) or f"(no session, pid {proc.pid})", []).append(proc)
    cluster = _cluster_sessions(groups, cluster_address)
    stale: list[StaleProcess] = []
    kept: list[KeptSession] = []
    owners = set(drivers)
    for session, members in sorted(groups.items()):
        owner = _owner(session, members, by_pid, cluster, cluster_address)
        if owner is None:
            why = _why_stale(session, by_pid)
            stale += [_stale(p, session, why, now) for p in sorted(members, key=lambda p: p.pid)]
            continue
        owner_pid, description = owner
        if owner_pid is not None:
            owners.add(owner_pid)
        kept.append(KeptSession(session, description, tuple(sorted(p.pid for p in members))))
    live_nodes = frozenset(n for k in kept for p in k.pids for n in _node_ids(by_pid[p]))
    notes = _cluster_notes(cluster_address, cluster)
    if any(p.age_s < _YOUNG_S for p in stale):  # Ray's workers notice a dead raylet within seconds, not at once
        notes += ("some stale Ray processes are under a minute old and may still be exiting: look again in a minute",)
    return ProcessScan(tuple(stale), tuple(kept), _kill_command(stale, kept), live_nodes, tuple(sorted(owners)), notes)


def _cluster_sessions(groups: Mapping[str, list[ProcessInfo]], address: str | None) -> set[str]:
    """The sessions that serve the `ray start` cluster at `address` (its processes name its GCS address)."""
    if not address:
        return set()
    port = address.rsplit(":", 1)[-1]
    marks = (f"--gcs-address={address}", f"--gcs_server_port={port}")
    return {s for s, members in groups.items() if any(a in marks for p in members for a in p.cmdline)}


def _owner(
    session: str, members: Sequence[ProcessInfo], by_pid: Mapping[int, ProcessInfo], cluster: set[str],
    address: str | None,
) -> tuple[int | None, str] | None:  # fmt: skip
    """(pid, description) of what keeps a session in use, or None when nothing does (its processes are stale)."""
    if session in cluster:
        return None, f"the `ray start` cluster at {address}"
    for proc in members:
        driver = next((a for a in ancestors(proc, by_pid) if is_search_driver(a)), None)
        if driver is not None:
            return driver.pid, f"search driver {driver.pid}"
    starter = _starter(session, members, by_pid)
    if starter is not None:
        what = "search driver" if is_search_driver(starter) else "live process"
        return starter.pid, f"{what} {starter.pid} ({_short(starter)})"
    if not SESSION.fullmatch(session):  # no session known: kept while its parent (not init) lives
        parent = by_pid.get(members[0].ppid)
        if parent is not None and parent.pid > 1 and not is_ray_process(parent):
            return parent.pid, f"live process {parent.pid} ({_short(parent)})"
    return None


def _starter(session: str, members: Sequence[ProcessInfo], by_pid: Mapping[int, ProcessInfo]) -> ProcessInfo | None:
    """The live process that started the session: its pid is in the session's name, and it is no younger
    than the session's processes (a pid the system reused for a later process does not count)."""
    match = SESSION.fullmatch(session)
    starter = by_pid.get(int(match.group(1))) if match else None
    if starter is None or is_ray_process(starter):
        return None
    oldest = min(p.started for p in members)
    return starter if starter.started <= oldest + _START_SLACK_S else None


def _why_stale(session: str, by_pid: Mapping[int, ProcessInfo]) -> str:
    match = SESSION.fullmatch(session)
    if match is None:
        return "no Ray session and no parent: orphaned"
    starter = int(match.group(1))
    if starter in by_pid:
        return f"pid {starter} that started this Ray is a later process (pid reused)"
    return f"the process that started this Ray (pid {starter}) is gone"


def _stale(proc: ProcessInfo, session: str, why: str, now: float) -> StaleProcess:
    return StaleProcess(proc.pid, proc.name, round(proc.rss_bytes / 1e6, 1), round(max(now - proc.started, 0.0)),
                        session, why)  # fmt: skip


def _node_ids(proc: ProcessInfo) -> set[str]:
    return {m.group(1) for a in proc.cmdline if (m := _NODE_ID.match(a))}


def _kill_command(stale: Sequence[StaleProcess], kept: Sequence[KeptSession]) -> str:
    """`kill -9 PID ...` (Ray's agents ignore SIGTERM once their raylet is gone); `ray stop --force`, which
    stops every Ray of this user, only when no Ray is in use."""
    if not stale:
        return ""
    command = "kill -9 " + " ".join(str(p.pid) for p in stale)
    return command if kept else f"{command}   (or: ray stop --force; no other Ray runs here)"


def _cluster_notes(address: str | None, cluster: set[str]) -> tuple[str, ...]:
    if address and not cluster:
        return (f"Ray's address file names a `ray start` cluster at {address}, but no process here serves it",)
    return ()


def _short(proc: ProcessInfo) -> str:
    return " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(proc.cmdline[:4]) if a)[:80]
