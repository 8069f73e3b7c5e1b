"""`precrop doctor`: stale Ray processes (fed as fake process lists), RUNNING runs no live search can end and
stale search records (a small sqlite MLflow store and fake search folders), its output and exit codes; and
`precrop reconcile` ending the open runs of trials Tune never saved."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from search.cli import main
from search.infra import processes as ray_processes
from search.infra.processes import ProcessInfo, is_ray_process, is_search_driver
from search.record import doctor
from search.record.doctor import Machine, examine
from search.record.doctor_processes import scan_processes
from search.record.records import SearchRecord, write_record
from search.record.tracking import running_search_runs
from search.spec.parse import parse_config
from tests.search.conftest import EMPTY_TUNE_STATE, TINY_CONFIG

NOW = 100_000.0
HOST = socket.gethostname()
SITE = "/venv/lib/python3.11/site-packages/ray"


def _session(starter: int) -> str:
    return f"session_2026-11-30_07-16-08_644318_{starter}"


def _ray(starter: int, first_pid: int, node: str, started: float = 1000.0, ppid: int = 1,
         gcs: str = "127.0.0.1:45485") -> list[ProcessInfo]:  # fmt: skip
    """The processes an embedded Ray started by `starter` leaves: gcs_server, raylet, a worker that names its
    session only through its parent, and one (orphaned) that names it only through its open log file."""
    session = f"/tmp/ray/{_session(starter)}"
    gcs_pid, raylet, idle, func = first_pid, first_pid + 1, first_pid + 2, first_pid + 3
    return [
        ProcessInfo(gcs_pid, ppid, (f"{SITE}/core/src/ray/gcs/gcs_server", f"--log_dir={session}/logs",
                                    f"--gcs_server_port={gcs.rsplit(':')[1]}"), 40_000_000, started),
        ProcessInfo(raylet, ppid, (f"{SITE}/core/src/ray/raylet/raylet", f"--node_id={node}",
                                   f"--gcs-address={gcs}", f"--session_dir={session}"), 20_000_000, started + 1),
        ProcessInfo(idle, raylet, ("ray::IDLE", "", ""), 83_000_000, started + 5),
        ProcessInfo(func, 1, ("ray::ImplicitFunc",), 250_000_000, started + 6, (f"{session}/logs/worker-1.out",)),
    ]  # fmt: skip


def _driver(pid: int, started: float = 900.0, command: str = "search") -> ProcessInfo:
    return ProcessInfo(pid, 1, ("/venv/bin/python", "/venv/bin/precrop", command, "configs/quickstart.yaml"),
                       300_000_000, started)  # fmt: skip


OTHERS = [ProcessInfo(1, 0, ("/sbin/init",)), ProcessInfo(77, 1, ("bash",), started=10.0)]


# ----- which processes are Ray's, which are search drivers -----


@pytest.mark.parametrize(
    ("cmdline", "ray"),
    [
        ((f"{SITE}/core/src/ray/raylet/raylet", "--node_id=ab"), True),
        (("ray::IDLE", "", ""), True),
        (("ray::ImplicitFunc",), True),
        (("/venv/bin/python", "-u", f"{SITE}/dashboard/dashboard.py", "--host=127.0.0.1"), True),
        (("/venv/bin/python", "-u", f"{SITE}/_private/log_monitor.py"), True),
        (("/venv/bin/python", "-u", f"{SITE}/autoscaler/_private/monitor.py"), True),
        (("/venv/bin/python", "-m", "pytest", "tests/search/infra/test_ray_private.py"), False),
        (("/venv/bin/python", "/venv/bin/precrop", "search", "ray.yaml"), False),
        ((), False),
    ],
)
def test_is_ray_process(cmdline: tuple[str, ...], ray: bool) -> None:
    assert is_ray_process(ProcessInfo(10, 1, cmdline)) is ray


@pytest.mark.parametrize(
    ("cmdline", "driver"),
    [
        (("/venv/bin/python", "/venv/bin/precrop", "search", "c.yaml", "--resume"), True),
        (("/venv/bin/python", "/venv/bin/precrop", "study", "baselines", "c.yaml"), True),
        (("python", "-m", "search.cli", "search", "c.yaml"), True),
        (("python", "search.py", "c.yaml"), True),
        (("python", "/home/u/job/search.py", "--resume"), True),
        (("/venv/bin/python", "/venv/bin/precrop", "pareto", "--experiment", "x"), False),
        (("/venv/bin/python", "/venv/bin/precrop", "doctor"), False),
        (("python", "-m", "pytest", "tests/search"), False),
        (("python", "research.py"), False),
    ],
)
def test_is_search_driver(cmdline: tuple[str, ...], driver: bool) -> None:
    assert is_search_driver(ProcessInfo(10, 1, cmdline)) is driver


# ----- the process scan -----


def test_the_ray_of_a_killed_driver_is_stale() -> None:
    scan = scan_processes([*OTHERS, *_ray(500, 11, "aa11")], None, NOW)
    assert [p.pid for p in scan.stale] == [11, 12, 13, 14]
    assert [p.name for p in scan.stale] == ["gcs_server", "raylet", "ray::IDLE", "ray::ImplicitFunc"]
    assert [p.rss_mb for p in scan.stale] == [40.0, 20.0, 83.0, 250.0]
    assert [p.age_s for p in scan.stale] == [99_000, 98_999, 98_995, 98_994]
    assert {p.session for p in scan.stale} == {_session(500)}
    assert all("(pid 500) is gone" in p.why for p in scan.stale)
    assert scan.command == "kill -9 11 12 13 14   (or: ray stop --force; no other Ray runs here)"
    assert scan.kept == () and scan.live_nodes == frozenset() and scan.owners == ()
    assert scan.notes == ()


def test_a_live_search_driver_owns_its_ray() -> None:
    processes = [*OTHERS, _driver(500), *_ray(500, 11, "aa11", ppid=500)]
    scan = scan_processes(processes, None, NOW)
    assert scan.stale == () and scan.command == ""
    (kept,) = scan.kept
    assert kept.session == _session(500) and kept.pids == (11, 12, 13, 14)
    assert kept.owner.startswith("search driver 500")
    assert scan.live_nodes == {"aa11"} and scan.owners == (500,)


def test_a_reused_pid_owns_nothing() -> None:
    """The starter's pid now belongs to a process younger than the Ray it would have started."""
    processes = [*OTHERS, _driver(500, started=5000.0), *_ray(500, 11, "aa11")]
    scan = scan_processes(processes, None, NOW)
    assert [p.pid for p in scan.stale] == [11, 12, 13, 14]
    assert "is a later process" in scan.stale[0].why
    assert scan.owners == (500,)  # the new process is a search driver: runs are not judged while it lives


