"""One line that says why a trial failed, read from the error file Tune writes for it.

Tune prints only where the error file is; the file holds a whole traceback, or, when Ray's memory monitor
killed the trial's worker, a page about the node's memory and its processes. The line a user needs is the
exception's last line, or that the node ran out of memory and how full it was.
"""

from __future__ import annotations

import re
from pathlib import Path

# Ray 2.60's memory monitor: "... Memory on the node (IP: ..., ID: ...) was 1.61GB used / 23.54GB limit (0.068)"
_OOM = re.compile(r"running low on memory.*?was ([\d.]+\s*\w+) used / ([\d.]+\s*\w+) limit", re.DOTALL)
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b.*$", re.MULTILINE)
_LIMIT = 200
UNKNOWN = "the trial raised an error (retries exhausted)"


def failure_reason(error_file: str | None) -> str:
    """Why the trial whose Tune error file is `error_file` failed, in one line of at most 200 characters."""
    if not error_file:
        return UNKNOWN
    try:
        text = Path(error_file).read_text(errors="replace")[-200_000:]
    except OSError:
        return UNKNOWN
    oom = _OOM.search(text)
    if oom:
        return (f"killed by Ray's memory monitor: the node had {oom.group(1)} of {oom.group(2)} in use (lower "
                "search.concurrency, or raise Ray's RAY_memory_usage_threshold, 0.95 by default)")  # fmt: skip
    lines = _EXCEPTION_LINE.findall(text)
    last = lines[-1] if lines else next((line for line in reversed(text.splitlines()) if line.strip()), "")
    last = " ".join(last.split())
    return last[:_LIMIT] if last else UNKNOWN
