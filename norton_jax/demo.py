"""The main job on the embedded default data (``make demo``).

    python -m norton_jax.demo [--workdir workdir/demo] [--steps 300] [--store DIR] [--fresh] [--debug]

1. Builds (first run) or reuses the embedded ``youcook2-mnc`` corpus: YouCookII step
   sentences turned into per-second features, with noisy narration (asynchronous caption
   times, irrelevant ASR chatter, filler words).
2. Evaluates the untrained tiny Norton on the validation split (clip retrieval,
   video-paragraph retrieval with Cap. Avg./DTW/OTAM, and alignment recall of the noisy
   narration), trains it with ``configs/tiny.py`` (resuming if ``--workdir`` already holds a
   run), and evaluates again.
3. Exports the trained encoders to a PyTorch ``.safetensors`` state dict with the
   reference's key names, draws the Figure-3 re-alignment picture, and prints a summary
   with the paths of everything written.

The demo marks the folders it writes with a ``.norton-demo`` file.  ``--fresh`` removes only
what the demo writes (:data:`DEMO_OUTPUTS`) and only in a folder holding that marker; a
folder with other content and no marker is refused, and every argument is checked before
anything is removed.  A training run stopped by SIGTERM / Ctrl-C exits with ``128 + signal``
(see :mod:`norton_jax.cli`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from norton_jax import cli

from data_pipeline.tf_utils import configure_tensorflow_environment  # noqa: E402

configure_tensorflow_environment()

TASKS = ("youcook2_clip", "youcook2_paragraph", "htm_align")
# (task, metric key path, label) rows of the summary table.
HEADLINE = (
    ("youcook2_clip", "metrics.R1", "clip retrieval R@1"),
    ("youcook2_clip", "metrics.R5", "clip retrieval R@5"),
    ("youcook2_paragraph", "metrics.dtw.R1", "paragraph retrieval DTW R@1"),
    ("youcook2_paragraph", "metrics.cap_avg.R1", "paragraph retrieval Cap.Avg R@1"),
    ("youcook2_paragraph", "metrics.otam.R1", "paragraph retrieval OTAM R@1"),
    ("htm_align", "metrics.dense_recall", "alignment recall (noisy narration, dense)"),
    ("htm_align", "metrics.recall", "alignment recall (reference windows)"),
    ("htm_align", "metrics.timestamp_recall", "  baseline: the noisy timestamps"),
)


MARKER = ".norton-demo"
# Everything the demo writes inside --workdir: what --fresh may remove.
DEMO_OUTPUTS = ("train", "eval_untrained", "eval_trained", "norton_tiny.safetensors",
                "figure3_realignment.png", "demo_summary.json")


def prepare_workdir(workdir: str, *, fresh: bool) -> None:
    """Creates ``workdir`` for the demo (with its marker); ``fresh`` removes earlier demo outputs.

    Only :data:`DEMO_OUTPUTS` are removed, and only where the marker shows the demo made the
    folder.  A non-empty folder without the marker raises :class:`~norton_jax.cli.UserError`
    (nothing is touched), so a mistyped ``--workdir`` never loses a user's files.
    """
    marker = os.path.join(workdir, MARKER)
    if os.path.exists(workdir):
        if not os.path.isdir(workdir):
            raise cli.UserError(f"--workdir {workdir} exists and is not a folder")
        has_marker = os.path.isfile(marker)
        if not has_marker and os.listdir(workdir):
            known = set(os.listdir(workdir)) <= set(DEMO_OUTPUTS)
            if fresh or not known:
                raise cli.UserError(
                    f"--workdir {workdir} holds files the demo did not write (no {MARKER} marker); "
                    "refusing to use it" + (" or delete anything in it" if fresh else "")
                    + ": pick an empty or new folder")
        if fresh and has_marker:
            for name in DEMO_OUTPUTS:
                path = os.path.join(workdir, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                elif os.path.lexists(path):
                    os.remove(path)
    os.makedirs(workdir, exist_ok=True)
    if not os.path.isfile(marker):
        with open(marker, "w") as f:
            f.write("norton-jax demo outputs; `python -m norton_jax.demo --fresh` removes only these: "
                    + ", ".join(DEMO_OUTPUTS) + "\n")


def _get(metrics: dict, dotted: str):
    value = metrics
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def evaluate_all(model, store: str, out_dir: str) -> dict:
    from norton_jax.evaluate.run import evaluate_checkpoint

    os.makedirs(out_dir, exist_ok=True)
    results = {}
    for task in TASKS:
        results[task] = evaluate_checkpoint(model, task, store, out=os.path.join(out_dir, f"{task}.json"))
    return results


def demo_config(path: str, *, steps: int | None = None, store: str | None = None):
    """The demo's training config: ``path`` with ``--steps`` and ``--store`` applied.

    ``store``: the corpus folder (absolute), built there on first use
    (``data.build_anywhere``), e.g. a fresh folder to check that a build reproduces.
    """
    from norton_jax.models.config import load_config_file

    config = load_config_file(path)
    if steps is not None:
        config.train.steps = steps
    if store is not None:
        config.data.store = os.path.abspath(store)
        config.data.build_anywhere = True
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="workdir/demo")
    parser.add_argument("--config", default="configs/tiny.py")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    parser.add_argument("--store", default=None,
                        help="corpus folder (default: the config's data.store); built there if missing")
    parser.add_argument("--fresh", action="store_true",
                        help="remove the demo's earlier outputs in --workdir first (only what the demo wrote)")
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")

    import jax
    from flax import nnx

    from norton_jax import demo_align, export_torch
    from norton_jax.import_torch import build_pretrained
    from norton_jax.models.dual_encoder import init_model
    from norton_jax.train import resolve_store, say, train_and_evaluate
    from norton_jax.training.validate import validate_config

    t0 = time.perf_counter()
    workdir = os.path.abspath(args.workdir)
    # Everything is checked before anything in --workdir is removed.
    config = demo_config(args.config, steps=args.steps, store=args.store)
    validate_config(config)
    prepare_workdir(workdir, fresh=args.fresh)
    store = resolve_store(config)
    say(f"corpus: {store}")

    say("evaluating the untrained model")
    untrained = init_model(config.model, seed=config.train.seed)
    before = evaluate_all(untrained, store, os.path.join(workdir, "eval_untrained"))

    say(f"training {config.train.steps} steps ({args.config}) in {workdir}/train")
    train_summary = train_and_evaluate(config, os.path.join(workdir, "train"))
    if train_summary.get("interrupted"):
        signum = train_summary.get("signal") or 15
        say(f"training was interrupted at step {train_summary['step']}; rerun the same command to resume")
        return cli.interrupted_exit_code(signum)
    trained = build_pretrained(os.path.join(workdir, "train"), config.model)
    say("evaluating the trained model")
    after = evaluate_all(trained, store, os.path.join(workdir, "eval_trained"))

    export_path = os.path.join(workdir, "norton_tiny.safetensors")
    export_torch.save_safetensors(export_torch.export_state_dict(trained), export_path, trained.config)
    figure = os.path.join(workdir, "figure3_realignment.png")
    demo_align.main(["--out", figure])

    rows = []
    for task, key, label in HEADLINE:
        b, a = _get(before[task], key), _get(after[task], key)
        rows.append({"metric": label, "untrained": b, "trained": a})
    summary = {
        "corpus": store,
        "device": str(jax.devices()[0]),
        "train": train_summary,
        "metrics": rows,
        "files": {
            "checkpoint": train_summary["checkpoint"],
            "metrics_jsonl": os.path.join(workdir, "train", "metrics.jsonl"),
            "tensorboard": os.path.join(workdir, "train", "tensorboard"),
            "eval_untrained": os.path.join(workdir, "eval_untrained"),
            "eval_trained": os.path.join(workdir, "eval_trained"),
            "pytorch_export": export_path,
            "figure3": figure,
        },
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }
    with open(os.path.join(workdir, "demo_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)

    print("\n=== norton-jax demo: tiny Norton on youcook2-mnc (validation split) ===")
    print(f"{'metric':40s} {'untrained':>10s} {'trained':>10s}")
    for r in rows:
        fmt = lambda v: "-" if v is None else f"{100 * v:9.1f}%" if v <= 1 else f"{v:10.2f}"  # noqa: E731
        print(f"{r['metric']:40s} {fmt(r['untrained']):>10s} {fmt(r['trained']):>10s}")
    final_loss = train_summary['metrics'].get('loss_total')
    print(f"\ntrained {train_summary['step']} steps" + ("" if final_loss is None else f"; final loss {final_loss:.4f}"))
    for name, path in summary["files"].items():
        print(f"  {name:16s} {path}")
    print(f"  {'summary':16s} {os.path.join(workdir, 'demo_summary.json')}")
    print(f"wall time {summary['wall_time_s']} s")
    model_rows = [r for r in rows if not r["metric"].startswith(" ")]  # not the timestamp baseline
    improved = [r for r in model_rows if r["untrained"] is not None and r["trained"] is not None
                and r["trained"] > r["untrained"]]
    print(f"training improved {len(improved)}/{len(model_rows)} validation metrics")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m norton_jax.demo"))