def test_another_live_program_keeps_its_ray_and_ray_stop_is_not_offered() -> None:
    pytest_run = ProcessInfo(600, 77, ("/venv/bin/python", "-m", "pytest", "tests"), started=900.0)
    processes = [*OTHERS, pytest_run, *_ray(600, 21, "bb22", ppid=600), *_ray(500, 11, "aa11")]
    scan = scan_processes(processes, None, NOW)
    assert [p.pid for p in scan.stale] == [11, 12, 13, 14]
    assert scan.command == "kill -9 11 12 13 14"  # `ray stop --force` would stop the live program's Ray too
    (kept,) = scan.kept
    assert kept.pids == (21, 22, 23, 24) and kept.owner.startswith("live process 600 (python -m pytest")
    assert scan.live_nodes == {"bb22"} and scan.owners == (600,)


def test_a_ray_start_cluster_is_kept() -> None:
    """`ray start` exits once the cluster runs: its pid is gone, yet the cluster serves its address."""
    cluster = _ray(400, 31, "cc33", gcs="127.0.0.1:6379")
    scan = scan_processes([*OTHERS, *cluster, *_ray(500, 11, "aa11")], "127.0.0.1:6379", NOW)
    assert [p.pid for p in scan.stale] == [11, 12, 13, 14]
    assert scan.command == "kill -9 11 12 13 14"
    (kept,) = scan.kept
    assert kept.pids == (31, 32, 33, 34) and kept.owner == "the `ray start` cluster at 127.0.0.1:6379"
    assert scan.live_nodes == {"cc33"} and scan.owners == ()
    gone = scan_processes(OTHERS, "127.0.0.1:6379", NOW)
    assert gone.notes == ("Ray's address file names a `ray start` cluster at 127.0.0.1:6379, but no process here "
                          "serves it",)  # fmt: skip


