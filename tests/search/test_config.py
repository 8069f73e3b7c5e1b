"""Config parsing and validation: types, unknown keys, ranges, overrides; bad configs exit 2 in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.config import ConfigError, ExperimentConfig, load_config, parse_config, storage_path_of, tracking_uri_of
from tests.search.conftest import ROOT, run_precrop, write_config


def test_quickstart_config_parses_to_frozen_dataclasses() -> None:
    config = load_config(ROOT / "configs" / "quickstart.yaml")
    assert config.name == "quickstart" and config.data.name == "digits"
    assert config.search.trials == 8 and config.space.budget == (0.15, 1.0)
    assert config.space.weight_decay == (1e-4, 1e-3)
    with pytest.raises(AttributeError):
        config.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_is_valid(path: Path) -> None:
    assert isinstance(load_config(path), ExperimentConfig)


def test_overrides_parse_values_as_yaml(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"name": "x"})
    config = load_config(
        path, ["space.lr=[0.01, 0.1]", "search.trials=3", "space.weight_decay=1e-4", "asha.enabled=false"]
    )
    assert config.space.lr == (0.01, 0.1)
    assert config.search.trials == 3
    assert config.space.weight_decay == (1e-4, 1e-4)  # one number fixes the value (YAML 1.1 reads 1e-4 as text)
    assert config.asha.enabled is False


@pytest.mark.parametrize(("text", "expected"), [("yes", "yes"), ("no", "no"), ("auto", "auto")])
def test_a_bare_yes_or_no_is_the_word_not_a_boolean(tmp_path: Path, text: str, expected: str) -> None:
    config = load_config(write_config(tmp_path, {"name": "x"}), [f"data.resident={text}"])
    assert config.data.resident == expected


def test_defaults_round_trip_through_to_dict() -> None:
    config = parse_config({})
    assert parse_config(config.to_dict()) == config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("space.lrr=0.1", "unknown key 'space.lrr'"),
        ("space.lr=[-0.1, 0.1]", "space.lr: must be [low, high] of positive numbers"),
        ("space.budget=[0.5, 1.5]", "space.budget: must be [low, high] with 0 < low <= high <= 1 for PreCrop"),
        ("space.budget=[0, 0.5]", "space.budget"),
        ("space.allocators=[synexp, magic]", "space.allocators[1]: unknown value 'magic'"),
        ("search.trials=many", "search.trials must be an integer"),
        ("resources.gpu=1.5", "resources.gpu: must be a GPU fraction"),
        ("model.arch=resnet9000", "model.arch: unknown value 'resnet9000'"),
        ("objectives.cost=energy", "objectives.cost: unknown value 'energy'"),
        ("space=3", "space must be a mapping"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, override: str, message: str) -> None:
    path = write_config(tmp_path, {"name": "x"})
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    assert message in str(info.value)


def test_preconfig_budget_may_exceed_one_up_to_expand(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"name": "x", "space": {"expand": 1.5, "budget": [0.8, 1.4]}})
    assert load_config(path).space.budget == (0.8, 1.4)
    with pytest.raises(ConfigError, match=r"expand=1\.5"):
        load_config(path, ["space.budget=[0.8, 1.6]"])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"name": "x", "extra": 1}, "unknown key 'extra'"),
        ({"name": "x", "space": {"lr": [-1, 0.1]}}, "space.lr"),
        ({"name": "x", "space": {"budget": [0.2, 1.2]}}, "space.budget"),
        ({"name": "x", "space": {"allocators": ["nope"]}}, "space.allocators[0]"),
        ({"name": "x", "data": {"name": "cifar10", "data_dir": "/nonexistent/cifar"}}, "cifar10 not found"),
        ({"name": "x", "space": {"budget": [0.01, 0.5]}}, "below what the minimum widths allow"),
    ],
)
def test_search_cli_rejects_bad_configs_in_one_line(tmp_path: Path, config: dict[str, object], message: str) -> None:
    path = write_config(tmp_path, config)
    result = run_precrop(tmp_path, "search", str(path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("precrop: error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()


def test_tracking_uri_and_storage_come_from_the_environment_unless_the_config_sets_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain = parse_config({"name": "x"})
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PRECROP_STORAGE_PATH", raising=False)
    assert tracking_uri_of(plain) == "sqlite:///mlflow.db" and storage_path_of(plain) == "ray_results"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.5:5000")
    monkeypatch.setenv("PRECROP_STORAGE_PATH", "s3://bucket/ray_results")
    assert tracking_uri_of(plain) == "http://10.0.0.5:5000" and storage_path_of(plain) == "s3://bucket/ray_results"
    pinned = parse_config({"mlflow": {"tracking_uri": "sqlite:///here.db"}, "ray": {"storage_path": "runs"}})
    assert tracking_uri_of(pinned) == "sqlite:///here.db" and storage_path_of(pinned) == "runs"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://nope")
    with pytest.raises(ConfigError, match=r"^MLFLOW_TRACKING_URI: must be"):
        tracking_uri_of(plain)


def test_ray_address_prefers_config_then_environment_then_the_local_ray_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import ray._private.utils

    from search.cluster import ray_address

    started_here: list[str | None] = [None]
    monkeypatch.setattr(ray._private.utils, "read_ray_address", lambda *_: started_here[0])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    plain = parse_config({})
    assert ray_address(plain) is None  # nothing running: an embedded Ray
    monkeypatch.setattr("search.cluster._answers", lambda address: address == "127.0.0.1:6379")
    started_here[0] = "127.0.0.1:6379"
    assert ray_address(plain) == "127.0.0.1:6379"  # on a head, as `ray submit` runs the script
    started_here[0] = "127.0.0.1:6380"
    assert ray_address(plain) is None  # a leftover address of a stopped cluster
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert ray_address(plain) == "10.0.0.5:6379"
    assert ray_address(parse_config({"ray": {"address": "local"}})) is None
    assert ray_address(parse_config({"ray": {"address": "auto"}})) == "auto"


def test_a_relative_data_dir_is_made_absolute_where_the_search_starts(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"data": {"name": "cifar10", "data_dir": "data", "download": True}})
    config = load_config(path)
    assert config.data.data_dir == str(Path.cwd() / "data") and config.data.download is True
    absolute = write_config(tmp_path, {"data": {"name": "cifar10", "data_dir": str(tmp_path)}}, "abs.yaml")
    assert load_config(absolute).data.data_dir == str(tmp_path)
