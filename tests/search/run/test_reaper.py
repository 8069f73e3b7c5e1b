"""The watchdog of an embedded Ray (search/run/reaper.py): when the driver dies, every process of the Ray it
started dies too, and nothing of another Ray is touched. Real processes, no Ray: the stand-ins carry the
marks a Ray process has (a script under ray/_private/, the session named after its starter)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no type information shipped
import pytest

from search.infra.processes import ProcessInfo, processes_of_ray_started_by
from tests.search.conftest import ROOT

SESSION = "session_2026-11-30_09-13-49_433093_{pid}"


def _proc(pid: int, ppid: int, *cmdline: str, open_paths: tuple[str, ...] = ()) -> ProcessInfo:
    return ProcessInfo(pid, ppid, tuple(cmdline), open_paths=open_paths)


def test_the_processes_of_a_ray_are_found_by_its_starter() -> None:
    mine, other = SESSION.format(pid=100), SESSION.format(pid=200)
    processes = [
        _proc(100, 1, "python", "search.py", "config.yaml"),  # the driver itself is not Ray's
        _proc(101, 100, "/venv/ray/core/src/ray/raylet/raylet", f"--session-dir=/tmp/ray/{mine}"),
        _proc(102, 101, "ray::ImplicitFunc.train"),  # named by its parent only
        _proc(103, 1, "ray::IDLE", open_paths=(f"/tmp/ray/{mine}/logs/worker-1.out",)),  # an orphan, by its logs
        _proc(104, 1, "ray::DashboardAgent"),  # an orphan with nothing that names a session: not judged
        _proc(201, 1, "/venv/ray/core/src/ray/gcs/gcs_server", f"--session-dir=/tmp/ray/{other}"),
        _proc(202, 1, "tail", "-f", f"/tmp/ray/{mine}/logs/raylet.out"),  # names the session, is not Ray's
        _proc(300, 1, "/venv/ray/core/src/ray/gcs/gcs_server", "--session-dir=/tmp/ray/session_latest"),
    ]
    assert sorted(p.pid for p in processes_of_ray_started_by(processes, 100)) == [101, 102, 103]
    assert [p.pid for p in processes_of_ray_started_by(processes, 200)] == [201]
    assert processes_of_ray_started_by(processes, 999) == []


# a stand-in for a Ray process: a script under ray/_private/ whose command line names its session
_STAND_IN = "import time\nwhile True:\n    time.sleep(1)\n"

# a stand-in for a search driver: starts the watchdog, then "its Ray" (one process in a process group of its
# own, as Ray's workers are), prints both pids and waits to be killed
_DRIVER = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from search.run.reaper import start_reaper
    reaper = start_reaper()
    session = sys.argv[2].format(pid=os.getpid())
    ray = subprocess.Popen([sys.executable, sys.argv[1], f"--session-dir=/tmp/ray/{session}"],
                           start_new_session=True)
    print(reaper.process.pid, ray.pid, flush=True)
    if sys.argv[3] == "stop":  # as after ray.shutdown(), with one process left over
        reaper.stop(); print("stopped", flush=True)
    time.sleep(600)
    """
)


def _stand_in(folder: Path) -> Path:
    script = folder / "ray" / "_private" / "stand_in.py"
    script.parent.mkdir(parents=True)
    script.write_text(_STAND_IN)
    return script


def _start_driver(folder: Path, how: str) -> tuple[subprocess.Popen[str], int, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(_stand_in(folder)), SESSION, how], stdout=subprocess.PIPE, text=True,
        env=env, start_new_session=True,
    )  # fmt: skip
    assert driver.stdout is not None
    reaper_pid, ray_pid = (int(p) for p in driver.stdout.readline().split())
    return driver, reaper_pid, ray_pid


def _wait_gone(pid: int) -> None:
    """Wait for `pid` to exit (it is not our child); the test's timeout bounds the wait."""
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(timeout=120)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("kill", ["the driver alone", "the driver's process group"])
def test_a_killed_driver_takes_its_ray_along_and_nothing_else(tmp_path: Path, kill: str) -> None:
    bystander = subprocess.Popen(  # another search's Ray: its session names another starter
        [sys.executable, str(_stand_in(tmp_path / "other")), f"--session-dir=/tmp/ray/{SESSION.format(pid=1)}"]
    )
    driver, reaper_pid, ray_pid = _start_driver(tmp_path, "kill")
    try:
        assert _alive(ray_pid) and _alive(reaper_pid)
        if kill == "the driver alone":
            driver.kill()
        else:
            os.killpg(driver.pid, signal.SIGKILL)  # reaches neither the watchdog nor "Ray" (own groups)
        driver.wait(timeout=60)
        _wait_gone(reaper_pid)  # the watchdog exits once it has killed the driver's Ray
        assert not _alive(ray_pid), "the driver's Ray outlived it"
        assert _alive(bystander.pid), "the watchdog killed another Ray"
    finally:
        for pid in (ray_pid, reaper_pid):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        bystander.kill()
        bystander.wait(timeout=60)
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=60)


def test_stop_ends_the_watchdog_and_what_ray_shutdown_left(tmp_path: Path) -> None:
    """The normal end: the driver closes the pipe after `ray.shutdown()`; the watchdog exits at once."""
    driver, reaper_pid, ray_pid = _start_driver(tmp_path, "stop")
    try:
        assert driver.stdout is not None
        assert driver.stdout.readline().strip() == "stopped"  # stop() returned: the watchdog has exited
        assert not _alive(reaper_pid) and not _alive(ray_pid)  # the leftover was killed
        assert driver.poll() is None  # the driver lives on; its watchdog did not wait for its death
    finally:
        driver.kill()
        driver.wait(timeout=60)
        for pid in (ray_pid, reaper_pid):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
