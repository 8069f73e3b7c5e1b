"""benchmarks/width_study.py: the grid, resuming, the paired table, and a tiny run end to end."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import width_study

from search.studies.stats import paired_difference


def record(arm: str, seed: int, acc: float, epochs: int = 4, budget: float = 0.3, status: str = "completed") -> dict:
    cell = width_study.Cell(arm, budget, epochs, seed)
    return {"arm": arm, "budget": budget, "epochs": epochs, "seed": seed, "key": cell.key, "status": status,
            "test_acc": acc if status == "completed" else None, "val_acc": acc, "macs_frac": 0.3,
            "params_frac": 0.25, "train_images": 100, "train_s": 10.0}  # fmt: skip


def test_grid_orders_short_schedules_and_whole_seeds_first():
    args = width_study.parse_args(["--out", "x", "--arms", "layer,uniform", "--budgets", "0.3,0.5", "--epochs",
                                   "8,4", "--seeds", "2", "--ablate", "path"])  # fmt: skip
    cells = width_study.grid(args)
    # 2 arms x 2 budgets x 2 schedules x 2 seeds, plus path, its 3 ablation arms (uniform already there)
    # at the first budget and the longest schedule, for 2 seeds
    assert len(cells) == 16 + 4 * 2
    assert [c.epochs for c in cells] == sorted(c.epochs for c in cells)
    first_seed = [c for c in cells if c.epochs == 4][:4]
    assert {c.seed for c in first_seed} == {0}
    ablation = {c.arm for c in cells if ":" in c.arm}
    assert ablation == {"path:uniform-streams", "path:uniform-expansions", "path:uniform-head"}
    assert all(c.epochs == 8 and c.budget == 0.3 for c in cells if ":" in c.arm)


def test_paired_table_matches_an_independent_computation(tmp_path):
    uniform = [0.40, 0.42, 0.41]
    layer = [0.37, 0.38, 0.36]
    rows = [record("uniform", s, a) for s, a in enumerate(uniform)] + [
        record("layer", s, a) for s, a in enumerate(layer)
    ]
    rows.append(record("layer", 3, 0.5))  # no uniform partner: not paired
    (tmp_path / width_study.CELLS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    width_study.write_report(tmp_path, "uniform")
    line = (tmp_path / "paired.csv").read_text().splitlines()[1].split(",")
    diffs = [a - b for a, b in zip(layer, uniform, strict=True)]
    mean = statistics.fmean(diffs)
    half = 4.302652729911275 * statistics.stdev(diffs) / math.sqrt(3)  # t(0.975, 2)
    assert line[:5] == ["layer", "uniform", "0.3", "4", "3"]
    assert float(line[5]) == pytest.approx(mean, abs=1e-6)
    assert (float(line[6]), float(line[7])) == pytest.approx((mean - half, mean + half), abs=1e-6)
    assert paired_difference(diffs).mean == pytest.approx(mean)
    md = (tmp_path / "study.md").read_text()
    assert "| layer | 0.3 | 4 | 0.300 | 0.250 | 4 |" in md
    assert "s0:-0.030 s1:-0.040 s2:-0.050" in md


def test_a_failed_cell_is_reported_and_trained_again(tmp_path):
    rows = [record("uniform", 0, 0.4), record("layer", 0, 0.0, status="failed")]
    (tmp_path / width_study.CELLS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = width_study.write_report(tmp_path, "uniform")
    assert "Not completed: layer|0.3|4|0" in text
    done = {r["key"] for r in width_study.read_cells(tmp_path) if r.get("status") == "completed"}
    assert done == {"uniform|0.3|4|0"}


def test_missing_data_is_one_line(tmp_path, capsys):
    assert width_study.main(["--out", str(tmp_path), "--data-dir", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_study_trains_resumes_and_reports(tmp_path):
    """Synthetic data, 2 arms x 2 seeds x 1 epoch; a second run trains nothing and reports the same cells."""
    argv = ["--tiny", "--out", str(tmp_path), "--arms", "layer,uniform", "--seeds", "2"]
    assert width_study.main(argv) == 0
    rows = width_study.read_cells(tmp_path)
    assert sorted(r["key"] for r in rows) == ["layer|0.3|1|0", "layer|0.3|1|1", "uniform|0.3|1|0", "uniform|0.3|1|1"]
    assert all(r["status"] == "completed" and 0.0 <= r["test_acc"] <= 1.0 for r in rows)
    assert all(abs(r["macs_frac"] - 0.3) < 0.01 for r in rows)
    assert width_study.main(argv) == 0
    assert len((tmp_path / width_study.CELLS_FILE).read_text().splitlines()) == 4  # nothing retrained
    assert (tmp_path / "study.png").stat().st_size > 0
