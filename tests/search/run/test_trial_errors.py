"""The one line a failed trial's progress line and MLflow run carry (search/run/trial_errors.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.run.trial_errors import UNKNOWN, failure_reason

# the shape of the error file Ray 2.60 writes when its memory monitor kills a trial's worker (abridged)
OOM = """Failure # 1 (occurred at 2026-11-30_10-33-38)
1 worker(s) were killed due to the node running low on memory. Memory on the node (IP: 10.0.0.5, ID: dd18ae)
 was 1.61GB used / 23.54GB limit (0.068476)
OOM kill reason: Memory usage 1730830336B exceeded threshold of 505530016B (2.0% of 25276502016B limit)
Top 10 memory users: PID\tMEM(GB)\tCOMMAND
2351\t0.05\tray::ImplicitFunc.train
"""

TRACEBACK = """Failure # 1 (occurred at 2026-11-30_10-33-38)
ray::ImplicitFunc.train() (pid=2351, ip=10.0.0.5, actor_id=ab)
Traceback (most recent call last):
  File "/work/search/run/trial.py", line 80, in run_trial
    raise ValueError("inner")
ValueError: inner

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/work/trainers/loop.py", line 12, in fit
RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB
"""


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (OOM, "killed by Ray's memory monitor: the node had 1.61GB of 23.54GB in use"),
        (TRACEBACK, "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"),
        ("Failure # 1\nsomething odd happened\n\n", "something odd happened"),
        ("", UNKNOWN),
        ("Failure # 1\nKeyError: '" + "x" * 5000 + "'\n", "KeyError: '" + "x" * 189),
    ],
)
def test_the_reason_is_the_last_exception_line_or_the_memory_kill(tmp_path: Path, text: str, reason: str) -> None:
    error_file = tmp_path / "error.txt"
    error_file.write_text(text)
    found = failure_reason(str(error_file))
    assert found.startswith(reason), found
    assert "\n" not in found and len(found) <= 200


def test_no_error_file_gives_the_generic_reason(tmp_path: Path) -> None:
    assert failure_reason(None) == UNKNOWN
    assert failure_reason(str(tmp_path / "gone.txt")) == UNKNOWN