def test_a_worker_without_session_is_stale_once_orphaned() -> None:
    orphan = ProcessInfo(41, 1, ("ray::IDLE",), 10_000_000, NOW - 30)
    scan = scan_processes([*OTHERS, orphan], None, NOW)
    assert [(p.pid, p.why) for p in scan.stale] == [(41, "no Ray session and no parent: orphaned")]
    assert scan.notes == ("some stale Ray processes are under a minute old and may still be exiting: look again "
                          "in a minute",)  # fmt: skip
    adopted = ProcessInfo(41, 77, ("ray::IDLE",), 10_000_000, NOW - 30)
    scan = scan_processes([*OTHERS, adopted], None, NOW)
    assert scan.stale == () and scan.kept[0].owner == "live process 77 (bash)" and scan.owners == (77,)


# ----- MLflow runs and search records, in a small sqlite store -----


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One empty sqlite MLflow store; each test copies it (creating one takes seconds)."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(empty_store: Path, tmp_path: Path) -> tuple[MlflowClient, str]:
    path = tmp_path / "mlflow.db"
    shutil.copy(empty_store, path)
    uri = f"sqlite:///{path}"
    return MlflowClient(uri), uri


def _parent(client: MlflowClient, experiment: str, name: str, folder: Path, status: str = "RUNNING") -> str:
    tags = {"precrop.role": "search", "precrop.search": name, "precrop.search_dir": str(folder)}
    run_id = str(client.create_run(experiment, run_name=name, tags=tags).info.run_id)
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


def _trial(client: MlflowClient, experiment: str, parent: str, trial: str, node: str = "dead0000",
           host: str = HOST, status: str = "RUNNING") -> str:  # fmt: skip
    tags = {"precrop.role": "trial", "mlflow.parentRunId": parent, "precrop.trial_id": trial,
            "precrop.node_id": node, "precrop.host": host}  # fmt: skip
    run_id = str(client.create_run(experiment, run_name=trial, tags=tags).info.run_id)
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


def _record(folder: Path, uri: str, experiment: str, parent: str, tune_state: bool = True) -> None:
    """A search folder: its record and, with `tune_state`, the files Tune restores from."""
    config = parse_config(TINY_CONFIG).to_dict()
    write_record(SearchRecord(folder.name, str(folder), uri, experiment, parent, config))
    if tune_state:
        (folder / "tuner.pkl").write_bytes(b"stub")
        (folder / "experiment_state-2026-11-30_06-00-00.json").write_text(EMPTY_TUNE_STATE)


def _machine(owners: tuple[int, ...] = (), nodes: frozenset[str] = frozenset()) -> Machine:
    return Machine(HOST, nodes, owners, local_store=True)


