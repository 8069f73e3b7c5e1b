"""The search on a multi-node Ray cluster the way `ray submit` runs it: search.py copied alone into an
empty directory on the head, no --address (it joins the cluster `ray start` began there), MLflow on a
tracking server with proxied artifacts, Tune state on storage every node shares."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.cluster.conftest import LocalCluster, MlflowServer, cluster_search_env
from tests.search.conftest import TINY_CONFIG, copy_search_script, write_config

pytestmark = [pytest.mark.cluster, pytest.mark.ray]


def _trial_runs(client: MlflowClient, experiment: str) -> list[Any]:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id])
    return [r for r in runs if r.data.tags.get("precrop.role") == "trial"]


def _search_process(folder: Path, config: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "search.py", config], cwd=folder, env=env, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def _finish(process: subprocess.Popen[str], timeout: float) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    return output


@pytest.fixture
def gpu_cluster() -> Iterator[LocalCluster]:
    """A head, a worker advertising one (fake) GPU and a CPU-only worker."""
    cluster = LocalCluster({"gpu": {"num_cpus": 2, "num_gpus": 1}, "cpu": {"num_cpus": 1}})
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def two_workers() -> Iterator[LocalCluster]:
    """A head and two one-CPU workers, so two trials run on two different nodes."""
    cluster = LocalCluster({"a": {"num_cpus": 1}, "b": {"num_cpus": 1}})
    try:
        yield cluster
    finally:
        cluster.stop()


def test_search_from_an_empty_directory_runs_on_the_workers_and_logs_to_the_server(
    gpu_cluster: LocalCluster, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    config = copy.deepcopy(TINY_CONFIG)
    config["name"] = "on-cluster"
    config["search"] = {"trials": 4, "concurrency": 2, "seed": 0}
    config["resources"] = {"cpu": 1, "gpu": 0.5}  # only the GPU worker can take these trials
    config["asha"] = {"enabled": False}
    head_home = tmp_path / "head-home"
    head_home.mkdir()
    copy_search_script(head_home)
    write_config(head_home, config, "on-cluster.yaml")
    env = cluster_search_env(mlflow_server, tmp_path / "shared" / "ray_results")

    started = time.perf_counter()
    output = _finish(_search_process(head_home, "on-cluster.yaml", env), timeout=420)
    elapsed = time.perf_counter() - started
    assert "joined the Ray cluster at 127.0.0.1:" in output, output[-3000:]
    assert "search took" in output, output[-3000:]

    # nothing written beside the script: runs went to the server, Tune state to the shared storage
    assert sorted(p.name for p in head_home.iterdir()) == ["on-cluster.yaml", "search.py"]
    assert list((tmp_path / "shared" / "ray_results").glob("on-cluster-*/run_trial_*"))

    client = MlflowClient(mlflow_server.url)
    children = _trial_runs(client, "on-cluster")
    assert len(children) == 4
    placement = {run.data.tags["precrop.trial_id"]: run.data.tags["precrop.node_id"] for run in children}
    names = {node: name for name, node in gpu_cluster.workers.items()} | {gpu_cluster.head: "head"}
    where = ", ".join(f"{trial}: {names[node]}" for trial, node in placement.items())
    print(f"\nsearch took {elapsed:.0f} s; trial -> node: {where}")
    assert set(placement.values()) == {gpu_cluster.workers["gpu"]}, "GPU trials must run on the GPU worker"
    for run in children:
        assert run.info.status == "FINISHED", run.data.tags
        assert run.data.tags["precrop.device"] == "cpu"  # the fake GPU has no CUDA behind it
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
        logged = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
        assert logged == {"model/plan.json", "model/model.pt", "model/preprocess.json"}
        on_disk = mlflow_server.artifacts / run.info.experiment_id / run.info.run_id / "artifacts" / "model"
        assert (on_disk / "model.pt").stat().st_size > 0
    parent = client.get_run(children[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"pareto.png", "pareto.csv"}


def _wait_until_trial_checkpointed_on(client: MlflowClient, node: str, process: subprocess.Popen[str]) -> str:
    """The run id of a trial on `node` that has logged two epochs (so its first checkpoint exists)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, "the search ended before a worker could be killed"
        for run in _trial_runs(client, "fault"):
            if run.data.tags.get("precrop.node_id") == node and run.data.metrics.get("epoch", 0) >= 2:
                return str(run.info.run_id)
        time.sleep(0.2)
    raise AssertionError("no trial reached its second epoch on the chosen worker in time")


def test_killing_a_worker_retries_its_trial_from_the_checkpoint(
    two_workers: LocalCluster, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    epochs = 10
    config = copy.deepcopy(TINY_CONFIG)
    config["name"] = "fault"
    config["space"]["epochs"] = epochs
    config["search"] = {"trials": 2, "concurrency": 2, "seed": 3}
    config["resources"] = {"cpu": 1, "gpu": 0}
    config["asha"] = {"enabled": False}
    config["ray"] = {"checkpoint_every_s": 0, "max_failures": 2}
    copy_search_script(tmp_path)
    write_config(tmp_path, config, "fault.yaml")
    process = _search_process(tmp_path, "fault.yaml", cluster_search_env(mlflow_server, tmp_path / "shared"))
    client = MlflowClient(mlflow_server.url)
    try:
        victim = _wait_until_trial_checkpointed_on(client, two_workers.workers["a"], process)
        two_workers.kill("a")
    finally:
        output = _finish(process, timeout=420)
    assert "search took" in output, output[-3000:]

    children = _trial_runs(client, "fault")
    assert len(children) == 2, [r.data.tags for r in children]
    for run in children:
        assert run.info.status == "FINISHED", run.data.tags
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert {m.step for m in history} == set(range(1, epochs + 1))
    retried = client.get_run(victim)
    assert retried.data.tags["precrop.attempts"] == "2"
    assert retried.data.tags["precrop.node_id"] == two_workers.workers["b"]  # continued on the survivor
    # resumed from its checkpoint, not from scratch: at most the interrupted epoch ran twice
    assert len(client.get_metric_history(victim, "val_acc")) <= epochs + 1
