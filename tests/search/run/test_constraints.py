"""Hard limits (`constraints:`): a search whose params limit the upper part of its budget range violates. The
trials over it train, are told to Optuna as infeasible, are tagged and counted, and never reach the front
(the driver's, `precrop pareto`'s, or Optuna's)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import optuna
import pytest

from tests.search.conftest import (
    TINY_CONFIG,
    copy_search_script,
    run_precrop,
    run_search_script,
    search_runs,
    write_config,
)

pytestmark = pytest.mark.ray  # starts a local Ray instance

LIMIT = 100_000  # ResNet-20 has 269,722 params; the first two trials (budgets 0.24 and 0.62) fall either side


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("limited")
    config = copy.deepcopy(TINY_CONFIG)
    config["name"] = "limited"
    config["search"] = {"trials": 4, "concurrency": 2, "seed": 0}
    config["asha"] = {"enabled": False}
    config["constraints"] = {"params": LIMIT}
    copy_search_script(folder)
    write_config(folder, config, "limited.yaml")
    output = run_search_script(folder, "limited.yaml")
    assert output.returncode == 0, output.stdout[-3000:] + output.stderr[-3000:]
    return folder, output.stdout


def test_trials_over_the_limit_are_counted_tagged_and_never_on_the_front(limited: tuple[Path, str]) -> None:
    folder, stdout = limited
    runs = search_runs(folder, "limited")
    completed = [r for r in runs.children if r.data.tags.get("precrop.outcome") == "completed"]
    over = [r for r in completed if r.data.metrics["params"] > LIMIT]
    within = [r for r in completed if r.data.metrics["params"] <= LIMIT]
    assert over and within, [r.data.metrics["params"] for r in completed]
    assert {r.data.tags["precrop.within_limits"] for r in over} == {"false"}
    assert {r.data.tags["precrop.within_limits"] for r in within} == {"true"}
    assert all(r.data.tags["pareto"] == "false" for r in over)
    assert any(r.data.tags["pareto"] == "true" for r in within)
    said = f"{len(over)} of {len(completed)} completed trials over a limit (params <= 100000): not on the front"
    assert said in stdout, stdout[-2000:]
    assert runs.parents[0].data.metrics["trials_over_limit"] == len(over)
    # cost is macs and latency is no limit: only the front's runs were re-timed at the end
    on_front = {r.info.run_id for r in completed if r.data.tags["pareto"] == "true"}
    retimed = {r.info.run_id for r in completed if "latency_ms_in_search" in r.data.metrics}
    assert retimed == on_front, (retimed, on_front)
    said = rf"re-timed the CPU latency \(eager\) of \d+ distinct plan\(s\) of {len(on_front)} front run"
    assert re.search(said, stdout), stdout[-2000:]
    # precrop pareto reads the tags: the same front without knowing the limit
    pareto = run_precrop(folder, "pareto", "--experiment", "limited", "--json",
                         "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}")  # fmt: skip
    assert pareto.returncode == 0, pareto.stderr
    front = json.loads(pareto.stdout)
    assert front and all(member["params"] <= LIMIT for member in front)


def test_optuna_is_told_each_limit_as_a_constraint(limited: tuple[Path, str]) -> None:
    _, stdout = limited
    storage = re.search(r"--storage (sqlite:///\S+)", stdout)
    name = re.search(r"--study-name (\S+)", stdout)
    assert storage and name, stdout[-2000:]
    study = optuna.load_study(study_name=name.group(1), storage=storage.group(1))
    excess = {t.number: t.system_attrs["constraints:params_over_limit"] for t in study.trials}
    assert all("constraints:untrained_fraction" in t.system_attrs for t in study.trials)
    over = {number for number, value in excess.items() if value > 0}
    assert over and len(over) < len(study.trials), excess
    assert not over & {t.number for t in study.best_trials}
