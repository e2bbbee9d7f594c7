"""The one ``drnets`` command: ``info``, ``train``, ``eval``, ``predict``, ``photos``, ``photos-eval``,
``calibrate``, ``nongarments``, ``ood-eval``.

Subcommands are thin: they parse flags and call the library.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from . import evaluate, nongarments, ood, photos, predict, samples
from .argtypes import positive_int
from .inference import keep_freed_memory
from .model import create_model, list_models

INPUT_SHAPES = ((1, 28, 28), (3, 32, 32))  # Fashion-MNIST, CIFAR


def cmd_info(args: argparse.Namespace) -> int:
    rows = []
    for name in list_models():
        for shape in INPUT_SHAPES:
            model = create_model(name, in_channels=shape[0]).eval()
            table = model.cost_table(*shape[1:])
            rows.append(
                {
                    "model": name,
                    "input_shape": list(shape),
                    "params": table.dense_params,
                    "dense_flops": table.dense_flops,
                }
            )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<12} {'input':<10} {'params':>10} {'dense FLOPs':>14}   (FLOPs = 2 x MACs)")
    for r in rows:
        shape = "x".join(map(str, r["input_shape"]))
        print(f"{r['model']:<12} {shape:<10} {r['params']:>10,} {r['dense_flops']:>14,}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    metrics = train(TrainConfig(**values), resume=args.resume, progress=not args.no_progress)
    print(json.dumps(metrics))
    return 0


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    from .data import DATASETS
    from .train import AUGMENTATIONS, COST_SCALINGS, DIFFICULTY_RANKINGS, EXECUTIONS, LAYOUTS, TrainConfig

    p = sub.add_parser("train", help="train a model and write a checkpoint folder")
    d = TrainConfig()
    g = p.add_argument_group("model and data")
    g.add_argument("--model", choices=list_models(), default=d.model)
    g.add_argument("--model-config", dest="model_overrides", default=d.model_overrides,
                   help="JSON object of model-config overrides, e.g. '{\"channels\": 16}'")  # fmt: skip
    g.add_argument("--data", choices=DATASETS, default=d.data)
    g.add_argument("--data-root", default=None, help="data folder (default: the Debian Fashion-MNIST files)")
    g.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    g.add_argument("--augment", choices=AUGMENTATIONS, default=d.augment,
                   help="crop-flip, or photo: also scale, tilt, shift, contrast, blur, noise and mask errors")  # fmt: skip
    g.add_argument("--photo-pool", action="append", default=[], metavar="DIR",
                   help="a `drnets photos --split train` folder to mix in, prepared as uploads are (repeatable)")  # fmt: skip
    g.add_argument("--photo-share", type=float, default=d.photo_share,
                   help="share of the training set the pool photos make up (default 0.25)")  # fmt: skip
    g.add_argument("--outlier-pool", action="append", default=[], metavar="DIR",
                   help="a `drnets nongarments` folder for outlier exposure, prepared as uploads are (repeatable)")  # fmt: skip
    g.add_argument("--outlier-share", type=float, default=d.outlier_share,
                   help="share of the training set the outliers make up (default 0.1)")  # fmt: skip
    g.add_argument("--outlier-weight", type=float, default=d.outlier_weight,
                   help="weight of the outliers' pull towards a uniform answer (default 0.5)")  # fmt: skip
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=d.epochs)
    g.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate of the one-cycle schedule")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--init-from", default=None,
                   help="checkpoint folder to start from where weight names and shapes match (new routers start fresh)")  # fmt: skip
    g.add_argument("--teacher", default=None, metavar="CHECKPOINT",
                   help="distil from this trained checkpoint's answers (same data and classes)")  # fmt: skip
    g.add_argument("--teacher-weight", type=float, default=d.teacher_weight,
                   help="share of the labelled images' loss taken by the teacher's answers (default 0.5)")  # fmt: skip
    g.add_argument("--teacher-temperature", type=float, default=d.teacher_temperature,
                   help="temperature softening the teacher's and the student's answers (default 2)")  # fmt: skip
    g = p.add_argument_group("routing")
    g.add_argument("--cost-weight", type=float, default=d.cost_weight, help="lambda on the expected-FLOPs loss")
    g.add_argument("--cost-scaling", choices=COST_SCALINGS, default=d.cost_scaling,
                   help="how each image's cost is scaled: the same for all, by the model's confidence in its label, "
                   "or by that confidence's rank in the batch (easy images pay more)")  # fmt: skip
    g.add_argument("--cost-contrast", type=float, default=d.cost_contrast,
                   help="with --cost-scaling rank: the easiest image pays 1 + C times the mean, the hardest 1 - C")  # fmt: skip
    g.add_argument("--difficulty-spread", type=float, default=d.difficulty_spread,
                   help="ask the router to spend 1 + S times the batch's mean cost on its hardest image, 1 - S on its easiest")  # fmt: skip
    g.add_argument("--difficulty-by", choices=DIFFICULTY_RANKINGS, default=d.difficulty_by,
                   help="hard = the image's own low confidence, or its class's low mean confidence in the batch")  # fmt: skip
    g.add_argument("--pool-price", type=float, default=d.pool_price,
                   help="charge pooling branches this many 3x3 depthwise convs' FLOPs in the cost loss (default 0)")  # fmt: skip
    g.add_argument("--tau-start", type=float, default=d.tau_start, help="Gumbel-Softmax temperature at the start")
    g.add_argument("--tau-end", type=float, default=d.tau_end, help="... and at the end (geometric annealing)")
    g.add_argument("--threshold", type=float, default=d.threshold, help="routing threshold t")
    g.add_argument("--budget-min", type=float, default=d.budget_min,
                   help="budgeted DRNets: the smallest budget trained (share of the routed branches' FLOPs)")  # fmt: skip
    g.add_argument("--budget-max", type=float, default=d.budget_max, help="... and the largest")
    g.add_argument("--sandwich", action=argparse.BooleanOptionalAction, default=d.sandwich,
                   help="budgeted DRNets: train the largest, the smallest and a random budget each step (default: on)")  # fmt: skip
    g.add_argument("--cost-warmup", type=float, default=d.cost_warmup,
                   help="share of the run before the cost term switches on (default 0)")  # fmt: skip
    g = p.add_argument_group("output")
    g.add_argument("--out", default=d.out, help="run folder: train_state.pt, model/, log.csv, args.json")
    g.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--log-every", type=positive_int, default=d.log_every)
    g = p.add_argument_group("execution")
    g.add_argument("--cudnn", action=argparse.BooleanOptionalAction, default=d.cudnn,
                   help="CUDA: force cuDNN's convolutions on or off (default: off for a routed DRNet only)")  # fmt: skip
    g.add_argument("--layout", choices=LAYOUTS, default=d.layout,
                   help="CUDA: memory format (default: channels_last with cuDNN, else nchw)")  # fmt: skip
    g.add_argument("--execution", choices=EXECUTIONS, default=d.execution,
                   help="routed DRNets: run each branch on the samples that kept it (sparse), or every branch on "
                        "every sample times its mask (masked: fixed shapes, cuDNN on a GPU; batch norm sees the "
                        "whole batch)")  # fmt: skip
    p.set_defaults(func=cmd_train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drnets", description="Dynamic Routing Networks: train, evaluate, inspect.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="parameters and dense FLOPs of every model per input size")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=cmd_info)
    add_train_parser(sub)
    samples.add_parser(sub)
    evaluate.add_parser(sub)
    predict.add_parser(sub)
    photos.add_parsers(sub)
    ood.add_parser(sub)
    nongarments.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"drnets {args.command}: error: {err}", file=sys.stderr)
        return 2
