"""The catalogue of inputs a user can get wrong, across every command and the config.

Each case must end in exactly one line on stderr that names the problem, exit code 2, no traceback,
and leave nothing half-written: no new files in the working directory (a tracking database that a
case needs may exist, but holds no run left RUNNING) and no Tune directory.
Most cases call the `precrop` entry point in this process (fast); the ones that depend on the real
process (a Ray cluster to join, MLflow's HTTP retries) run it as a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from search.cli import main
from tests.search.conftest import TINY_CONFIG, search_env

Setup = Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    """One bad input: the command line, what the error line must say, and the files it needs first."""

    name: str
    argv: tuple[str, ...]
    says: tuple[str, ...]
    setup: Setup | None = None
    subprocess: bool = False
    env: dict[str, str] = field(default_factory=dict)
    untouched: bool = False  # refused before MLflow is touched: not even mlflow.db may appear


def _config(**sections: object) -> Setup:
    """Write config.yaml: the tiny search config with some sections replaced or extended."""

    def write(folder: Path) -> None:
        config = json.loads(json.dumps(TINY_CONFIG))
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key].update(value)
            else:
                config[key] = value
        (folder / "config.yaml").write_text(yaml.safe_dump(config))

    return write


def _files(**contents: str) -> Setup:
    def write(folder: Path) -> None:
        for name, text in contents.items():
            (folder / name).write_text(text)

    return write


def _bytes(name: str, data: bytes) -> Setup:
    def write(folder: Path) -> None:
        (folder / name).write_bytes(data)

    return write


# a "billion laughs" config: 9 levels of 10 aliases each, 10**9 values once expanded
LAUGHS = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10) if i else ', '.join(['lol'] * 10)}]\n"
                 for i in range(9)) + "model: *l8\n"  # fmt: skip


def _image_folder(classes: int) -> Setup:
    """An ImageFolder data set with `classes` classes of three 8x8 images, plus the tiny config."""

    def write(folder: Path) -> None:
        from PIL import Image

        for split in ("train", "test"):
            for c in range(classes):
                sub = folder / "images" / split / f"class{c}"
                sub.mkdir(parents=True)
                for i in range(3):
                    Image.new("RGB", (8, 8), (40 * i, 20 * c, 0)).save(sub / f"{i}.png")
        _config(data={"name": "imagefolder", "data_dir": "images"})(folder)

    return write


def _plan(edit: Callable[[dict[str, object]], None], input_size: int = 8, classes: int = 10) -> Setup:
    """plan.json: a real ResNet-20 plan for digits-sized inputs, then edited."""

    def write(folder: Path) -> None:
        from precrop.nn.build import layer_table
        from precrop.width.allocate import AllocationRequest, SynExpAllocator

        table = layer_table("cifar_resnet20", classes, input_size)
        plan = SynExpAllocator().allocate(table, AllocationRequest(macs=0.5))
        data = json.loads(plan.to_json())
        edit(data)
        (folder / "plan.json").write_text(json.dumps(data))

    return write


def _run_without_weights(folder: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.create_experiment("runs")
    run = client.create_run(experiment, run_name="no-weights")
    client.set_terminated(run.info.run_id, "FAILED")
    (folder / "run_id.txt").write_text(run.info.run_id)


def _empty_tracking_store(folder: Path) -> None:
    from mlflow import MlflowClient

    MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SEARCH = ("search", "config.yaml")
TRAIN = ("train", "--dataset", "digits", "--epochs", "1", "--arch")

# the user's own models, one module per case (a module stays imported in this process)
# fmt: off
MODELS = {
    "src_returns_int.py": "def net(num_classes=10):\n    return 42\n",
    "src_raises.py": "def net(num_classes=10):\n    raise ValueError('no such width\\nsecond line')\n",
    "src_fixed_head.py": "from torch import nn\n\ndef net():\n    return nn.Sequential(nn.Conv2d(3, 8, 3), "
                         "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 7))\n",
    "src_bad_forward.py": "from torch import nn\n\nclass Net(nn.Module):\n    def __init__(self, num_classes=10):\n"
                          "        super().__init__()\n        self.conv = nn.Conv2d(3, 4, 1)\n\n"
                          "    def forward(self, x):\n        raise RuntimeError('my forward\\nfails')\n",
    "src_no_attribute.py": "def other(num_classes=10):\n    return None\n",
    "src_cfg_returns_str.py": "def net(num_classes=10):\n    return 'a model'\n",
    "src_cfg_fixed.py": "from torch import nn\n\ndef net():\n    return nn.Sequential(nn.Conv2d(3, 8, 3), "
                        "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))\n",
    "src_exits.py": "import sys\n\ndef net(num_classes=10):\n    sys.exit(0)\n",
    "src_exits_on_import.py": "import sys\nsys.exit(3)\n",
    "src_forward_exits.py": "import sys\nfrom torch import nn\n\nclass Net(nn.Module):\n"
                            "    def __init__(self, num_classes=10):\n        super().__init__()\n"
                            "        self.conv = nn.Conv2d(3, 4, 1)\n\n"
                            "    def forward(self, x):\n        sys.exit(0)\n",
}
# fmt: on


def _model(name: str, **config: object) -> Setup:
    """One of MODELS in the working directory (and the tiny config, with `config` sections, if given)."""

    def write(folder: Path) -> None:
        (folder / name).write_text(MODELS[name])
        if config:
            _config(**config)(folder)

    return write


def _without_timm(folder: Path) -> None:
    """shim/timm.py, which fails to import as a missing package does (with PYTHONPATH=shim)."""
    (folder / "shim").mkdir()
    (folder / "shim" / "timm.py").write_text('raise ModuleNotFoundError("No module named \'timm\'", name="timm")\n')


# fmt: off
MODEL_SOURCE_CASES = [
    Case("unimportable model module", ("info", "no_such_models:net"),
         ("model source 'no_such_models:net': cannot import module 'no_such_models'",)),
    Case("model module without the callable", ("allocate", "src_no_attribute:net", "--macs", "0.5"),
         ("'src_no_attribute' has no attribute 'net'",), _model("src_no_attribute.py")),
    Case("model callable that returns no module", ("allocate", "src_returns_int:net", "--macs", "0.5", "-o", "p.json"),
         ("model source 'src_returns_int:net' returned int, not a torch nn.Module",), _model("src_returns_int.py")),
    Case("model callable that raises", (*TRAIN, "src_raises:net"),
         ("model source 'src_raises:net' raised ValueError: no such width",), _model("src_raises.py")),
    Case("fixed-head model for other classes", (*TRAIN, "src_fixed_head:net"),
         ("takes no num_classes argument and builds 7 classes, but 10 were asked for",), _model("src_fixed_head.py")),
    Case("model whose forward fails", ("info", "src_bad_forward:Net", "--input-size", "16"),
         ("cannot trace 'src_bad_forward:Net': RuntimeError: my forward",), _model("src_bad_forward.py")),
    Case("untraceable timm model", ("allocate", "timm:rexnet_100", "--macs", "0.5", "--input-size", "32"),
         ("slices part of a tensor's channels",)),
    Case("untraceable model in train", (*TRAIN, "timm:ghostnet_050"),
         ("cost model of timm:ghostnet_050 is not exact",)),
    Case("unknown timm model", ("info", "timm:resnet_nope"), ("unknown timm model 'resnet_nope'",)),
    Case("timm not installed", ("info", "timm:resnet18"),
         ("'timm:resnet18' needs timm, which cannot be imported", "pip install 'precrop-search[timm]'"),
         _without_timm, subprocess=True, env={"PYTHONPATH": "shim"}),
    Case("unimportable model module in a config", SEARCH,
         ("model.arch: model source 'no_such_models:net': cannot import module",),
         _config(model={"arch": "no_such_models:net"}), untouched=True),
    Case("unknown timm model in a config", SEARCH, ("model.arch: unknown timm model 'resnet_nope'",),
         _config(model={"arch": "timm:resnet_nope"}), untouched=True),
    Case("model callable that returns no module, in a config", SEARCH,
         ("model source 'src_cfg_returns_str:net' returned str",),
         _model("src_cfg_returns_str.py", model={"arch": "src_cfg_returns_str:net"}), untouched=True),
    Case("fixed-head model in a config", SEARCH, ("builds 3 classes, but 10 were asked for",),
         _model("src_cfg_fixed.py", model={"arch": "src_cfg_fixed:net"}), untouched=True),
    Case("untraceable model in a config", SEARCH, ("slices part of a tensor's channels",),
         _config(model={"arch": "timm:rexnet_100"}), untouched=True),
    Case("onnxruntime latency on the trial's device", SEARCH,
         ("objectives.latency_device: must be cpu with latency_runtime onnxruntime",),
         _config(objectives={"latency_runtime": "onnxruntime", "latency_device": "trial"}), untouched=True),
    Case("unknown latency runtime", SEARCH, ("objectives.latency_runtime",),
         _config(objectives={"latency_runtime": "tensorrt"}), untouched=True),
    Case("negative hard limit", SEARCH, ("constraints.params: must be a positive number, got -1",),
         _config(constraints={"params": -1}), untouched=True),
    Case("unknown hard limit", SEARCH, ("constraints.accuracy",), _config(constraints={"accuracy": 0.9}),
         untouched=True),
    # pretrained starts (trainers/start.py)
    Case("pretrained start of the dense model", (*TRAIN, "cifar_resnet20", "--init", "pretrained"),
         ("--init pretrained starts a --plan from its dense model's weights",)),
    Case("pretrained start of a built-in model in a config", SEARCH,
         ("model.init: a pretrained start needs trained weights, and cifar_resnet20 is built with random ones",),
         _config(model={"arch": "cifar_resnet20", "init": "pretrained"}), untouched=True),
    Case("unknown init in a config", SEARCH, ("model.init: unknown init 'imagenet'",),
         _config(model={"init": "imagenet"}), untouched=True),
    # layers kept at base width (precrop/width/keep.py)
    Case("keep pattern that matches no layer", ("allocate", "cifar_resnet20", "--macs", "0.5", "--keep", "fc.*"),
         ("keep pattern 'fc.*' matches no layer of cifar_resnet20",)),
    Case("budget the kept layers leave no room for",
         ("allocate", "cifar_resnet20", "--macs", "0.3", "--keep", "layer*"),
         ("macs budget 0.3 is below what the minimum widths allow", "with the kept layers (layer*) at base width")),
    Case("keep pattern that matches no layer, in a config", SEARCH,
         ("model.keep: keep pattern 'head.*' matches no layer of cifar_resnet20",),
         _config(model={"arch": "cifar_resnet20", "keep": ["conv1", "head.*"]}), untouched=True),
    Case("keep with a mask method, in a config", SEARCH,
         ("model.keep: keeps widths at base, which mask methods (snip) never change",),
         _config(model={"arch": "cifar_resnet20", "keep": ["conv1"]}, space={"allocators": ["synexp", "snip"]}),
         untouched=True),
    Case("keep that is not a list, in a config", SEARCH, ("model.keep",),
         _config(model={"arch": "cifar_resnet20", "keep": 3}), untouched=True),
    # the user's code ends the process: reported as the user's code, never a silent exit 0
    Case("model callable that calls sys.exit", ("info", "src_exits:net"),
         ("model source 'src_exits:net' called sys.exit(0) instead of returning a model",), _model("src_exits.py")),
    Case("model module that exits when imported", ("allocate", "src_exits_on_import:net", "--macs", "0.5"),
         ("importing 'src_exits_on_import' called sys.exit(3)",), _model("src_exits_on_import.py")),
    Case("model whose forward calls sys.exit", ("info", "src_forward_exits:Net", "--input-size", "16"),
         ("cannot trace 'src_forward_exits:Net': SystemExit: 0",), _model("src_forward_exits.py")),
]
# fmt: on
# fmt: off
CASES = [
    Case("budget 0", ("allocate", "cifar_resnet20", "--macs", "0"), ("macs budget must be a positive number",)),
    Case("budget -1", ("allocate", "cifar_resnet20", "--macs", "-1"), ("macs budget must be a positive number",)),
    Case("budget 1.5 with PreCrop", ("allocate", "cifar_resnet20", "--macs", "1.5"), ("exceeds the expand bound",)),
    Case("budget nan", ("allocate", "cifar_resnet20", "--params", "nan"), ("params budget", "got nan")),
    Case("budget below the minimum widths", ("allocate", "cifar_resnet20", "--macs", "0.001"),
         ("below what the minimum widths allow",)),
    Case("unknown arch", ("info", "resnet999"), ("unknown architecture 'resnet999'",)),
    Case("data-driven method without data", ("allocate", "cifar_resnet20", "--macs", "0.5", "--allocator", "snip"),
         ("snip scores the model on training batches: give --dataset",)),
    Case("mask method with PreConfig expand", ("allocate", "cifar_resnet20", "--macs", "0.5", "--allocator", "erk",
         "--expand", "2", "-o", "plan.json"), ("mask methods only prune: expand (PreConfig) must be 1",)),
    Case("budget a mask method cannot meet", ("allocate", "cifar_resnet20", "--macs", "1e-5", "--allocator",
         "random", "-o", "plan.json"), ("macs budget 1e-05 leaves no weight in some layer",)),
    Case("budget PFS cannot meet", ("allocate", "cifar_resnet20", "--macs", "0.001", "--allocator", "pfs",
         "--dataset", "digits", "-o", "plan.json"), ("below what the minimum widths allow",)),
    Case("unknown allocator", ("allocate", "cifar_resnet20", "--macs", "0.5", "--allocator", "magic"),
         ("invalid choice: 'magic'",)),
    Case("classes that contradict the data set", ("allocate", "cifar_resnet20", "--macs", "0.5", "--allocator",
         "snip", "--dataset", "digits", "--num-classes", "100"), ("--num-classes 100 does not match digits (10)",)),
    Case("unknown variant", ("allocate", "cifar_resnet20", "--macs", "0.5", "--variant", "fancy"),
         ("argument --variant: unknown variant 'fancy'; choose one of fit, gp, internal",)),
    Case("unknown density solver", ("allocate", "cifar_resnet20", "--macs", "0.5", "--solver", "magic"),
         ("argument --solver: unknown density solver 'magic'; choose one of closed_form, cvxpy",)),
    Case("info without an architecture", ("info",), ("info needs an architecture", "precrop info --list")),
    *MODEL_SOURCE_CASES,
    Case("budget the internal mapping cannot reach", ("allocate", "cifar_resnet20", "--macs", "0.3", "--variant",
         "internal"), ("below what the minimum widths of the 'internal' mapping", "0.3055 of base")),
    Case("unknown allocator in a config", SEARCH, ("space.allocators[0]: unknown value 'magic'",),
         _config(space={"allocators": ["magic"]})),
    Case("unknown dataset", SEARCH, ("data.name: unknown value 'mnist'",), _config(data={"name": "mnist"})),
    Case("unknown early-stopping mode", SEARCH, ("asha.mode: unknown value 'hyperband'", "pareto, accuracy"),
         _config(asha={"mode": "hyperband"})),
    Case("grace period beyond the epochs", SEARCH, ("asha.grace_period: must be below space.epochs (2)",),
         _config(asha={"grace_period": 5})),
    Case("reduction factor below 2", SEARCH, ("asha.reduction_factor: must be 2 or more",),
         _config(asha={"reduction_factor": 1.5})),
    Case("config budget 0", SEARCH, ("space.budget: macs budget must be a positive number, got 0.0",),
         _config(space={"budget": [0, 0.5]})),
    Case("config budget above 1 with PreCrop", SEARCH,
         ("space.budget: macs budget 1.5 exceeds the expand bound 1; PreCrop budgets are fractions in (0, 1]",),
         _config(space={"budget": [0.5, 1.5]})),
    Case("unknown variant in a config", SEARCH,
         ("space.variant: unknown variant 'fancy'; choose one of fit, gp, internal",),
         _config(space={"variant": "fancy"})),
    Case("learning rate 0 in a config", SEARCH, ("space.lr: lr must be a finite number in (0.0, inf], got 0.0",),
         _config(space={"lr": [0, 0.1]})),
    Case("config budget below the minimum widths", SEARCH,
         ("space.budget: synexp cannot allocate at 0.001", "minimum widths"),
         _config(space={"budget": [0.001, 0.002]})),
    Case("missing data directory", SEARCH, ("data directory", "does not exist"),
         _config(data={"name": "imagefolder", "data_dir": "nowhere"})),
    Case("empty data directory", SEARCH, ("has no train/ folder",),
         lambda f: ((f / "empty").mkdir(), _config(data={"name": "imagefolder", "data_dir": "empty"})(f))),
    Case("image folder with one class", SEARCH, ("only class folder 'class0'", "at least 2 classes"),
         _image_folder(1)),
    Case("config with an unknown key", SEARCH, ("unknown key 'space.widths'",), _config(space={"widths": 3})),
    Case("config value of the wrong type", SEARCH, ("search.trials must be an integer, got 'many'",),
         _config(search={"trials": "many"})),
    Case("override without a value", (*SEARCH, "--set", "search.trials"), ("--set expects key.path=value",),
         _config()),
    Case("config that is not YAML", SEARCH, ("is not valid YAML",), _files(**{"config.yaml": "space: [1,\n"})),
    Case("missing config file", ("search", "absent.yaml"), ("cannot read config absent.yaml",)),
    Case("plan of another arch", ("train", "--plan", "plan.json", "--dataset", "digits", "--epochs", "1"),
         ("plan does not match cifar_resnet56",), _plan(lambda p: p.update(arch="cifar_resnet56"))),
    Case("plan of another schema version", ("train", "--plan", "plan.json", "--dataset", "digits"),
         ("plan schema version 99 is not supported",), _plan(lambda p: p.update(schema_version=99))),
    Case("plan for other inputs", ("train", "--plan", "plan.json", "--dataset", "digits"),
         ("is for 3x32x32 inputs",), _plan(lambda p: None, input_size=32)),
    Case("plan with absurd widths", ("train", "--plan", "plan.json", "--dataset", "digits"),
         ("plan width of conv1 is 100000, more than 16x its base width 16",),
         _plan(lambda p: p["widths"].update(conv1=100000))),  # type: ignore[attr-defined]
    Case("plan that is not JSON", ("train", "--plan", "plan.json", "--dataset", "digits"),
         ("plan is not valid JSON",), _files(**{"plan.json": '{"schema_version": 2,'})),
    Case("output into a file, not a directory", ("allocate", "cifar_resnet20", "--macs", "0.5", "-o", "afile/p.json"),
         ("cannot write afile/p.json",), _files(afile="x")),
    Case("study output directory not writable", ("study", "baselines", "config.yaml", "--out", "afile/study"),
         ("--out afile/study", "is a file, not a directory"),
         lambda f: (_files(afile="x")(f), _config()(f))),
    Case("GPU fraction above 1", SEARCH, ("resources.gpu: must be a GPU fraction in [0, 1]",),
         _config(resources={"gpu": 1.5})),
    Case("study with no seeds", ("study", "granularity", "config.yaml", "--seeds", "0"),
         ("--seeds must be from 1 to 100, got 0",), _config()),
    Case("study with a billion seeds", ("study", "granularity", "config.yaml", "--seeds", "1000000000"),
         ("--seeds must be from 1 to 100",), _config()),
    Case("ray address with nothing listening", (*SEARCH, "--address", f"127.0.0.1:{_free_port()}"),
         ("nothing answers there",), _config(), untouched=True),
    Case("export of a run that has no weights", ("export", "RUN_ID", "--format", "onnx"),
         ("has no final weights",), _run_without_weights),
    Case("export of an unknown run", ("export", "0123456789abcdef", "--format", "onnx"),
         ("no MLflow run '0123456789abcdef'",), _empty_tracking_store),
    Case("export without a tracking store", ("export", "0123456789abcdef", "--format", "onnx"),
         ("no MLflow tracking store at", "nothing was created"), untouched=True),
    Case("bad tracking URI in the environment", ("pareto", "--experiment", "x"),
         ("MLFLOW_TRACKING_URI: must be sqlite:///FILE",), env={"MLFLOW_TRACKING_URI": "ftp://somewhere"}),
    Case("YAML alias bomb", SEARCH, ("holds more than 10000 values once its YAML aliases are expanded",),
         _files(**{"config.yaml": LAUGHS}), untouched=True),
    Case("YAML alias bomb in --set", (*SEARCH, "--set", "model=" + "[" + LAUGHS.replace("\n", ",")[:-1] + "]"),
         ("--set model: the value holds more than 10000 values",), _config(), untouched=True),
    Case("config nested too deep", SEARCH, ("nests deeper than 50 levels",),
         _files(**{"config.yaml": "model: " + "[" * 5000 + "]" * 5000}), untouched=True),
    Case("config that is not UTF-8", SEARCH, ("config.yaml is not UTF-8 text (byte 0xff at offset 6)",),
         _bytes("config.yaml", b"name: \xff\xfe tiny\n"), untouched=True),
    Case("/dev/zero as the config", ("search", "/dev/zero"), ("config /dev/zero is larger than 1 MiB",),
         untouched=True),
    Case("NUL in the name", SEARCH, ("name: must be 1 to 100 letters", "got 'a\\x00b'"), _config(name="a\0b"),
         untouched=True),
    Case("quote in the name", SEARCH, ("name: must be 1 to 100 letters",), _config(name="it's"), untouched=True),
    Case("300-character name", SEARCH, ("name: must be", "... (302 characters)"), _config(name="n" * 300),
         untouched=True),
    Case("long value echoed in an error", SEARCH, ("model.arch: unknown value 'aaa", "... (3002 characters)"),
         _config(model={"arch": "a" * 3000}), untouched=True),
    Case("negative seed", SEARCH, ("search.seed: must be in 0..4294967295, got -1",), _config(search={"seed": -1}),
         untouched=True),
    Case("optuna storage with a password", SEARCH, ("search.optuna_storage: must not hold a password",),
         _config(search={"optuna_storage": "postgresql://u:pw@h/optuna"}), untouched=True),
    Case("tiny CPU fraction per trial", SEARCH, ("resources.cpu: must be 0.1 to 1024 CPUs a trial, got 0.001",),
         _config(resources={"cpu": 0.001}), untouched=True),
    Case("expand far beyond 16", (*SEARCH, "--set", "space.expand=1.0e9"),
         ("space.expand: expand must be in [1, 16], got 1e+09",), _config(), untouched=True),
    Case("unreachable tracking URI", SEARCH, ("cannot reach MLflow tracking at http://127.0.0.1:",),
         _config(mlflow={"tracking_uri": f"http://127.0.0.1:{_free_port()}"}), subprocess=True),
    # sizes this machine cannot hold (a 10**12-class head: 256 TB of weights, refused by any allocator)
    Case("classes beyond any memory", ("info", "cifar_resnet20", "--num-classes", "1000000000000"),
         ("not enough memory for what was asked", "fewer classes")),
    # malformed values
    Case("malformed CUDA device", (*TRAIN, "cifar_resnet20", "--device", "cuda:abc"),
         ("device must be auto, cpu or cuda[:N], got 'cuda:abc'",)),
    Case("plan JSON nested beyond recursion", ("train", "--plan", "plan.json", "--dataset", "digits"),
         ("plan JSON nests deeper than a plan ever does",),
         _files(**{"plan.json": '{"widths": ' + "[" * 100_000 + "]" * 100_000 + "}"})),
    # accepted before, now refused: an empty config, a training subset without one image per class
    Case("empty config file", SEARCH, ("config config.yaml is empty", "configs/quickstart.yaml"),
         _files(**{"config.yaml": ""}), untouched=True),
    Case("config of comments only", SEARCH, ("config config.yaml is empty",),
         _files(**{"config.yaml": "# name: tiny\n"}), untouched=True),
    Case("training subset below the number of classes", SEARCH,
         ("data.train_subset: train_subset 5 is smaller than the 10 classes of digits",),
         _config(data={"train_subset": 5}), untouched=True),
    # tracking and storage locations that cannot be used: refused before anything is written
    Case("SQLite store under a file", SEARCH, ("cannot open the MLflow tracking store at sqlite:///", "afile"),
         lambda f: (_files(afile="x")(f), _config(mlflow={"tracking_uri": "sqlite:///afile/mlflow.db"})(f)),
         untouched=True),
    Case("file: tracking URI", SEARCH, ("mlflow.tracking_uri: MLflow 3 no longer writes its file store",),
         _config(mlflow={"tracking_uri": "file:./mlruns"}), untouched=True),
    Case("file: tracking URI in the environment", ("pareto", "--experiment", "x"),
         ("MLFLOW_TRACKING_URI: MLflow 3 no longer writes its file store",), env={"MLFLOW_TRACKING_URI": "file:./m"},
         untouched=True),
    Case("storage path under a file", SEARCH, ("ray.storage_path: Tune cannot keep the search in afile/ray_results",
         "is not a folder"), lambda f: (_files(afile="x")(f), _config(ray={"storage_path": "afile/ray_results"})(f)),
         untouched=True),
    # refused before MLflow is touched: no empty mlflow.db left behind
    Case("trial larger than the machine", SEARCH, ("resources.cpu: each trial asks for 1000.0 CPUs, this machine has",),
         _config(resources={"cpu": 1000}), untouched=True),
]
# fmt: on


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _running_runs(database: Path) -> int:
    if not database.exists():
        return 0
    with sqlite3.connect(database) as db:
        return int(db.execute("SELECT COUNT(*) FROM runs WHERE status IN ('RUNNING', 'SCHEDULED')").fetchone()[0])


def _run_in_process(argv: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    return code, capfd.readouterr().err


def _run_subprocess(argv: list[str], folder: Path, env: dict[str, str]) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "search.cli", *argv], cwd=folder, env={**search_env(), **env}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    return result.returncode, result.stderr


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty working directory, with the tracking/storage environment of this machine cleared."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    # a model source imports the user's module from here: no __pycache__ left behind, sys.path restored
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("MLFLOW_TRACKING_URI", "PRECROP_STORAGE_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    yield folder


def test_the_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 55
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_fails_in_one_line(
    case: Case, workdir: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if case.setup is not None:
        case.setup(workdir)
    argv = [a.replace("RUN_ID", (workdir / "run_id.txt").read_text()) if a == "RUN_ID" else a for a in case.argv]
    before = _snapshot(workdir)
    capfd.readouterr()
    if case.subprocess:
        code, err = _run_subprocess(argv, workdir, case.env)
    else:
        for name, value in case.env.items():
            monkeypatch.setenv(name, value)
        code, err = _run_in_process(argv, capfd)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("precrop: error: ") or lines[0].startswith("precrop "), lines[0]
    for words in case.says:
        assert words in lines[0], lines[0]
    created = _snapshot(workdir) - before
    assert created <= {"mlflow.db"}, f"left behind: {sorted(created)}"
    assert _running_runs(workdir / "mlflow.db") == 0
    assert len(lines[0]) < 1000, f"error line of {len(lines[0])} characters"
    if case.untouched:
        assert not created and not (workdir / "mlflow.db").exists() and not (workdir / "ray_results").exists()


@pytest.mark.ray
def test_gpus_asked_of_a_cluster_without_any(tmp_path: Path) -> None:
    """A joined cluster that shows no GPU within ray.gpu_wait_s: one line, exit 2, no MLflow run opened."""
    from tests.cluster.conftest import LocalCluster

    _config(resources={"gpu": 1}, ray={"gpu_wait_s": 2})(tmp_path)
    cluster = LocalCluster({"cpu": {"num_cpus": 1}}, private=True)
    try:
        env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        code, err = _run_subprocess([*SEARCH, "--address", cluster.address], tmp_path, env)
    finally:
        cluster.stop()
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last == (
        "precrop: error: resources.gpu: the Ray cluster has no GPU after 2 s (set resources.gpu: 0 to train on "
        "CPUs, add GPU workers, or raise ray.gpu_wait_s)"
    )
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
    assert not (tmp_path / "ray_results").exists()


def _obeying_permissions() -> list[str]:
    """A command prefix under which the command obeys file permission bits: none for a normal user; for root
    (how CI runs), setpriv dropping CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, the capabilities that let root
    write anywhere. Skips where root has no setpriv."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and util-linux's setpriv is missing: root would write into a 0500 folder")
    drop = "-dac_override,-dac_read_search"
    prefix = [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}", "--"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:  # a container without CAP_SETPCAP cannot drop from its bounding set
        pytest.skip(f"running as root and setpriv cannot drop capabilities here: {probe.stderr.strip()[:120]}")
    return prefix


