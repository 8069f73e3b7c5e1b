"""`precrop allocate`: table and JSON output, saved plans, and one-line errors that write nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from precrop.cli import main
from precrop.plan import WidthPlan


def test_json_output_has_the_documented_keys(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "plan.json"
    assert main(["allocate", "cifar_resnet20", "--macs", "0.5", "--json", "-o", str(out_file)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"widths", "counted", "base", "solve_ms"} <= set(data)
    assert data["base"] == {"params": 269_722, "macs": 40_551_040}
    assert data["counted"]["macs"] <= 0.5 * 40_551_040
    assert WidthPlan.from_json(out_file.read_text()).to_dict() == data
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]


def test_uniform_allocator_scales_every_prunable_group_alike(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["allocate", "cifar_resnet20", "--macs", "0.5", "--allocator", "uniform", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["allocator"] == "uniform" and data["counted"]["macs"] <= 0.5 * 40_551_040
    multiplier = data["options"]["multiplier"]
    assert multiplier == pytest.approx(0.75, abs=1e-3)  # MACs go roughly with the multiplier squared
    # every stage at 3/4 of its width, rounded to multiples of 8 (16 x 0.75 = 12 rounds down to 8)
    assert {data["widths"][g] for g in ("conv1", "layer2.0.conv2", "layer3.0.conv2")} == {8, 24, 48}


def test_table_output_shows_base_and_new_widths(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["allocate", "efficientnet_b0", "--scale", "1", "--params", "0.8", "--expand", "2"]) == 0
    text = capsys.readouterr().out
    assert "group" in text and "base" in text and "new" in text
    assert "of base" in text and "ms" in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--macs", "0"], "positive"),
        (["--macs", "-1"], "positive"),
        (["--macs", "1.5"], "PreCrop budgets"),
        (["--macs", "nan"], "positive"),
        (["--params", "0.0001"], "minimum widths"),
        (["--macs", "0.5", "--variant", "nope"], "unknown variant 'nope'"),
        (["--macs", "0.5", "--scale", "0.5"], "not both"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args: list[str], needle: str, tmp_path: Path) -> None:
    out_file = tmp_path / "plan.json"
    cmd = [sys.executable, "-m", "precrop.cli", "allocate", "cifar_resnet20", *args, "-o", str(out_file)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and needle in out.stderr
    assert list(tmp_path.iterdir()) == []
