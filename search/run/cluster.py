"""Ray for a search: join a cluster (or start an embedded Ray), and the resources each trial asks for."""

from __future__ import annotations

import importlib
import logging
import os
import site
import socket
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.infra import ray_private
from search.run.reaper import Reaper, start_reaper
from search.spec.config import ConfigError, ExperimentConfig


@dataclass(frozen=True)
class RayStarted:
    """The Ray a search runs on: `embedded` when this driver started it (and owns the whole cluster); then
    `reaper` is the watchdog that kills its processes should the driver die (search/run/reaper.py)."""

    embedded: bool
    reaper: Reaper | None = None

    def shutdown(self) -> None:
        """Disconnect from (or stop) Ray; for an embedded Ray, then end its watchdog, which kills whatever
        process of it is left and returns once they are gone. Calling it again does nothing more."""
        import gc

        import ray

        # Ray objects caught in reference cycles (Tune's controller keeps many) must go while Ray is up: a
        # handle the cyclic collector frees after ray.shutdown() makes Ray's core worker end the whole process
        # ("The core worker has already been shutdown ... The process will exit"), skipping the summary
        gc.collect()
        ray.shutdown()
        if self.reaper is not None:
            self.reaper.stop()


def check_ray_can_run(config: ExperimentConfig, address: str | None) -> None:
    """What can be checked before Ray starts (and before MLflow is touched): a cluster address must answer,
    and a trial must fit the CPUs an embedded Ray will have (trial_resources checks again once Ray is up)."""
    if address is not None and address != "auto" and not _answers(address):
        raise _nothing_answers(address)
    if address is None and config.resources.cpu > (cpus := ray_private.embedded_ray_cpus()):
        raise _too_many_cpus(config.resources.cpu, cpus)


def init_ray(config: ExperimentConfig, address: str | None) -> RayStarted:
    """Start an embedded Ray (and its watchdog) or join the cluster at `address` (from `ray_address`)."""
    runtime_env = worker_runtime_env(config.model.arch) or None
    if address is not None:
        _join_ray(config, address, runtime_env)
        return RayStarted(embedded=False)
    import ray

    started = RayStarted(embedded=True, reaper=start_reaper())  # first: a kill during ray.init is covered too
    try:
        # trials print nothing useful; their errors reach the driver through Tune
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                 runtime_env=runtime_env, _system_config=ray_private.no_idle_worker_prestart())  # fmt: skip
    except BaseException as exc:
        started.shutdown()
        failure = _init_failed(config, address, runtime_env, exc)
        if failure is exc:
            raise
        raise failure from exc
    return started


def _join_ray(config: ExperimentConfig, address: str, runtime_env: dict[str, Any] | None) -> None:
    """Join the Ray cluster at `address` (ConfigError when it does not answer or refuses)."""
    import ray

    try:
        if address != "auto" and not _answers(address):
            # Ray would retry (this machine's other addresses too) for minutes before giving up
            raise _nothing_answers(address)
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, runtime_env=runtime_env)
    except BaseException as exc:
        failure = _init_failed(config, address, runtime_env, exc)
        if failure is exc:
            raise
        raise failure from exc
    have, nodes = ray.cluster_resources(), sum(node["Alive"] for node in ray.nodes())
    print(f"joined the Ray cluster at {address}: {nodes} node(s), {have.get('CPU', 0):g} CPUs, "
          f"{have.get('GPU', 0):g} GPUs now (autoscaling adds workers while trials wait)", flush=True)  # fmt: skip


def _init_failed(
    config: ExperimentConfig, address: str | None, runtime_env: dict[str, Any] | None, exc: BaseException
) -> BaseException:  # fmt: skip
    """What to raise when `ray.init` failed: a one-line ConfigError for what a user can fix, else `exc`."""
    import ray

    if not isinstance(exc, (ConnectionError, RuntimeError, ValueError, ray.exceptions.RuntimeEnvSetupError)):
        return exc
    hint = "" if config.ray.address else " (found by `ray start`; pass --address local for an embedded Ray)"
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    if runtime_env is not None and isinstance(exc, ray.exceptions.RuntimeEnvSetupError):
        shipped = runtime_env["py_modules"][0]
        return ConfigError(f"model.arch: cannot ship {shipped[-120:]} to the Ray workers: {first}")
    if address is None:
        return ConfigError(f"cannot start an embedded Ray: {first}")
    return ConfigError(f"ray.address {address!r}: cannot connect{hint}: {first}")


# the project's own packages: every node of a cluster has them installed (cluster/*.yaml setup)
PROJECT_PACKAGES = ("precrop", "trainers", "search")