def test_output_directory_without_write_permission(workdir: Path) -> None:
    locked = workdir / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    command = [*_obeying_permissions(), sys.executable, "-m", "precrop.cli", "allocate", "cifar_resnet20", "--macs",
               "0.5", "-o", "locked/p.json"]  # fmt: skip
    try:
        done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300)
    finally:
        locked.chmod(0o700)
    code, err = done.returncode, done.stderr
    assert code == 2, err
    assert err.strip().startswith("precrop: error: cannot write locked/p.json"), err
    assert list(locked.iterdir()) == []


# --- the same categories as properties: whatever the value, one error of the owner's type or a valid result ---

DEVICE_TEXT = st.one_of(
    st.text(max_size=12),
    st.builds(
        lambda kind, index: f"{kind}:{index}",
        st.sampled_from(["cuda", "cpu", "mps", "cuda "]),
        st.text(alphabet="0123456789abc-+ ", max_size=5),
    ),
)


@settings(max_examples=300, deadline=None)
@given(DEVICE_TEXT)
@example("cuda:00")  # found by this test once (2026-12-07): torch refuses a leading zero
def test_a_device_is_accepted_only_when_torch_reads_it_as_the_cpu_or_a_cuda_device(text: str) -> None:
    import torch

    from trainers.recipe import RecipeError, TrainConfig

    try:
        TrainConfig(device=text).validate()
    except RecipeError as exc:
        assert exc.field == "device" and len(str(exc).splitlines()) == 1
        return
    assert text == "auto" or torch.device(text).type in ("cpu", "cuda")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(JSON_VALUES.map(json.dumps), st.integers(1, 200_000).map(lambda n: "[" * n + "]" * n),
                 st.text(max_size=40)))  # fmt: skip
def test_any_plan_text_is_a_plan_or_one_plan_error(text: str) -> None:
    from precrop.width.plan import PlanError, WidthPlan

    try:
        WidthPlan.from_json(text)
    except PlanError as exc:
        assert len(str(exc).splitlines()) == 1, str(exc)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=10_000), st.integers(min_value=1, max_value=10_000))
def test_a_training_subset_is_refused_exactly_when_it_lacks_one_image_per_class(subset: int, classes: int) -> None:
    from trainers.datasets import DataError, DataRequest

    request = DataRequest("digits", train_subset=subset)
    if subset >= classes:
        request.check_subset(classes)
        return
    with pytest.raises(DataError, match=f"^train_subset {subset} is smaller than the {classes} classes of digits"):
        request.check_subset(classes)
