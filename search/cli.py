"""The `precrop` console script: every command of every layer, assembled at the top layer.

Commands are imported lazily by handler so `precrop info` never pays for the training or search stack.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from precrop.cli import (
    OneLineErrorParser,
    add_info_command,
    new_parser,
    run_precrop_command,
    run_reporting_user_errors,
)
from trainers.allocate_cli import add_allocate_command
from trainers.cli import add_train_command


def add_search_commands(commands: argparse._SubParsersAction[OneLineErrorParser]) -> None:
    """Register `search`, `study`, `reconcile`, `pareto` and `export`."""
    search = commands.add_parser("search", help="run a Ray Tune + Optuna search described by a YAML config")
    search.add_argument("config", help="experiment config (YAML), e.g. configs/quickstart.yaml")
    search.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override one config value, e.g. --set search.trials=16 (repeatable)")  # fmt: skip
    search.add_argument("--resume", action="store_true", help="continue the latest search of this config")
    search.add_argument("--address", help="Ray cluster: auto or HOST:PORT (default: the cluster `ray start` began "
                        "on this machine, else an embedded one)")  # fmt: skip

    study = commands.add_parser("study", help="train a fixed grid: granularity, mapping or baselines")
    study.add_argument("kind", choices=("granularity", "mapping", "baselines"),
                       help="granularity: SynExp densities as weight, filter and channel pruning; "
                       "mapping: the fit, gp and internal channel-mapping variants; "
                       "baselines: every allocator of space.allocators")  # fmt: skip
    study.add_argument("config", help="experiment config (YAML): model, data, recipe ranges, resources")
    study.add_argument("--budgets", type=_budgets, default=(0.5,), metavar="B[,B...]",
                       help="budgets (fractions of space.budget_metric) to study, default 0.5")  # fmt: skip
    study.add_argument("--seeds", type=int, default=2, help="seeds per cell (default 2)")
    study.add_argument("--out", help="also write study.csv, paired.csv, study.md and study.png to this folder")
    study.add_argument("--report", action="store_true",
                       help="train nothing: remake the tables of the latest finished study of this config "
                       "and kind from MLflow (print, log to its parent run, write --out); ignores --budgets "
                       "and --seeds")  # fmt: skip
    study.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override one config value (repeatable)")  # fmt: skip
    study.add_argument("--address", help="Ray cluster, as for `precrop search`")

    reconcile = commands.add_parser(
        "reconcile", help="re-log a search's results from its Tune directory (after MLflow went away)"
    )
    reconcile.add_argument("search_dir", help="the search's Tune directory (printed when MLflow went away)")
    reconcile.add_argument("--tracking-uri", default=None,
                           help="default: $MLFLOW_TRACKING_URI, else the URI the search used")  # fmt: skip

    pareto = commands.add_parser("pareto", help="recompute a search's Pareto front from MLflow")
    pareto.add_argument("--experiment", required=True, help="MLflow experiment name")
    pareto.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    pareto.add_argument("--cost", default="macs", choices=("macs", "params", "latency_ms"))
    pareto.add_argument("--search", help="only this search (its name, e.g. quickstart-20261121-101500)")
    pareto.add_argument("--json", action="store_true", help="print the front as JSON")

    export = commands.add_parser("export", help="export a run's model to ONNX or TorchScript")
    export.add_argument("run_id", help="MLflow run id of a trial that trained to the end")
    export.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    export.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    export.add_argument("-o", "--output", help="file to write (default: RUNID-ARCH.onnx|.pt)")
    export.add_argument("--register", metavar="NAME", help="also register it in the MLflow Model Registry")
    export.add_argument("--alias", default="candidate", help="alias for the registered version")


def _budgets(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one budget")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The full `precrop` argument parser."""
    parser, commands = new_parser()
    add_info_command(commands)
    add_allocate_command(commands)
    add_train_command(commands)
    add_search_commands(commands)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "allocate":
        from trainers.allocate_cli import run_allocate

        return run_allocate(args)
    if args.command == "train":
        from trainers.cli import run_train

        return run_train(args)
    if args.command == "search":
        from search.config import load_config
        from search.driver import run_search

        overrides = list(args.overrides) + ([f"ray.address={args.address}"] if args.address else [])
        return run_search(load_config(args.config, overrides), resume=args.resume)
    if args.command == "study":
        from search.config import load_config
        from search.driver import run_search
        from search.study import make_study

        overrides = list(args.overrides) + ([f"ray.address={args.address}"] if args.address else [])
        config = load_config(args.config, overrides)
        if args.report:
            from search.study_report import run_study_report

            return run_study_report(config, args.kind, args.out)
        study = make_study(args.kind, args.budgets, args.seeds, args.out, config.space.allocators)
        return run_search(config, study=study)
    if args.command == "reconcile":
        from search.reconcile import one_line_errors
        from search.summary import run_reconcile

        with one_line_errors(args.search_dir):
            return run_reconcile(args)
    if args.command == "pareto":
        from search.summary import run_pareto

        return run_pareto(args)
    if args.command == "export":
        from search.export import run_export

        return run_export(args)
    return run_precrop_command(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `precrop` console script."""
    return run_reporting_user_errors(_dispatch, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
