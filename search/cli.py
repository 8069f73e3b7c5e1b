"""The `precrop` console script: every command of every layer, assembled at the top layer.

Every command handler lives here (the `_run_*` functions): each takes the parsed arguments and imports
what its command needs, so `precrop info` never pays for the training or search stack.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from precrop.cli import (
    add_info_command,
    new_parser,
    run_precrop_command,
    run_reporting_user_errors,
)
from precrop.cli_args import OneLineErrorParser
from precrop.errors import UserError
from precrop.proxy_cli import add_synexp_command
from search.spec.schema import COST_METRICS
from trainers.allocate_cli import add_allocate_command
from trainers.train_args import add_train_command

if TYPE_CHECKING:
    from search.spec.config import ExperimentConfig


def add_search_commands(commands: argparse._SubParsersAction[OneLineErrorParser]) -> None:
    """Register `search`, `study`, `reconcile`, `pareto`, `export` and `doctor`."""
    _add_search_command(commands)
    _add_study_command(commands)
    _add_reconcile_command(commands)
    _add_pareto_command(commands)
    _add_export_command(commands)
    _add_doctor_command(commands)


def _add_search_command(commands: argparse._SubParsersAction[OneLineErrorParser]) -> None:
    """`precrop search CONFIG`: run (or --resume) a search."""
    search = commands.add_parser("search", help="run a Ray Tune + Optuna search described by a YAML config")
    search.add_argument("config", help="experiment config (YAML), e.g. configs/quickstart.yaml")
    search.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override one config value, e.g. --set search.trials=16 (repeatable)")  # fmt: skip
    search.add_argument("--resume", action="store_true", help="continue the latest search of this config")
    search.add_argument("--address", help="Ray cluster: auto or HOST:PORT (default: the cluster `ray start` began "
                        "on this machine, else an embedded one)")  # fmt: skip


def _add_study_command(commands: argparse._SubParsersAction[OneLineErrorParser]) -> None:
    """`precrop study KIND CONFIG`: train a fixed grid, or --report it again."""
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


def _add_reconcile_command(commands: argparse._SubParsersAction[OneLineErrorParser]) -> None:
    """`precrop reconcile DIR`: re-log a search's results from its Tune directory."""
    reconcile = commands.add_parser(
        "reconcile", help="re-log a search's results from its Tune directory (after MLflow went away)"
    )
    reconcile.add_argument("search_dir", help="the search's Tune directory (printed when MLflow went away)")
    reconcile.add_argument("--tracking-uri", default=None,
                           help="default: $MLFLOW_TRACKING_URI, else the URI the search used")  # fmt: skip


def _add_pareto_command(commands: argparse._SubParsersAction[OneLineErrorParser]) -> None:
    """`precrop pareto`: a search's front recomputed from MLflow."""
    pareto = commands.add_parser("pareto", help="recompute a search's Pareto front from MLflow")
    pareto.add_argument("--experiment", required=True, help="MLflow experiment name")
    pareto.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    pareto.add_argument("--cost", default=COST_METRICS[0], choices=COST_METRICS)
    pareto.add_argument("--search", help="only this search (its name, e.g. quickstart-20261121-101500)")
    pareto.add_argument("--json", action="store_true", help="print the front as JSON")


def _add_export_command(commands: argparse._SubParsersAction[OneLineErrorParser]) -> None:
    """`precrop export RUN`: a run's model to ONNX, torch.export or TorchScript."""
    export = commands.add_parser(
        "export", help="export a run's model, normalization included, to ONNX, torch.export (pt2) or TorchScript",
        description="The exported model takes float32 NCHW RGB images in [0, 1] (uint8 / 255) at the plan's "
        "input size and returns logits; the run's mean/std normalization is inside the graph (runs logged "
        "before preprocess.json existed: the graph expects normalized input, and says so). See docs/deploy.md.",
    )  # fmt: skip
    export.add_argument("run_id", metavar="RUN", help="a trial that trained to the end: RUN_ID, runs:/RUN_ID, "
                        "runs:/RUN_ID/model, or a registered version: models:/NAME@ALIAS, "
                        "models:/NAME/VERSION")  # fmt: skip
    export.add_argument("--format", required=True, choices=("onnx", "pt2", "torchscript"),
                        help="onnx (dynamic batch, metadata_props), pt2 (torch.export + torch.export.save, dynamic "
                        "batch) or torchscript (traced; deprecated upstream, cannot be registered)")  # fmt: skip
    export.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    export.add_argument("-o", "--output", help="file to write (default: RUNID-ARCH.onnx|.pt2|.pt)")
    export.add_argument("--register", metavar="NAME", help="also log it as an MLflow model of the run (onnx or "
                        "pt2) and register it, for mlflow.pyfunc.load_model and mlflow models serve of "
                        "models:/NAME@ALIAS")  # fmt: skip
    export.add_argument("--alias", default="candidate", help="alias for the registered version (default candidate)")


