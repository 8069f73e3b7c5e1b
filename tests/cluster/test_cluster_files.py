"""The files in cluster/: launcher YAMLs pass Ray's own validation, the RayJob is well formed, nodes install
the versions in requirements.lock, nothing listens publicly, and no file holds a credential."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.search.conftest import ROOT
from tests.test_lock import applicable_pin, parse_lock

CLUSTER = ROOT / "cluster"
LAUNCHER_YAMLS = ("aws.yaml", "gcp.yaml")


def locked_version(name: str) -> str | None:
    """The version requirements.lock pins `name` to in this environment."""
    return applicable_pin(parse_lock((ROOT / "requirements.lock").read_text()), name)


def _load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CLUSTER / name).read_text())
    return loaded


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_launcher_yaml_passes_rays_validation(name: str) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(_load(name)))  # merges the provider's defaults first
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_launcher_yaml_layout(name: str) -> None:
    config = _load(name)
    head, worker = config["available_node_types"]["head"], config["available_node_types"]["gpu_worker"]
    assert head["resources"] == {"CPU": 0}  # the driver and MLflow only
    assert worker["min_workers"] == 0 and worker["resources"]["GPU"] >= 1
    assert config["provider"]["cache_stopped_nodes"] is False
    mounts = config["file_mounts"]
    assert (
        mounts["~/cluster"] == "./cluster"
        and mounts["~/configs"] == "./configs"
        and mounts["~/precrop-dist"] == "./dist"
    )
    assert config["setup_commands"] == ["bash ~/cluster/setup_node.sh"]
    assert config["head_setup_commands"] == [f"bash ~/cluster/setup_head.sh {name.removesuffix('.yaml')}"]
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start


NODE_CONFIG_SCHEMAS = {"aws.yaml": "ec2_run_instances.schema.json", "gcp.yaml": "gce_instance_insert.schema.json"}


def _node_config_schema(name: str) -> dict[str, Any]:
    import json

    schema: dict[str, Any] = json.loads((Path(__file__).parent / "api_shapes" / NODE_CONFIG_SCHEMAS[name]).read_text())
    return schema


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_every_node_config_has_the_shape_of_the_clouds_request(name: str) -> None:
    """Ray's schema does not look inside node_config: the cloud's API would be the first to refuse it."""
    import jsonschema

    schema = _node_config_schema(name)
    for node_type, spec in _load(name)["available_node_types"].items():
        errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(spec["node_config"])]
        assert not errors, (node_type, errors)


def test_the_schema_refuses_the_gcp_scheduling_written_as_a_list() -> None:
    """The shape of ray-project/ray#46248, which cluster/gcp.yaml had: the test data must catch it."""
    import jsonschema

    worker = copy.deepcopy(_load("gcp.yaml")["available_node_types"]["gpu_worker"]["node_config"])
    worker["scheduling"] = [{"onHostMaintenance": "TERMINATE"}, {"provisioningModel": "SPOT"}]
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'object'"):
        jsonschema.validate(worker, _node_config_schema("gcp.yaml"))


