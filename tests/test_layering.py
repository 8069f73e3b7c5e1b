"""Package layering: the import-linter contracts in pyproject.toml hold, can fail, and agree with runtime imports."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINT = "from importlinter.cli import lint_imports; raise SystemExit(lint_imports(no_cache=True, no_logo=True))"


def lint_imports(project: pathlib.Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter on `project` (its pyproject.toml and packages), in a fresh interpreter."""
    env = {"PYTHONPATH": str(project), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", LINT], cwd=project, env=env, capture_output=True, text=True)


def test_import_contracts_hold() -> None:
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "5 kept, 0 broken" in out.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("precrop/width/plan.py", "import torch", "the width math imports no torch"),
        ("trainers/loop.py", "import mlflow", "precrop and trainers import no ray, mlflow or optuna"),
        ("precrop/nn/build.py", "import trainers.recipe", "search -> trainers -> precrop"),
        ("precrop/width/rounding.py", "import precrop.nn.counting", "inside precrop"),
        ("precrop/nn/build.py", "import precrop.methods.registry", "inside precrop"),
        ("search/spec/config.py", "import search.record.tracking", "inside search"),
        ("search/record/tracking.py", "import search.run.driver", "inside search"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path: pathlib.Path, module: str, bad_import: str,
                                                contract: str) -> None:
    """The contracts are not vacuous: one added import in a copy of the tree breaks the contract it violates."""
    for name in ("precrop", "trainers", "search"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{bad_import}  # noqa\n")
    out = lint_imports(tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    broken = out.stdout.split("Broken contracts", 1)[1]
    assert contract in broken


def modules_under(package: str) -> list[str]:
    """Every module of `package`, found on disk (no hand-kept list to fall out of date)."""
    base = ROOT / package.replace(".", "/")
    return sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in base.rglob("*.py")
    )


def imported_after(modules: list[str], watched: tuple[str, ...]) -> list[str]:
    """Which of `watched` a fresh interpreter holds after importing every one of `modules`."""
    code = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
    code += f"print(*sorted(w for w in {watched!r} if w in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_width_math_pulls_in_no_torch_at_runtime() -> None:
    """A second check by independent means: also catches imports made through third-party packages."""
    assert imported_after(modules_under("precrop.width"), ("torch", "torchvision", "torch_pruning")) == []


def test_precrop_and_trainers_pull_in_no_ray_mlflow_or_optuna_at_runtime() -> None:
    modules = modules_under("precrop") + modules_under("trainers")
    assert imported_after(modules, ("ray", "mlflow", "optuna")) == []


# What the GPU machine lacks (benchmarks/gpu_evidence.sh): a model is built, masked and trained from a saved plan
# without any of them; only allocating (solving a program) needs cvxpy and scipy.
NO_SOLVER = '''
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("cvxpy", "scipy", "ray", "mlflow", "optuna"):
            raise ImportError("refused " + name)
sys.meta_path.insert(0, Refuse())
import torch
from precrop.methods.base import Probe
from precrop.methods.masks import apply_masks
from precrop.methods.registry import realize
from precrop.nn.build import build_from_plan, layer_table
from precrop.width.allocate import AllocationRequest, dense_plan
from precrop.width.plan import read_plan_file
from trainers.loop import Trainer
plan = read_plan_file(sys.argv[1])
model = build_from_plan(plan, seed=0)
print(sum(p.numel() for p in model.parameters()), plan.counted.params)
table = layer_table("cifar_resnet20", 10, 32)
dense = build_from_plan(dense_plan(table), seed=0)
result = realize("random", table, AllocationRequest(params=0.5), Probe(dense, (), 0))
apply_masks(dense, result.masks)
print("masked", round(result.plan.sparse.params / result.plan.base.params, 2))
'''


def test_a_saved_plan_builds_and_masks_without_solver_or_search_stack(tmp_path: pathlib.Path) -> None:
    from precrop.nn.build import layer_table
    from precrop.width.allocate import AllocationRequest, SynExpAllocator

    plan = SynExpAllocator().allocate(layer_table("cifar_resnet20", 10, 32), AllocationRequest(params=0.5))
    (tmp_path / "plan.json").write_text(plan.to_json())
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-c", NO_SOLVER, str(tmp_path / "plan.json")]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    built, counted = out.stdout.split()[:2]
    assert int(built) == int(counted)  # the model has exactly the plan's parameters (BN included)
    assert "masked 0.5" in out.stdout


HEAVY = ("torch", "torchvision", "cvxpy", "scipy", "ray", "mlflow", "optuna")
PARSE = """
import sys
from search.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    print("exit", exc.code, *sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--help"], 0), (["allocate", "--help"], 0), (["train", "--help"], 0), (["search", "--help"], 0),
        (["allocate", "cifar_resnet20", "--macs", "half"], 2), (["train", "--arch", "x", "--epochs", "0"], 2),
        (["study", "speed", "c.yaml"], 2), (["bogus"], 2),
    ],
)
def test_help_and_argument_errors_import_no_torch_solver_ray_or_mlflow(argv: list[str], code: int) -> None:
    """`precrop --help` and a mistyped argument answer at once: the parser imports none of the heavy stacks."""
    out = subprocess.run([sys.executable, "-c", PARSE.format(heavy=HEAVY), *argv], cwd=ROOT, capture_output=True,
                         text=True)  # fmt: skip
    assert out.stderr.strip().splitlines()[-1] == f"exit {code}", out.stderr


REFUSE = """
import sys
from search.cli import main
code = main(sys.argv[1:])
print("exit", code, *sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize("command", [["search"], ["study", "baselines"]])
def test_a_bad_config_is_refused_before_ray_mlflow_or_tune_are_imported(
    command: list[str], tmp_path: pathlib.Path
) -> None:
    """The config is read and checked first: a key that does not exist is refused at once (it took 8.6 s when
    the driver, with Ray, Tune and MLflow, was imported before the config was read)."""
    config = tmp_path / "c.yaml"
    config.write_text("name: x\nextra: 1\n")
    out = subprocess.run([sys.executable, "-c", REFUSE.format(heavy=HEAVY), *command, str(config)], cwd=ROOT,
                         capture_output=True, text=True)  # fmt: skip
    lines = out.stderr.strip().splitlines()
    assert lines[0].startswith("precrop: error: unknown key 'extra'"), out.stderr
    assert lines[-1] == "exit 2", out.stderr


NOT_IMPORTED = """
import sys
import search.run.driver, search.run.trial
print(*sorted(m for m in ("timm", "torchvision", "torch._dynamo") if m in sys.modules))
import timm  # still importable afterwards, for timm: model sources
print(timm.__name__)
"""


def test_a_search_imports_neither_timm_nor_torchvision_until_a_model_needs_them() -> None:
    """torch-pruning's import of timm (precrop/nn/pruning_lib.py) and the zoo's torchvision builders cost about
    3 CPU-seconds in every driver and trial process; a search of a CIFAR ResNet needs neither."""
    out = subprocess.run([sys.executable, "-c", NOT_IMPORTED], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["", "timm"], out.stdout
