"""The command line around models: --version, `info --list`, a timm model's normalization in `info`, and the
fixed choices of `allocate --variant/--solver` (read from the code that defines them)."""

from __future__ import annotations

import json
from importlib.metadata import version

import pytest

from precrop.cli import build_parser, density_solvers, main
from precrop.nn.zoo import REGISTRY
from precrop.width.mapping import VARIANTS


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"precrop {version('precrop-search')}"


def test_info_list_names_every_builtin_and_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--list"]) == 0
    out = capsys.readouterr().out
    for spec in REGISTRY:
        assert spec.name in out and spec.description in out
    for form in ("torchvision:<name>", "timm:<name>", "module.path:callable"):
        assert form in out
    assert main(["info", "--list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [b["name"] for b in listed["builtins"]] == REGISTRY.names()
    first = {"name": "cifar_resnet20", "description": REGISTRY.get("cifar_resnet20").description,
             "num_classes": 10, "input_size": 32}  # fmt: skip
    assert listed["builtins"][0] == first
    assert len(listed["sources"]) == 3


def test_info_without_arch_or_list_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "precrop info --list" in err


def test_info_shows_a_timm_models_normalization(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "timm:resnet10t", "--input-size", "32", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "designed for inputs normalized with mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)" in out
    assert main(["info", "timm:resnet10t", "--input-size", "32", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mean"] == [0.485, 0.456, 0.406] and info["num_classes"] == 1000
    assert info["input_shape"] == [3, 32, 32]
    assert main(["info", "cifar_resnet20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mean"] is None  # built-ins normalize with the data's statistics


def test_allocate_choices_come_from_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for variant in VARIANTS:
        assert parser.parse_args(["allocate", "cifar_resnet20", "--variant", variant]).variant == variant
    for solver in density_solvers():
        assert parser.parse_args(["allocate", "cifar_resnet20", "--solver", solver]).solver == solver
    assert set(density_solvers()) == {"closed_form", "cvxpy"}
    for flag in ("--variant", "--solver"):
        with pytest.raises(SystemExit) as done:
            parser.parse_args(["allocate", "cifar_resnet20", flag, "fancy"])
        assert done.value.code == 2
        assert f"argument {flag}: unknown " in capsys.readouterr().err
