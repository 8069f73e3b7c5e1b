"""`precrop doctor`: what searches left behind on this machine, each with the exact command that cleans it.

Three kinds of leftovers, each judged so that nothing a live search still uses is reported:

- Ray processes no live program owns. Every Ray process names its session (`session_<time>_<pid>`) in its
  command line or its open log files (a `ray::` worker rewrites its command line; its parent or its logs
  still tell). The session's last number is the process that started Ray: for an embedded Ray the search
  driver itself. A session is kept (not stale) when it is the `ray start` cluster of this machine, when
  that starter or any ancestor of its processes is still alive, else its processes are stale.
- RUNNING MLflow runs (a search's parent run, a trial's run) that no driver on this machine can still
  end: a trial whose Ray node is gone, a parent none of whose trials is alive, while no process that may
  drive a search is alive. Anything that might still be live is listed as not judged instead.
- Search records (precrop-search.json) under the storage path whose parent run is gone from the store, or
  whose Tune state was never saved.

It only reads; `--end-run` (the one write) ends runs it judged stale whose Tune state is gone, which
`precrop reconcile` cannot end.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from precrop.errors import UserError
from search.infra.processes import (
    ProcessInfo,
)
from search.record import tracking
from search.record.doctor_processes import ProcessScan, scan_processes
from search.record.records import RECORD_FILE, SearchRecord, read_record, tune_state_saved
from search.spec.schema import Outcome, Role, RunStatus, Tag

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run


@dataclass(frozen=True)
class RunFinding:
    """A RUNNING run of a search and, when stale, the command that ends it."""

    run_id: str
    role: str
    search: str
    why: str
    command: str = ""


@dataclass(frozen=True)
class RecordFinding:
    """A search record whose search is gone, and the command that removes its folder."""

    folder: str
    search: str
    why: str
    command: str


@dataclass
class Report:
    """Everything `precrop doctor` found."""

    processes: ProcessScan
    runs: list[RunFinding] = field(default_factory=list)
    runs_not_judged: list[RunFinding] = field(default_factory=list)
    records: list[RecordFinding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def found(self) -> int:
        """How many leftovers (stale processes, runs and records); 0: nothing to clean."""
        return len(self.processes.stale) + len(self.runs) + len(self.records)


# ----- Ray processes: search/record/doctor_processes.py -----


# ----- MLflow runs -----


@dataclass(frozen=True)
class Machine:
    """What this machine runs, as the run judgement needs it."""

    host: str
    live_nodes: frozenset[str]
    owners: tuple[int, ...]  # live processes that may drive a search
    local_store: bool  # a sqlite or file store: its drivers run here


def judge_runs(
    client: MlflowClient, uri: str, machine: Machine, running: Sequence[Run]
) -> tuple[list[RunFinding], list[RunFinding]]:  # fmt: skip
    """(stale runs, runs not judged) among `running`, the RUNNING parent and trial runs of the store at `uri`."""
    parents = {r.info.run_id: r for r in running if r.data.tags.get(Tag.ROLE) == Role.SEARCH}
    children: dict[str, list[Run]] = {}
    for run in running:
        if run.data.tags.get(Tag.ROLE) == Role.TRIAL:
            children.setdefault(run.data.tags.get(Tag.PARENT, ""), []).append(run)
    for parent_id in children.keys() - parents.keys():
        found = tracking.find_run(client, parent_id) if parent_id else None
        if found is not None:
            parents[parent_id] = found
    stale: list[RunFinding] = []
    unjudged: list[RunFinding] = []
    for run in running:
        why, is_stale = _judge(run, children, machine)
        if why is None:
            continue
        parent = parents.get(run.info.run_id) or parents.get(run.data.tags.get(Tag.PARENT, ""))
        search = parent.data.tags.get(Tag.SEARCH, "?") if parent is not None else "?"
        finding = RunFinding(run.info.run_id, run.data.tags.get(Tag.ROLE, "?"), search, why)
        if is_stale:
            stale.append(_with_command(finding, parent, uri))
        else:
            unjudged.append(finding)
    return stale, unjudged


def _judge(run: Run, children: Mapping[str, list[Run]], machine: Machine) -> tuple[str | None, bool]:
    """(why, stale): why None when the run is live; stale False when it might be (not judged)."""
    if run.data.tags.get(Tag.ROLE) == Role.SEARCH:
        if any(_trial_alive(c, machine) for c in children.get(run.info.run_id, [])):
            return None, False
    elif _trial_alive(run, machine):
        return None, False
    host = run.data.tags.get(Tag.HOST)
    if host and host != machine.host:
        return f"last ran on host {host}", False
    if not machine.local_store:
        return "a remote store: a driver on another machine may own it", False
    if machine.owners:
        pids = ", ".join(map(str, machine.owners[:5]))
        return f"a process that may drive a search is alive (pid {pids})", False
    node = run.data.tags.get(Tag.NODE_ID)
    return "no search driver is alive on this machine" + (f"; its Ray node {node[:8]} is gone" if node else ""), True


def _trial_alive(run: Run, machine: Machine) -> bool:
    return run.data.tags.get(Tag.NODE_ID, "") in machine.live_nodes


def _with_command(finding: RunFinding, parent: Run | None, uri: str) -> RunFinding:
    """The finding with its command: `precrop reconcile DIR` when the search's Tune state is there to reconcile
    from, else `precrop doctor --end-run RUN`."""
    folder = parent.data.tags.get(Tag.SEARCH_DIR) if parent is not None else None
    shown = tracking.redact_uri(uri)
    reconcile = f"precrop reconcile {_quoted(folder or '')}"
    if folder and "://" in folder:  # not read from here (doctor sends nothing beyond this machine)
        command = f"{reconcile} --tracking-uri {shown}"
    elif folder and (record := _readable_record(folder)) is not None and tune_state_saved(folder):
        same = tracking.redact_uri(record.tracking_uri) == shown
        command = reconcile + ("" if same else f" --tracking-uri {shown}")
    else:
        command = f"precrop doctor --tracking-uri {shown} --end-run {finding.run_id}"
    return RunFinding(finding.run_id, finding.role, finding.search, finding.why, command)


def _readable_record(folder: str) -> SearchRecord | None:
    try:
        return read_record(folder)
    except UserError:
        return None


def end_stale_runs(client: MlflowClient, stale: Sequence[RunFinding], run_ids: Sequence[str]) -> list[str]:
    """End the runs `run_ids` (KILLED; a trial's outcome interrupted), each of which doctor judged stale;
    UserError naming the first that it did not. Returns one line per run ended."""
    by_id = {f.run_id: f for f in stale}
    unknown = [r for r in run_ids if r not in by_id]
    if unknown:
        raise UserError(f"run {unknown[0][:64]} is not a RUNNING run `precrop doctor` judges stale: nothing was ended")
    done = []
    for run_id in dict.fromkeys(run_ids):
        finding = by_id[run_id]
        reason = f"ended by precrop doctor: {finding.why}"
        if finding.role == Role.SEARCH:
            tracking.end_parent_run(client, run_id, RunStatus.KILLED, reason)
        else:
            tracking.end_run(client, run_id, Outcome.INTERRUPTED, reason)
        done.append(f"ended {finding.role} run {run_id} of {finding.search} (KILLED)")
    return done


# ----- search records -----


def scan_records(
    client: MlflowClient, uri: str, root: Path, live: set[str]
) -> tuple[list[RecordFinding], list[str]]:  # fmt: skip
    """(stale records, notes) among the search folders directly under `root`; runs in `live` (RUNNING and
    not judged stale) keep their record."""
    findings: list[RecordFinding] = []
    notes: list[str] = []
    for path in sorted(root.glob(f"*/{RECORD_FILE}")):
        folder = str(path.parent)
        try:
            record = read_record(folder)
        except UserError:
            findings.append(_record_finding(folder, "?", f"its {RECORD_FILE} is unreadable"))
            continue
        problem = _record_problem(client, uri, record, folder, live)
        if problem is None:
            continue
        why, stale = problem
        if stale:
            findings.append(_record_finding(folder, record.name, why))
        else:
            notes.append(f"{folder}: {why}")
    return findings, notes


def _record_problem(
    client: MlflowClient, uri: str, record: SearchRecord, folder: str, live: set[str]
) -> tuple[str, bool] | None:  # fmt: skip
    """(why, stale) when the record's search is gone (stale) or cannot be checked here (not stale); else None."""
    if record.parent_run_id in live:
        return None
    if tracking.redact_uri(tracking.resolve_tracking_uri(record.tracking_uri)) != tracking.redact_uri(uri):
        store = tracking.local_store_path(record.tracking_uri)
        if store is not None and not store.exists():
            return f"its MLflow store {store} no longer exists", True
        return f"not checked: its runs are in {tracking.redact_uri(record.tracking_uri)} (pass --tracking-uri)", False
    parent = tracking.find_run(client, record.parent_run_id)
    if parent is None or parent.info.lifecycle_stage == "deleted":
        return f"its parent run {record.parent_run_id} is not in the store", True
    if not tune_state_saved(folder):
        return "Tune saved no state in it (the search stopped before its first save)", True
    return None


def _record_finding(folder: str, search: str, why: str) -> RecordFinding:
    return RecordFinding(folder, search, why, f"rm -r {_quoted(folder)}")


def _quoted(path: str) -> str:
    return shlex.quote(path)


# ----- the whole check -----


def examine(
    client: MlflowClient, uri: str, storage: str, processes: Sequence[ProcessInfo], cluster_address: str | None,
    host: str, now: float,
) -> Report:  # fmt: skip
    """Everything `precrop doctor` reports, from the given processes, store and storage path."""
    scan = scan_processes(processes, cluster_address, now)
    report = Report(scan, notes=list(scan.notes))
    machine = Machine(host, scan.live_nodes, scan.owners, tracking.local_store_path(uri) is not None)
    running = tracking.running_search_runs(client)
    report.runs, report.runs_not_judged = judge_runs(client, uri, machine, running)
    live = {r.info.run_id for r in running} - {f.run_id for f in report.runs}
    if "://" in storage:
        report.notes.append(f"search records in {storage} not checked (not a local folder)")
        return report
    root = Path(storage).expanduser()
    if not root.is_dir():
        report.notes.append(f"no search records: {storage} is not a folder")
        return report
    records, notes = scan_records(client, uri, root.resolve(), live)
    report.records = records
    report.notes += notes
    return report


def render(report: Report) -> str:
    """The report as tables, one per kind of leftover, and a last line with the counts."""
    from precrop.textui import format_table

    lines: list[str] = []
    scan = report.processes
    lines.append(f"Stale Ray processes: {len(scan.stale)}")
    if scan.stale:
        rows = [(str(p.pid), p.name, f"{p.rss_mb:.1f}", _age(p.age_s), p.why) for p in scan.stale]
        lines += [format_table(("PID", "NAME", "RSS MB", "AGE", "WHY"), rows), f"  clean: {scan.command}"]
    lines += [f"  in use: {k.session} ({len(k.pids)} processes): {k.owner}" for k in scan.kept]
    lines.append(f"RUNNING runs no live search can end: {len(report.runs)}")
    if report.runs:
        rows2 = [(r.run_id, r.role, r.search, r.why) for r in report.runs]
        lines.append(format_table(("RUN", "ROLE", "SEARCH", "WHY"), rows2))
        lines += [f"  clean: {c}" for c in dict.fromkeys(r.command for r in report.runs)]
    lines += [f"  not judged: {r.role} run {r.run_id} ({r.search}): {r.why}" for r in report.runs_not_judged]
    lines.append(f"Stale search records: {len(report.records)}")
    if report.records:
        rows3 = [(r.folder, r.search, r.why, r.command) for r in report.records]
        lines.append(format_table(("FOLDER", "SEARCH", "WHY", "CLEAN"), rows3))
    lines += [f"note: {n}" for n in report.notes]
    lines.append(_counts(report))
    return "\n".join(lines)


def _counts(report: Report) -> str:
    counts = (f"{len(report.processes.stale)} stale Ray processes, {len(report.runs)} stale RUNNING runs, "
              f"{len(report.records)} stale search records")  # fmt: skip
    return f"nothing to clean ({counts})" if not report.found else f"{report.found} to clean: {counts}"


def as_json(report: Report) -> dict[str, Any]:
    """The report as one JSON object."""
    scan = report.processes
    return {
        "found": report.found,
        "ray_processes": [asdict(p) for p in scan.stale],
        "ray_processes_command": scan.command,
        "ray_sessions_in_use": [asdict(k) for k in scan.kept],
        "runs": [asdict(r) for r in report.runs],
        "runs_not_judged": [asdict(r) for r in report.runs_not_judged],
        "records": [asdict(r) for r in report.records],
        "notes": list(report.notes),
    }


def _age(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours}h"
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def now() -> float:
    """Seconds since the epoch (the ages of processes are measured against it)."""
    return time.time()
