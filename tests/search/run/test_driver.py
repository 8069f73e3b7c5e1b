"""The driver's order of steps around Ctrl-C, with Ray, Tune and MLflow replaced by recorders."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from search.run import driver
from search.spec.config import ExperimentConfig
from search.spec.schema import RunStatus


def test_after_ctrl_c_the_trial_runs_are_closed_again_once_ray_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial Tune stopped on its way out labels its own run "stopped"; under load that write came after
    the driver had closed the runs (seen: test_ctrl_c_ends_interrupted_and_resume_finishes_each_epoch_once in
    a parallel run). Only once Ray is down can no trial process write, so the runs are closed again then."""
    events: list[str] = []
    record = SimpleNamespace(name="s", path="/nowhere")
    launch = SimpleNamespace(before_ray=lambda client, experiment: launch, open_record=lambda client, e: record)
    ray_started = SimpleNamespace(embedded=True, shutdown=lambda: events.append("ray down"))

    def interrupted_fit(*args: Any) -> None:
        events.append("tune returned after Ctrl-C; runs closed")
        raise KeyboardInterrupt

    def close_leftover_runs(client: object, closed: object, status: RunStatus) -> None:
        assert closed is record and status == RunStatus.KILLED
        events.append("runs closed")

    for name, stand_in in {
        "preflight": lambda config, study: None,
        "choose_launch": lambda config, uri, resume, study: launch,
        "ray_address": lambda config: None,
        "check_ray_can_run": lambda config, address: None,
        "init_ray": lambda config, address: ray_started,
        "trial_resources": lambda config, embedded: {"cpu": 1.0},
        "write_record": lambda record: None,
        "_announce": lambda config, record, launch: None,
        "_run_tuner": interrupted_fit,
        "close_leftover_runs": close_leftover_runs,
    }.items():
        monkeypatch.setattr(driver, name, stand_in)
    monkeypatch.setattr(driver.tracking, "client_for", lambda uri: object())
    monkeypatch.setattr(driver.tracking, "experiment_id", lambda client, name: "1")
    with pytest.raises(KeyboardInterrupt):
        driver.run_search(ExperimentConfig())
    assert events[:3] == ["tune returned after Ctrl-C; runs closed", "ray down", "runs closed"]
