"""`precrop train`: train one model (dense, or cropped from a plan) and write a run directory."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from precrop.errors import UserError
from precrop.fileio import check_writable_dir
from precrop.nn.build import layer_table
from precrop.width.allocate import dense_plan
from precrop.width.plan import WidthPlan
from trainers.checkpoint import (
    Preprocess,
    load_train_state,
    read_plan,
    save_metrics,
    save_model,
    save_train_state,
)
from trainers.datasets import DataError, DataRequest, DataSet
from trainers.load import load_dataset
from trainers.loop import Metrics, Trainer, TrainState, evaluate
from trainers.start import model_for_plan
from trainers.train_args import add_train_command, config_from_args


def plan_for(args: argparse.Namespace, data: DataSet) -> WidthPlan:
    """The plan file's plan, checked against the data; or the dense plan of --arch at the data's shape."""
    if args.plan:
        plan = read_plan(args.plan)
        if plan.masked:
            raise UserError(
                f"plan {args.plan} is a {plan.granularity}-mask plan ({plan.allocator}): it records layer "
                "densities, not the masks, so `precrop train` cannot rebuild it; mask methods train through "
                "`precrop search` or `precrop study`, which compute the masks on the model they train"
            )
        if plan.input_shape != data.image_shape or plan.num_classes != data.num_classes:
            c, h, w = data.image_shape
            raise DataError(
                f"plan {args.plan} is for {'x'.join(map(str, plan.input_shape))} inputs and {plan.num_classes} "
                f"classes, but {data.name} has {c}x{h}x{w} and {data.num_classes}; re-run `precrop allocate "
                f"{plan.arch} --input-size {h} --num-classes {data.num_classes} ...`"
            )
        return plan
    return dense_plan(layer_table(args.arch, data.num_classes, data.image_shape[1]))


def format_progress(metrics: Metrics, epochs: int) -> str:
    """One progress line per epoch."""
    return (
        f"epoch {int(metrics['epoch']):>3}/{epochs}  loss {metrics['train_loss']:.4f}  "
        f"train {metrics['train_acc']:.2%}  val {metrics['val_acc']:.2%}  lr {metrics['lr']:.4g}  "
        f"{metrics['epoch_seconds']:.1f} s  {metrics['images_per_s']:,.0f} img/s"
    )


def run_train(args: argparse.Namespace) -> int:
    """The `precrop train` command."""
    config = config_from_args(args)
    if args.init != "scratch" and not args.plan:
        raise UserError("--init pretrained starts a --plan from its dense model's weights; --arch trains the dense "
                        "model itself")  # fmt: skip
    out = _output_dir(args)
    started = time.perf_counter()
    data = load_dataset(
        DataRequest(
            args.dataset, data_dir=args.data_dir, download=args.download, val_fraction=args.val_fraction,
            seed=args.seed, with_test=args.test, image_size=args.image_size, resident=args.resident,
        )
    )  # fmt: skip
    print(data.summary(), flush=True)
    plan = plan_for(args, data)
    trainer = Trainer(model_for_plan(plan, args.init, data, args.seed), data, config)
    state = load_train_state(out) if (out is not None and args.resume) else None
    if state is not None:
        trainer.load_state(state)
        print(f"resuming after epoch {trainer.epoch} from {out}", flush=True)
    elif args.resume:
        print(f"nothing to resume in {out} (no train_state.pt): starting from epoch 1", flush=True)
    print(_describe(plan, trainer), flush=True)
    _create(out)

    def report(metrics: Metrics, train_state: TrainState) -> None:
        print(format_progress(metrics, config.epochs), flush=True)
        if out is not None:
            save_train_state(out, train_state)

    result = trainer.run(report)
    summary: dict[str, Any] = {
        "status": result.status, "reason": result.reason, "dataset": data.summary(),
        "config": config.to_dict(), "history": result.history, "final": result.final,
    }  # fmt: skip
    if result.status == "completed":
        summary.update(_finish(args, trainer, data, plan))
    summary["wall_seconds"] = time.perf_counter() - started
    if out is not None:
        save_metrics(out, summary)
    if result.status != "completed":
        raise UserError(f"training stopped: {result.reason}")
    if out is not None:
        save_model(out, plan, trainer.model, Preprocess.from_dataset(data))
        print(f"wrote {out / 'plan.json'}, {out / 'model.pt'}, {out / 'preprocess.json'} and {out / 'metrics.json'}")
    return 0


def _finish(args: argparse.Namespace, trainer: Trainer, data: DataSet, plan: WidthPlan) -> dict[str, Any]:
    """Test accuracy (when asked) and the cost measurement, printed and returned for metrics.json."""
    extra: dict[str, Any] = {}
    if data.test is not None:
        test = evaluate(trainer.model, trainer.batches(data.test, trainer.config.eval_batch_size), trainer.config.amp)
        extra["test"] = test
        print(f"test accuracy {test['accuracy']:.2%} on {len(data.test):,} images")
    if not args.no_measure:
        from trainers.measure import measure_model

        extra["measurement"] = measure_model(trainer.model, plan.input_shape)
        print(
            "measured: "
            + ", ".join(f"{k} {v:,.0f}" if k in ("params", "macs") else f"{k} {v:.2f}"
                        for k, v in extra["measurement"].items())
        )  # fmt: skip
    return extra


def _describe(plan: WidthPlan, trainer: Trainer) -> str:
    cost = plan.counted
    return (
        f"model {plan.arch} ({plan.allocator}): {cost.params:,} params, {cost.macs:,} MACs "
        f"({cost.macs / plan.base.macs:.3f} of dense); device {trainer.device}, "
        f"{trainer.train_batches.steps_per_epoch()} steps/epoch"
    )


def _output_dir(args: argparse.Namespace) -> Path | None:
    """The run directory -o names, checked but not created: a rejected command leaves no folder behind."""
    if args.output is None:
        if args.resume:
            raise UserError("--resume needs -o DIR (the run directory to continue)")
        return None
    check_writable_dir(args.output, "output directory")
    return Path(args.output)


def _create(out: Path | None) -> None:
    """Create the run directory, once everything it will hold has been checked."""
    if out is None:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output directory {out}: {exc.strerror}") from exc


def main() -> int:
    """`python -m trainers.cli`: just the train command."""
    from precrop.cli import new_parser, run_reporting_user_errors

    parser, commands = new_parser()
    add_train_command(commands)
    return run_reporting_user_errors(run_train, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