def worker_runtime_env(arch: str) -> dict[str, Any]:
    """Ray's runtime_env that lets every trial worker import the user's `module.path:callable` model.

    Ray puts the driver's working directory on its workers' sys.path, but a module found elsewhere (on
    PYTHONPATH, or in a directory of its own) is not there on a joined cluster, and a remote node does
    not have the file at all. So the module's top-level package (or single file) travels with the job
    as a `py_modules` entry, Ray's documented way to ship local code to workers. Installed packages
    (site-packages, the standard library) and this project's own are on every node already.
    """
    from precrop.nn.zoo.sources import resolve_source, user_module

    module_path = user_module(arch)
    if module_path is None:
        return {}
    resolve_source(arch)  # imports the module as config validation did (cached)
    top = importlib.import_module(module_path.split(".")[0])
    location = _module_location(top)
    if location is None or top.__name__ in PROJECT_PACKAGES or _installed(location):
        return {}
    return {"py_modules": [str(location)]}


def _module_location(module: Any) -> Path | None:
    """The file of a single-file module, or the directory of a package (None for namespace packages)."""
    paths = list(getattr(module, "__path__", []) or [])
    if paths:
        return Path(paths[0]).resolve() if len(paths) == 1 else None
    file = getattr(module, "__file__", None)
    return Path(file).resolve() if file else None


def _installed(location: Path) -> bool:
    """Whether `location` lies in the standard library or an installed site-packages directory."""
    roots = [*site.getsitepackages(), site.getusersitepackages()]
    roots += [sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    return any(location.is_relative_to(Path(root).resolve()) for root in roots if root)


def ray_address(config: ExperimentConfig) -> str | None:
    """The cluster to join, or None for an embedded Ray started by this driver.

    In order: `ray.address` (or --address; `local` forces an embedded Ray), $RAY_ADDRESS, then the
    cluster that `ray start` began on this machine. The last is how `ray submit` works: it runs the
    script on the head node, where no address was passed. A leftover address of a cluster that no
    longer answers is ignored (joining it would hang in Ray's reconnect loop).
    """
    chosen = config.ray.address or os.environ.get("RAY_ADDRESS", "").strip()
    if not chosen:
        found = ray_private.ray_start_address()
        if found and not _answers(found):
            print(f"note: the Ray cluster recorded at {found} does not answer; starting an embedded Ray", flush=True)
            found = None
        chosen = found or ""
    return None if not chosen or chosen == "local" else chosen


def _answers(address: str) -> bool:
    """Whether HOST:PORT (or ray://HOST:PORT, Ray Client's form) accepts a TCP connection within 2 s."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False


def trial_resources(config: ExperimentConfig, embedded: bool) -> dict[str, float]:
    """CPU and GPU per trial. An embedded Ray on a machine without GPUs drops the GPU request (with a
    note), so one config runs on a laptop and a cluster; a joined cluster must show a GPU within
    `ray.gpu_wait_s` (its autoscaler may be starting one), else the search stops before it begins."""
    import ray

    resources = {"cpu": config.resources.cpu, "gpu": config.resources.gpu}
    if resources["gpu"] > 0 and embedded and not ray.cluster_resources().get("GPU"):
        print("note: this machine has no GPU; trials run on CPU", flush=True)
        resources["gpu"] = 0.0
    elif resources["gpu"] > 0 and not embedded:
        _wait_for_gpus(config.ray.gpu_wait_s, resources["gpu"])
    available = ray.cluster_resources().get("CPU", 0)
    if embedded and resources["cpu"] > available:
        raise _too_many_cpus(resources["cpu"], available)
    return resources


def _nothing_answers(address: str) -> ConfigError:
    return ConfigError(f"ray.address {address!r}: nothing answers there (is the cluster up? `ray start --head` "
                       "prints its address; pass --address local for an embedded Ray)")  # fmt: skip


def _too_many_cpus(asked: float, available: float) -> ConfigError:
    return ConfigError(f"resources.cpu: each trial asks for {asked} CPUs, this machine has {available}")


def _wait_for_gpus(timeout_s: float, per_trial: float) -> None:
    """Return once the joined cluster has a GPU; ask its autoscaler for one while waiting."""
    import ray
    from ray.autoscaler.sdk import request_resources

    if ray.cluster_resources().get("GPU", 0) > 0:
        return
    print(f"the cluster has no GPU yet: asking its autoscaler for one (waiting up to {timeout_s:.0f} s)", flush=True)
    deadline = time.monotonic() + timeout_s
    try:
        request_resources(bundles=[{"GPU": per_trial}])
        while time.monotonic() < deadline:
            if ray.cluster_resources().get("GPU", 0) > 0:
                return
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
    finally:
        request_resources(bundles=[])  # from here on, the trials' own demand drives the autoscaler
    raise ConfigError(
        f"resources.gpu: the Ray cluster has no GPU after {timeout_s:.0f} s (set resources.gpu: 0 to train on "
        "CPUs, add GPU workers, or raise ray.gpu_wait_s)"
    )