def test_running_runs_no_driver_can_end_are_stale(store: tuple[MlflowClient, str], tmp_path: Path) -> None:
    client, uri = store
    experiment = client.create_experiment("e")
    gone = tmp_path / "ray_results" / "gone-1"  # its folder was removed: reconcile cannot help
    parent = _parent(client, experiment, "gone-1", gone)
    open_trial = _trial(client, experiment, parent, "t1")
    _trial(client, experiment, parent, "t2", status="FINISHED")
    kept = tmp_path / "ray_results" / "kept-1"  # its Tune state is there: reconcile ends its runs
    other = _parent(client, experiment, "kept-1", kept)
    other_trial = _trial(client, experiment, other, "t3")
    _record(kept, uri, experiment, other)
    done = _parent(client, experiment, "done-1", tmp_path / "ray_results" / "done-1", status="FINISHED")
    _trial(client, experiment, done, "t4", status="KILLED")

    stale, unjudged = doctor.judge_runs(client, uri, _machine(), running_search_runs(client))
    assert unjudged == []
    found = {f.run_id: f for f in stale}
    assert set(found) == {parent, open_trial, other, other_trial}
    assert found[open_trial].role == "trial" and found[open_trial].search == "gone-1"
    assert found[open_trial].why == "no search driver is alive on this machine; its Ray node dead0000 is gone"
    assert found[parent].why == "no search driver is alive on this machine"
    for run_id in (parent, open_trial):
        assert found[run_id].command == f"precrop doctor --tracking-uri {uri} --end-run {run_id}"
    assert found[other].command == found[other_trial].command == f"precrop reconcile {kept}"


def test_runs_a_live_search_may_still_end_are_not_stale(store: tuple[MlflowClient, str], tmp_path: Path) -> None:
    client, uri = store
    experiment = client.create_experiment("e")
    parent = _parent(client, experiment, "live-1", tmp_path / "live-1")
    _trial(client, experiment, parent, "t1", node="aa11")  # on a live Ray node: live, and so is its parent
    waiting = _trial(client, experiment, parent, "t2")  # a resumed search will reopen it
    elsewhere = _trial(client, experiment, parent, "t3", host="node-b")
    running = running_search_runs(client)

    stale, unjudged = doctor.judge_runs(client, uri, _machine((500,), frozenset({"aa11"})), running)
    assert stale == []
    why = {f.run_id: f.why for f in unjudged}
    assert why == {waiting: "a process that may drive a search is alive (pid 500)",
                   elsewhere: "last ran on host node-b"}  # fmt: skip
    # no Ray node alive and nobody to drive the search: the parent and the local trials are stale
    stale, unjudged = doctor.judge_runs(client, uri, _machine(), running)
    assert len(stale) == 3 and [f.run_id for f in unjudged] == [elsewhere]
    remote = Machine(HOST, frozenset(), (), local_store=False)
    stale, unjudged = doctor.judge_runs(client, uri, remote, running)
    assert stale == [] and len(unjudged) == 4


def test_stale_search_records(store: tuple[MlflowClient, str], tmp_path: Path) -> None:
    client, uri = store
    experiment = client.create_experiment("e")
    root = tmp_path / "ray_results"
    finished = _parent(client, experiment, "ok-1", root / "ok-1", status="FINISHED")
    _record(root / "ok-1", uri, experiment, finished)
    _record(root / "gone-1", uri, experiment, "f" * 32)  # its parent run is not in the store
    nostate = _parent(client, experiment, "nostate-1", root / "nostate-1", status="KILLED")
    _record(root / "nostate-1", uri, experiment, nostate, tune_state=False)
    (root / "broken-1").mkdir()
    (root / "broken-1" / "precrop-search.json").write_text("[1, 2")
    _record(root / "lost-store-1", f"sqlite:///{tmp_path / 'removed.db'}", experiment, "e" * 32)
    live = _parent(client, experiment, "live-1", root / "live-1")  # just started: Tune saved nothing yet
    _record(root / "live-1", uri, experiment, live, tune_state=False)
    (root / "not-a-search").mkdir()

    report = examine(client, uri, str(root), [*OTHERS, _driver(500)], None, HOST, NOW)
    found = {Path(f.folder).name: f.why for f in report.records}
    assert found == {
        "gone-1": f"its parent run {'f' * 32} is not in the store",
        "nostate-1": "Tune saved no state in it (the search stopped before its first save)",
        "broken-1": "its precrop-search.json is unreadable",
        "lost-store-1": f"its MLflow store {tmp_path / 'removed.db'} no longer exists",
    }
    assert {f.command for f in report.records} == {f"rm -r {root / n}" for n in found}
    assert [f.run_id for f in report.runs_not_judged] == [live] and report.runs == []
    assert report.found == 4
    assert {p.name for p in root.iterdir()} >= {"gone-1", "broken-1"}  # doctor removes nothing


