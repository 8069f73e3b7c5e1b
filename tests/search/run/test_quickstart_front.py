"""The shipped quickstart (the shared `quickstart_search`, run by search.py, which is `precrop search`)
ends with a front that spans the cost range.

Guards the default Pareto-ranked rungs (search/run/scheduler.py) and the spread first budgets
(search/spec/space.py); benchmarks/front_quality.py measures what they buy against the alternatives.
"""

from __future__ import annotations

import json

import pytest

from tests.search.conftest import SharedSearch, run_precrop

pytestmark = pytest.mark.ray  # starts a local Ray instance


def test_quickstart_front_spans_a_3x_macs_range_and_keeps_its_cheap_end(quickstart_search: SharedSearch) -> None:
    """The front's size is not asserted beyond two: the validation split has 143 images, so accuracies move in
    steps of 0.7 points and two trials often tie; which of them wins is decided by float rounding that differs
    between CPUs (the same code and versions gave a 3-member front on one machine and 2 on another, where
    budgets 0.19 and 0.31 both scored 95.80%). What the rungs must not do is delete the cheap end."""
    shown = run_precrop(quickstart_search.folder, "pareto", "--experiment", "quickstart", "--json")
    assert shown.returncode == 0, shown.stderr
    front = json.loads(shown.stdout)
    macs = sorted(member["macs"] for member in front)
    assert len(front) >= 2, front
    assert macs[-1] >= 3 * macs[0], macs
    assert all(member["status"] == "FINISHED" for member in front)
    # every trial ended: trained to the end, or stopped at a rung (never left running)
    trials = quickstart_search.runs.children
    assert len(trials) == quickstart_search.trials == 8
    assert {r.info.status for r in trials} <= {"FINISHED", "KILLED"}
    # the cheap end survived the rungs: three or more trials trained to the end, the cheapest of them on the front
    completed = sorted(r.data.metrics["macs"] for r in trials if r.data.metrics.get("epoch") == 8)
    assert len(completed) >= 3 and completed[0] == macs[0], (completed, macs)
