"""`precrop info`: tables, JSON, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from precrop.cli import main


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "precrop.cli", *args], capture_output=True, text=True, timeout=120)


def test_console_script_is_installed() -> None:
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("precrop") == "search.cli:main"


def test_info_json_resnet50_is_exact() -> None:
    out = _run("info", "resnet50", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["arch"] == "resnet50"
    assert data["params"] == 25_557_032
    assert data["macs"] == 4_089_184_256
    assert {k: data["groups"][-1][k] for k in ("name", "width")} == {"name": "logits", "width": 1000}
    assert len(data["layers"]) == 54  # 53 convs and the fc
    assert sum(layer["params"] for layer in data["layers"]) < data["params"]  # norms are extra


def test_info_options_change_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "cifar_resnet20", "--num-classes", "100", "--input-size", "64", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input_shape"] == [3, 64, 64]
    assert data["groups"][-1] == {"name": "logits", "width": 100, "fixed": True, "layers": 1}
    assert data["macs"] == 4 * (40_551_040 - 640) + 6400


def test_info_text_shows_groups_layers_and_totals(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "cifar_resnet20"]) == 0
    text = capsys.readouterr().out
    assert "layer2.0.conv2" in text and "Channel groups" in text and "Layers" in text
    assert "269,722 params" in text and "40,551,040 MACs" in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["info", "NOPE"], "unknown architecture 'NOPE'; valid names: cifar_resnet20"),
        (["info", "resnet50", "--num-classes", "0"], "--num-classes"),
        (["info", "torchvision:not_a_model"], "unknown torchvision classification model 'not_a_model'"),
        (["info", "torchvision:shufflenet_v2_x0_5", "--input-size", "64"], "not supported"),
        (["info"], "arch"),
    ],
)
def test_user_errors_are_one_line_with_exit_2(args: list[str], needle: str) -> None:
    out = _run(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert needle in lines[0]
    assert "Traceback" not in out.stderr
    assert out.stdout == ""


def test_a_reader_that_left_ends_the_command_quietly() -> None:
    """`precrop info --list | head -1`: the write fails with EPIPE; no traceback, exit 141 as after SIGPIPE."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes anything: every write fails
    try:
        done = subprocess.run([sys.executable, "-m", "precrop.cli", "info", "--list"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=300)  # fmt: skip
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 141