def test_gcp_gpu_workers_act_as_rays_service_account_of_the_same_project() -> None:
    import importlib.util

    # the account Ray creates and gives the head (Ray 2.60: `RAY + "-sa-" + VERSION` in its GCP config),
    # read from Ray's source: importing that module needs the Google client libraries of the cluster extra
    spec = importlib.util.find_spec("ray.autoscaler._private.gcp.config")
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).read_text()
    ray, version = (re.search(rf'^{k} = "([^"]+)"$', source, re.M) for k in ("RAY", "VERSION"))
    assert ray is not None and version is not None, "Ray's GCP config no longer names its service account so"
    config = _load("gcp.yaml")
    worker = config["available_node_types"]["gpu_worker"]["node_config"]
    expected = f"{ray[1]}-sa-{version[1]}@{config['provider']['project_id']}.iam.gserviceaccount.com"
    assert worker["serviceAccounts"] == [
        {"email": expected, "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}
    ]
    scheduling = worker["scheduling"]
    assert scheduling["provisioningModel"] == "SPOT" and scheduling["automaticRestart"] is False
    assert scheduling["onHostMaintenance"] == "TERMINATE"  # GPUs cannot live-migrate


def test_rayjob_runs_the_search_with_a_gpu_worker_group_and_an_internal_mlflow() -> None:
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all((CLUSTER / "kuberay-rayjob.yaml").read_text())}
    job = documents["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["entrypoint"].startswith("precrop search /home/ray/configs/")
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["MLFLOW_TRACKING_URI"] == "http://precrop-mlflow:5000"
    assert env["PRECROP_STORAGE_PATH"].startswith(("s3://", "gs://"))
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == locked_version("ray")
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (gpu_group,) = cluster["workerGroupSpecs"]
    assert gpu_group["minReplicas"] == 0
    (worker,) = gpu_group["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert documents["Service"]["spec"]["type"] == "ClusterIP"
    mlflow_args = documents["Deployment"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--artifacts-destination=/mlflow/artifacts" in mlflow_args
    assert any(arg.startswith("--allowed-hosts=") for arg in mlflow_args)


def test_the_kuberay_mlflow_pod_can_write_its_volume_and_takes_concurrent_writers() -> None:
    """The server runs as the image's user (UID 1000): without fsGroup the fresh volume is root's and MLflow
    cannot create its store; the store is PostgreSQL (SQLite behind several server workers refuses writes
    under load), reachable on the pod's loopback only, so trusting local connections needs no password."""
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all((CLUSTER / "kuberay-rayjob.yaml").read_text())}
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"] == 1000
    (postgres,) = pod["initContainers"]
    assert postgres["restartPolicy"] == "Always" and "startupProbe" in postgres  # a native sidecar, ready first
    assert postgres["args"] == ["-c", "listen_addresses=localhost"]
    env = {e["name"]: e["value"] for e in postgres["env"]}
    assert env["POSTGRES_HOST_AUTH_METHOD"] == "trust" and "POSTGRES_PASSWORD" not in env
    assert env["PGDATA"].startswith("/mlflow/")
    (server,) = pod["containers"]
    assert "--backend-store-uri=postgresql://mlflow@localhost:5432/mlflow" in server["command"]
    mounts = {c["name"]: {m["mountPath"] for m in c["volumeMounts"]} for c in (postgres, server)}
    assert mounts == {"postgres": {"/mlflow"}, "mlflow": {"/mlflow"}}
    assert "--workers=2" in server["command"]


def test_dockerfile_base_image_matches_the_pinned_ray() -> None:
    base = re.search(r"^FROM rayproject/ray:(\S+)-py311-gpu$", (CLUSTER / "Dockerfile").read_text(), re.MULTILINE)
    assert base is not None and base.group(1) == locked_version("ray")


def test_nodes_install_the_lock_mounted_beside_their_scripts() -> None:
    """Every node installs with `-c requirements.lock`; the launchers mount that file where the scripts look."""
    for name in LAUNCHER_YAMLS:
        assert _load(name)["file_mounts"]["~/requirements.lock"] == "./requirements.lock", name
    for script in ("setup_node.sh", "setup_head.sh"):
        assert '--constraint "$here/../requirements.lock"' in (CLUSTER / script).read_text(), script
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert "COPY --chown=ray:users requirements.lock /home/ray/requirements.lock" in dockerfile
    assert "--constraint /home/ray/requirements.lock" in dockerfile


def test_no_public_listeners_and_no_credentials_in_cluster_files() -> None:
    secret = re.compile(r"aws_secret_access_key|aws_access_key_id|AKIA[0-9A-Z]{16}|password\s*[:=]|PRIVATE KEY", re.I)
    for path in CLUSTER.iterdir():
        text = path.read_text()
        assert not secret.search(text), path.name
        if path.suffix == ".yaml" and path.name != "kuberay-rayjob.yaml":
            assert "0.0.0.0" not in text, path.name


@pytest.mark.parametrize("script", ["setup_node.sh", "setup_head.sh", "start_mlflow.sh"])
def test_scripts_parse(script: str) -> None:
    assert subprocess.run(["bash", "-n", str(CLUSTER / script)], capture_output=True).returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "sqlite:///x.db", "--artifacts", "a", "--host", "0.0.0.0"], "refusing to listen on every"),
        (["--artifacts", "a", "--host", "127.0.0.1"], "--backend is required"),
        (["--backend", "sqlite:///x.db", "--artifacts", "a", "--port", "http"], "--port must be a number"),
        (["--bogus"], "unknown argument --bogus"),
    ],
)
def test_start_mlflow_refuses_bad_arguments_in_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(CLUSTER / "start_mlflow.sh"), *args, "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "state").exists()