def _add_doctor_command(commands: argparse._SubParsersAction[OneLineErrorParser]) -> None:
    """`precrop doctor`: leftovers of searches, each with the command that cleans it."""
    doctor = commands.add_parser(
        "doctor", help="list what searches left behind on this machine, with the command that cleans each",
        description="Lists Ray processes no live program owns, RUNNING MLflow runs no live search can end, and "
        "search records whose search is gone, each with the exact command that cleans it. It reads only "
        "(--end-run aside) and removes nothing. Exit status: 0 when nothing is found, 1 when something is, "
        "2 on an error (a tracking store that does not exist).",
    )  # fmt: skip
    doctor.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    doctor.add_argument("--storage-path", default=None, metavar="DIR", help="where the searches' Tune folders are "
                        "(default: $PRECROP_STORAGE_PATH, else ./ray_results)")  # fmt: skip
    doctor.add_argument("--json", action="store_true", help="print the findings as one JSON object")
    doctor.add_argument("--end-run", action="append", default=[], metavar="RUN_ID",
                        help="end this RUNNING run (KILLED) that doctor judges stale and `precrop reconcile` "
                        "cannot end (its Tune state is gone); repeatable")  # fmt: skip


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
    add_synexp_command(commands)
    add_train_command(commands)
    add_search_commands(commands)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    handlers = {"allocate": _run_allocate, "train": _run_train, "search": _run_search, "study": _run_study,
                "reconcile": _run_reconcile, "pareto": _run_pareto, "export": _run_export,
                "doctor": _run_doctor}  # fmt: skip
    handler = handlers.get(args.command)
    return handler(args) if handler is not None else run_precrop_command(args)


# ----- command handlers: each takes the parsed arguments, imports what its command needs, runs it -----


def _run_allocate(args: argparse.Namespace) -> int:
    """`precrop allocate`."""
    from trainers.allocate_cli import run_allocate

    return run_allocate(args)


def _run_train(args: argparse.Namespace) -> int:
    """`precrop train`."""
    from trainers.cli import run_train

    return run_train(args)


def _load_config(args: argparse.Namespace) -> ExperimentConfig:
    """The config file of `search` or `study`, with its --set overrides and --address."""
    from search.spec.parse import load_config

    overrides = list(args.overrides) + ([f"ray.address={args.address}"] if args.address else [])
    return load_config(args.config, overrides)


def _run_search(args: argparse.Namespace) -> int:
    """`precrop search CONFIG`: run (or --resume) a search."""
    config = _load_config(args)  # first: a bad config is refused before Ray, MLflow and Tune are imported
    from search.run.driver import run_search

    return run_search(config, resume=args.resume)


def _run_study(args: argparse.Namespace) -> int:
    """`precrop study KIND CONFIG`: train a study's grid, or (--report) remake its tables from MLflow."""
    config = _load_config(args)  # first: a bad config is refused before Ray, MLflow and Tune are imported
    from search.run.driver import run_search
    from search.spec.grid import make_study
    from search.studies.report import run_study_report

    if args.report:
        return run_study_report(config, args.kind, args.out)
    study = make_study(args.kind, args.budgets, args.seeds, args.out, config.space.allocators)
    return run_search(config, study=study)