# ----- the command -----


@pytest.fixture
def fake_machine(monkeypatch: pytest.MonkeyPatch) -> list[ProcessInfo]:
    """The processes `precrop doctor` sees (append to the list), and no `ray start` cluster."""
    from search.infra import ray_private

    processes = list(OTHERS)
    monkeypatch.setattr(ray_processes, "list_processes", lambda: processes)
    monkeypatch.setattr(ray_private, "ray_start_address", lambda: None)
    monkeypatch.setattr(doctor, "now", lambda: NOW)
    return processes


def _doctor(uri: str, root: Path, *extra: str) -> int:
    return main(["doctor", "--tracking-uri", uri, "--storage-path", str(root), *extra])


def test_doctor_exits_0_when_nothing_is_left(
    store: tuple[MlflowClient, str], tmp_path: Path, fake_machine: list[ProcessInfo], capsys: pytest.CaptureFixture[str]
) -> None:
    _, uri = store
    assert _doctor(uri, tmp_path / "ray_results") == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[:3] == ["Stale Ray processes: 0", "RUNNING runs no live search can end: 0", "Stale search records: 0"]
    assert out[-1] == "nothing to clean (0 stale Ray processes, 0 stale RUNNING runs, 0 stale search records)"


def test_doctor_lists_each_finding_with_its_command_and_exits_1(
    store: tuple[MlflowClient, str], tmp_path: Path, fake_machine: list[ProcessInfo], capsys: pytest.CaptureFixture[str]
) -> None:
    client, uri = store
    experiment = client.create_experiment("e")
    root = tmp_path / "ray_results"
    parent = _parent(client, experiment, "s-1", root / "s-1")
    trial = _trial(client, experiment, parent, "t1")
    _record(root / "s-1", uri, experiment, parent)
    _record(root / "gone-1", uri, experiment, "f" * 32)
    fake_machine += _ray(500, 11, "aa11")

    assert _doctor(uri, root) == 1
    out = capsys.readouterr().out
    assert "  clean: kill -9 11 12 13 14   (or: ray stop --force; no other Ray runs here)" in out
    rows = [line.split()[:4] for line in out.splitlines()]
    assert ["14", "ray::ImplicitFunc", "250.0", "1d3h"] in rows and ["11", "gcs_server", "40.0", "1d3h"] in rows
    assert f"  clean: precrop reconcile {root / 's-1'}" in out
    assert f"rm -r {root / 'gone-1'}" in out
    assert trial in out and parent in out
    assert out.strip().splitlines()[-1] == ("7 to clean: 4 stale Ray processes, 2 stale RUNNING runs, "
                                            "1 stale search records")  # fmt: skip

    assert _doctor(uri, root, "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["found"] == 7
    assert [p["pid"] for p in report["ray_processes"]] == [11, 12, 13, 14]
    assert report["ray_processes"][3] == {"pid": 14, "name": "ray::ImplicitFunc", "rss_mb": 250.0, "age_s": 98994,
                                          "session": _session(500),
                                          "why": "the process that started this Ray (pid 500) is gone"}  # fmt: skip
    assert {r["run_id"] for r in report["runs"]} == {parent, trial}
    assert [r["folder"] for r in report["records"]] == [str(root / "gone-1")]


def test_end_run_ends_only_runs_doctor_judges_stale(
    store: tuple[MlflowClient, str], tmp_path: Path, fake_machine: list[ProcessInfo], capsys: pytest.CaptureFixture[str]
) -> None:
    client, uri = store
    experiment = client.create_experiment("e")
    parent = _parent(client, experiment, "s-1", tmp_path / "gone")
    trial = _trial(client, experiment, parent, "t1")
    finished = _trial(client, experiment, parent, "t2", status="FINISHED")

    assert _doctor(uri, tmp_path, "--end-run", finished) == 2
    err = capsys.readouterr().err.strip()
    not_stale = "is not a RUNNING run `precrop doctor` judges stale: nothing was ended"
    assert err == f"precrop: error: run {finished} {not_stale}"
    assert client.get_run(trial).info.status == "RUNNING"

    fake_machine.append(_driver(500))  # while a search driver lives, nothing is judged stale
    assert _doctor(uri, tmp_path, "--end-run", trial) == 2
    assert client.get_run(trial).info.status == "RUNNING"
    fake_machine.pop()

    assert _doctor(uri, tmp_path, "--end-run", trial, "--end-run", parent) == 0
    assert capsys.readouterr().out.strip().splitlines() == [
        f"ended trial run {trial} of s-1 (KILLED)", f"ended search run {parent} of s-1 (KILLED)"]  # fmt: skip
    ended = client.get_run(trial)
    assert ended.info.status == "KILLED" and ended.data.tags["precrop.outcome"] == "interrupted"
    assert ended.data.tags["precrop.reason"].startswith("ended by precrop doctor: no search driver is alive")
    assert client.get_run(parent).info.status == "KILLED"
    assert _doctor(uri, tmp_path) == 0


@pytest.mark.parametrize("uri", ["sqlite:///sub/new.db", "file:sub/mlruns"])
def test_doctor_on_a_missing_store_says_one_line_and_creates_nothing(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_machine: list[ProcessInfo],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert main(["doctor", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("precrop: error: no MLflow tracking store at ") and "nothing was created" in err
    assert len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_doctor_help_names_its_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["doctor", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0 when nothing is found, 1 when something is" in text


# ----- precrop reconcile: runs of trials Tune never saved -----


def test_reconcile_ends_open_runs_whose_trial_tune_never_saved(
    store: tuple[MlflowClient, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver killed right after a trial started: Tune's saved state lacks the trial, its run stays RUNNING."""
    import ray.tune

    from search.record import reconcile

    client, uri = store
    experiment = client.create_experiment("e")
    parent = _parent(client, experiment, "s-1", tmp_path / "s-1")
    saved = _trial(client, experiment, parent, "saved")
    lost = _trial(client, experiment, parent, "lost")
    ended = _trial(client, experiment, parent, "ended", status="FINISHED")
    other = _trial(client, experiment, _parent(client, experiment, "s-2", tmp_path / "s-2"), "lost")

    class Analysis:  # Tune's saved state holds one trial
        def __init__(self, path: str) -> None:
            self.trials = [type("Trial", (), {"trial_id": "saved"})()]
            self.trial_dataframes: dict[str, Any] = {}

    seen: list[str] = []
    monkeypatch.setattr(ray.tune, "ExperimentAnalysis", Analysis)
    monkeypatch.setattr(reconcile, "_reconcile_trial", lambda *args: seen.append(args[3].trial_id))
    config = parse_config(TINY_CONFIG).to_dict()
    done = reconcile.reconcile_search(client, SearchRecord("s-1", str(tmp_path), uri, experiment, parent, config))

    assert seen == ["saved"] and done.trials == 1 and done.runs_ended == 1
    run = client.get_run(lost)
    assert run.info.status == "KILLED" and run.data.tags["precrop.outcome"] == "interrupted"
    reason = "Tune's saved state holds no trial lost: the driver stopped before Tune saved it"
    assert run.data.tags["precrop.reason"] == reason
    assert client.get_run(saved).info.status == "RUNNING"  # the saved trial is _reconcile_trial's (stubbed here)
    assert client.get_run(ended).info.status == "FINISHED"
    assert client.get_run(other).info.status == "RUNNING"  # another search's run
