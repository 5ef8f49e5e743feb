"""``python -m norton_jax.evaluate``: score a checkpoint on the downstream protocols (spec §5).

    python -m norton_jax.evaluate --checkpoint WORKDIR --task youcook2_paragraph \\
        --data data/build/youcook2-mnc [--out metrics.json]

``--task`` takes one task or a comma-separated list; the JSON holds the result of a single
task, or ``{task: result}`` for several.  See ``docs/evaluation.md`` for each task's files.

A mistake in the arguments or the files (an unknown task, a missing file, features with
NaN/inf, an unwritable ``--out``) prints one ``error:`` line and exits with status 2;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from data_pipeline.tf_utils import configure_tensorflow_environment  # noqa: E402

configure_tensorflow_environment()


def build_parser() -> argparse.ArgumentParser:
    from norton_jax.evaluate.tasks import TASKS  # noqa: PLC0415
    from norton_jax.inference.checkpoints import parse_step_arg  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="python -m norton_jax.evaluate",
        description="Evaluate a Norton checkpoint on the reference's downstream protocols (spec §5).",
    )
    parser.add_argument("--checkpoint", required=True,
                        help="training workdir, its checkpoints/ folder, one <step>/ folder, or a .pt/.safetensors file")
    parser.add_argument("--task", required=True,
                        help=f"one of {', '.join(TASKS)} (or a comma-separated list)")
    parser.add_argument("--data", required=True,
                        help="folder with the task's official files (docs/evaluation.md), the task's file, "
                             "or a youcook2-mnc feature store (youcook2 tasks, htm_align)")
    parser.add_argument("--features", default=None, help="folder of <video_id>.npy overriding the default in --data")
    parser.add_argument("--config", default=None,
                        help="config file giving the model geometry (needed for .pt files without one)")
    parser.add_argument("--step", type=parse_step_arg, default=None,
                        help="orbax step: an integer, 'best' or 'latest' (default: latest)")
    parser.add_argument("--split", default="val", help="feature-store split (youcook2-mnc; default val)")
    parser.add_argument("--coin-split", default="testing", help="COIN subset (default testing)")
    parser.add_argument("--otam-variant", default="reference", choices=("reference", "textbook"),
                        help="OTAM column-1 update: the reference's (default) or Cao et al.'s (trap T22)")
    parser.add_argument("--batch-size", type=int, default=64, help="encoder batch size (default 64)")
    parser.add_argument("--max-videos", type=int, default=None,
                        help="only the first N videos (quick checks; not the protocol)")
    parser.add_argument("--out", default=None,
                        help="write the metrics JSON here (checked writable before the model loads)")
    from norton_jax import cli  # noqa: PLC0415

    cli.add_debug_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from norton_jax import cli  # noqa: PLC0415

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from norton_jax.evaluate.report import check_writable, format_table, write_json  # noqa: PLC0415
    from norton_jax.evaluate.run import evaluate_checkpoint  # noqa: PLC0415
    from norton_jax.evaluate.tasks import TASKS  # noqa: PLC0415
    from norton_jax.inference import load_model  # noqa: PLC0415

    tasks = [t.strip() for t in args.task.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise cli.UserError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    if args.out:
        check_writable(args.out, "--out")  # before the model loads: a bad --out fails at once
    model, info = load_model(args.checkpoint, args.config, step=args.step)
    results = {}
    for task in tasks:
        result = evaluate_checkpoint(
            model, task, args.data, features=args.features, split=args.split,
            batch_size=args.batch_size, max_videos=args.max_videos, coin_split=args.coin_split,
            otam_variant=args.otam_variant,
        )
        result.update(info)
        results[task] = result
        print(format_table(result), flush=True)
    if args.out:
        write_json(results[tasks[0]] if len(tasks) == 1 else results, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from norton_jax import cli

    sys.exit(cli.run(main, prog="python -m norton_jax.evaluate"))