def _run_reconcile(args: argparse.Namespace) -> int:
    """`precrop reconcile SEARCH_DIR`: re-log a search from Tune's records, then its summary."""
    import dataclasses
    import os

    from search.record import tracking
    from search.record.reconcile import one_line_errors, with_parent_run
    from search.record.records import read_record
    from search.run.summary import finish_search

    with one_line_errors(args.search_dir):
        record = read_record(args.search_dir)
        uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "").strip() or record.tracking_uri
        if ":***@" in uri:
            raise UserError("the search's tracking URI was saved without its password: pass --tracking-uri")
        client = tracking.client_for(uri)  # may be a fresh store: reconcile re-logs the whole search
        record = dataclasses.replace(with_parent_run(client, record), tracking_uri=uri)
        finish_search(client, record, record.experiment_config(), record.study_grid(), by_hand=True)
        return 0


def _run_pareto(args: argparse.Namespace) -> int:
    """`precrop pareto`: recompute the front of an experiment (or one search) from MLflow alone."""
    import dataclasses
    import json

    from precrop.textui import format_table
    from search.record import tracking
    from search.results.pareto import front_rows, pareto_front, search_trials
    from search.spec.locations import default_tracking_uri

    uri = tracking.resolve_tracking_uri(args.tracking_uri or default_tracking_uri())
    client = tracking.client_for(uri, create=False)
    records = search_trials(client, args.experiment, args.search)
    front = pareto_front(records, args.cost)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in front]))
        return 0
    completed = sum(r.completed for r in records)
    print(f"{len(records)} trial runs, {completed} trained to the end; front (val accuracy vs {args.cost}):")
    print(format_table(*front_rows(front)) if front else "(empty)")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    """`precrop export RUN`: a run's deployable model to ONNX, pt2 or TorchScript, optionally registered."""
    from search.record import tracking
    from search.record.models import check_registrable, parse_model_ref, register, resolve_run
    from search.results.export import export_run, missing_preprocess_note
    from search.spec.locations import default_tracking_uri

    named = parse_model_ref(args.run_id)
    if args.register:
        check_registrable(args.format)
    uri = tracking.resolve_tracking_uri(args.tracking_uri or default_tracking_uri())
    client = tracking.client_for(uri, create=False)
    run_id = resolve_run(client, named)
    done = export_run(client, run_id, args.format, args.output)
    if not done.normalized_in_graph:
        print(missing_preprocess_note(run_id), file=sys.stderr)
    print(f"wrote {done.path} ({done.size_bytes / 1e6:.2f} MB); max |export - pytorch| = {done.check.max_abs_diff:.2e} "
          f"on random batches of {', '.join(map(str, done.check.batch_sizes))}")  # fmt: skip
    if args.register:
        version = register(client, run_id, done.servable, args.register, args.alias)
        shown_uri = tracking.redact_uri(uri)
        print(f"registered {args.register} version {version} (alias @{args.alias}) in {shown_uri}; serve it with: "
              f"MLFLOW_TRACKING_URI={shown_uri} mlflow models serve -m models:/{args.register}@{args.alias} "
              "--env-manager local")  # fmt: skip
    return 0


def _run_doctor(args: argparse.Namespace) -> int:
    """`precrop doctor`: what searches left behind here (exit 1 when anything), or --end-run stale runs."""
    import json
    import socket

    from search.infra import processes, ray_private
    from search.record import doctor, tracking
    from search.spec.config import ExperimentConfig
    from search.spec.locations import default_tracking_uri, storage_path_of

    uri = tracking.resolve_tracking_uri(args.tracking_uri or default_tracking_uri())
    client = tracking.client_for(uri, create=False)
    storage = args.storage_path or storage_path_of(ExperimentConfig())
    report = doctor.examine(client, uri, storage, processes.list_processes(), ray_private.ray_start_address(),
                            socket.gethostname(), doctor.now())  # fmt: skip
    if args.end_run:
        print("\n".join(doctor.end_stale_runs(client, report.runs, args.end_run)))
        return 0
    print(json.dumps(doctor.as_json(report)) if args.json else doctor.render(report))
    return 1 if report.found else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `precrop` console script."""
    return run_reporting_user_errors(_dispatch, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
