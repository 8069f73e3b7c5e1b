"""End an embedded Ray's leftover processes once the search driver that started it is gone.

Ray ties its GCS server and raylet to the driver that started them (they die with it), but not the rest.
Measured with Ray 2.60 on this project's 2-core machine: after `kill -9` of the driver alone (what the OOM
killer does), Ray's dashboard and runtime-env agents and the trial workers lived on; the agents for 60-100
s, waiting on the dead GCS. Trial workers sit in process groups of their own, so `kill -9 -PGID` of the
driver's group does not reach them either: they exit only once they notice their raylet is gone. Ray 2.60
has no option that ties them all to the driver, so a driver that starts an embedded Ray starts this
watchdog first.

The watchdog runs in a session of its own (a signal to the driver's process group or terminal does not
reach it) and blocks on a pipe whose only writer is the driver. The pipe reads end-of-file when the driver
closes it (after `ray.shutdown()`) or dies in any way; then every process of a Ray session the driver
started (Ray names a session after the process that started it; search/infra/processes.py) gets SIGKILL:
Ray's agents ignore SIGTERM once their raylet is gone. It never touches another Ray: a `ray start`
cluster or another search's Ray names another starter.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from search.infra.processes import list_processes, processes_of_ray_started_by

_ROUNDS = 5  # a worker the raylet was forking as the driver died appears a moment later
_ROUND_PAUSE_S = 0.2
_STOP_WAIT_S = 30.0


class Reaper:
    """The watchdog of the Ray this process starts; `stop()` after `ray.shutdown()` ends it."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    def stop(self) -> None:
        """Close the pipe (the watchdog kills what `ray.shutdown()` left, then exits) and wait for it."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=_STOP_WAIT_S)
        except subprocess.TimeoutExpired:  # never seen; the search's own result matters more than this
            print(f"warning: Ray's watchdog (pid {self.process.pid}) is still running", file=sys.stderr)


def start_reaper() -> Reaper:
    """Start the watchdog of the Ray sessions this process is about to start."""
    process = subprocess.Popen(
        [sys.executable, "-m", "search.run.reaper", str(os.getpid())], stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        cwd=Path(__file__).resolve().parents[1],  # where `search` is importable from, whatever the user's cwd
    )  # fmt: skip
    return Reaper(process)


def kill_ray_started_by(starter_pid: int) -> list[str]:
    """SIGKILL every process of a Ray session that `starter_pid` started; the `pid name` of each one killed."""
    killed: dict[int, str] = {}
    for _ in range(_ROUNDS):
        left = [p for p in processes_of_ray_started_by(list_processes(), starter_pid) if p.pid not in killed]
        if not left:
            break
        for proc in left:
            try:
                os.kill(proc.pid, signal.SIGKILL)
                killed[proc.pid] = proc.name
            except (ProcessLookupError, PermissionError):  # gone meanwhile, or not ours
                pass
        time.sleep(_ROUND_PAUSE_S)
    return [f"{pid} {name}" for pid, name in killed.items()]


def main(argv: list[str]) -> int:
    """`python -m search.run.reaper DRIVER_PID`: wait for end-of-file on stdin, then kill the driver's Ray."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only end-of-file ends the wait
    sys.stdin.buffer.read()
    kill_ray_started_by(int(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
