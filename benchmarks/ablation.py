"""Table 7 ablation of Norton on the embedded ``youcook2-mnc`` corpus (issue 8, spec §5.10).

Protocol (the paper's post-pretraining, scaled down): a *base* model is first trained
once with the clip-caption loss only (row A's loss, ``--base-steps`` steps from a random
init, seed 0) -- our stand-in for the pre-trained VideoCLIP that Norton starts from.  Every
row of ``configs/ablation.py`` (A-J, the vanilla-OT row ``OT`` and the soft-DTW ``TempCLR``
baseline) is then post-trained from that same base with the tiny config for the same number
of steps (seed ``s`` sets the data order and the dropout stream of every row), and each
checkpoint, and the base itself, is evaluated on the corpus' validation split:

* clip retrieval R@1/R@5 (``youcook2_clip``);
* paragraph retrieval with Cap. Avg. / DTW / OTAM, R@1/R@5, without and with background
  (``youcook2_paragraph``, ``youcook2_paragraph_bg``);
* alignment recall of the noisy narration (``htm_align``: the reference's window choice and
  the dense one that scores every caption on every second; ``timestamp_recall`` is the
  recall of the corpus' own shifted timestamps, the same for every row).

Writes ``<out>.md`` (mean and std per row, the exact command, machine, date, measured
costs and the estimated cost of the full protocol), ``<out>.json`` (every run) and
``<out>.png``.  Usage::

    python benchmarks/ablation.py                       # full: base + 12 rows x 3 seeds
    python benchmarks/ablation.py --base-steps 0        # rows from a random init instead
    python benchmarks/ablation.py --smoke --rows A,J    # CI: 1 seed, 20 steps, 40 videos
    python benchmarks/ablation.py --noise-sweep         # rows A, C, J vs noise, 1 seed (one plot)
    python benchmarks/ablation.py --report-only --notes results/ablation_notes.md  # re-render

``--noise-sweep`` builds the corpus variants once into ``--cache-dir`` (irrelevant
fraction 0/25/50/75 %, and per-caption time shift std 0/4/8/12 s at the default 30 %
chatter), post-trains rows A, C and J on each from the same base (trained on ``--store``)
and writes ``<out>_noise.{md,json,png}``.  The base is kept in ``--workdir`` and reused by
later invocations with the same store, steps and seed.

Timings: every run records wall and process-CPU seconds of its three phases (start-up =
model init + compilation + the first hard-negative plan, steps, evaluation); the estimate
of the full protocol on an idle 2-core machine is reported as the interval
``[cpu / 2, cpu]`` (perfect two-core scaling .. one core busy).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import sys
import time
from typing import Any, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from data_pipeline.tf_utils import configure_tensorflow_environment  # noqa: E402

configure_tensorflow_environment()

import numpy as np  # noqa: E402

from benchmarks.ablation_report import (  # noqa: E402  (the protocol's constants and its reports)
    BASE_ROW, CLAIMS, FULL_STEPS, IRRELEVANT_LEVELS, METHODS, ROW_ORDER, SHIFT_LEVELS, SWEEP_ROWS, compare_runs,
    cost_model, git_revision, machine_line, now as _now, rel_path as _rel, write_sweep_report,
    write_table_report)
from data_pipeline import fileio  # noqa: E402
from norton_jax.models.config import load_config_file  # noqa: E402

TASKS = ("youcook2_clip", "youcook2_paragraph", "youcook2_paragraph_bg", "htm_align")
DEFAULT_STORE = os.path.join(REPO, "data", "build", "youcook2-mnc")
BASE_STEPS = 300  # clip-only base (the `make demo` length); 0 = rows start from a random init
SMOKE_STEPS = 20
SMOKE_BASE_STEPS = 10
SMOKE_VIDEOS = 40


# ---------------------------------------------------------------------------------------
# Configs and single runs
# ---------------------------------------------------------------------------------------


#: The rows' configs: ``configs/ablation.py:<row>``, loaded with the project's config loader.
ABLATION_CONFIG = os.path.join(REPO, "configs", "ablation.py")


def parse_rows(text: str) -> list[str]:
    """``"a,J,tempclr"`` -> canonical row names, in the order given; clear error otherwise."""
    canon = {r.upper(): r for r in ROW_ORDER}
    rows = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if item.upper() not in canon:
            raise SystemExit(f"unknown row {item!r}; rows are {', '.join(ROW_ORDER)}")
        rows.append(canon[item.upper()])
    if not rows:
        raise SystemExit("--rows selects no row")
    return rows


def row_config(row: str, *, steps: int, seed: int, store: str, init: str = ""):
    """The tiny-config variant of ``row`` for one run.

    ``init`` is the base workdir every row starts from ('' = random init from ``seed``);
    ``seed`` also sets the data order and the dropout stream.
    """
    config = load_config_file(f"{ABLATION_CONFIG}:{row}")
    with config.unlocked():
        config.train.init_checkpoint = init
        config.train.steps = int(steps)
        config.train.seed = int(seed)  # model init (identical for every row of a seed)
        config.data.seed = int(seed)  # data order
        config.train.progress = False
        config.train.log_every = max(1, min(10, int(steps) // 2))  # >= 2 logs: one steady interval
        config.train.checkpoint_every = 10**9  # only the final checkpoint
        config.train.keep_checkpoints = 1
        config.data.store = store
        if os.path.abspath(store) != os.path.abspath(DEFAULT_STORE):
            config.data.build_if_missing = ""  # sweep corpora are built by this script
    return config


def _flatten(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Evaluation dicts -> flat metrics (fractions in [0, 1], MR in ranks)."""
    clip = results["youcook2_clip"]["metrics"]
    flat = {f"clip.{k}": float(clip[k]) for k in ("R1", "R5", "R10", "MR")}
    for task, prefix in (("youcook2_paragraph", "para"), ("youcook2_paragraph_bg", "para_bg")):
        m = results[task]["metrics"]
        for method in METHODS:
            for k in ("R1", "R5", "R10"):
                flat[f"{prefix}.{method}.{k}"] = float(m[method][k])
    align = results["htm_align"]["metrics"]
    flat["align.recall"] = float(align["recall"])
    flat["align.auc"] = float(align["auc"])
    flat["align.dense_recall"] = float(align["dense_recall"])
    flat["align.dense_auc"] = float(align["dense_auc"])
    flat["align.timestamp_recall"] = float(align["timestamp_recall"])
    return flat


def train_and_eval(row: str, seed: int, *, steps: int, store: str, workdir: str,
                   max_videos: int | None, init: str = "") -> dict[str, Any]:
    """One run: fresh workdir, train ``steps`` steps (from ``init`` if given), evaluate."""
    from norton_jax.train import train_and_evaluate

    if os.path.exists(workdir):
        shutil.rmtree(workdir)
    config = row_config(row, steps=steps, seed=seed, store=store, init=init)
    w0, c0 = time.perf_counter(), time.process_time()
    summary = train_and_evaluate(config, workdir)
    w1, c1 = time.perf_counter(), time.process_time()
    # Start-up (init, compilation, first hard-negative plan) vs steady steps, from the log:
    # the first logged interval holds the start-up.
    step_times = []
    with open(os.path.join(workdir, "metrics.jsonl")) as fh:
        logs = [json.loads(line) for line in fh if line.strip()]
    for a, b in zip(logs, logs[1:]):
        step_times.append(b["step_time_s"])
    steady = float(np.median(step_times)) if step_times else float("nan")
    results = evaluate_all(workdir, store, max_videos)
    w2, c2 = time.perf_counter(), time.process_time()
    final = summary.get("metrics", {})
    return {
        "row": row,
        "seed": seed,
        "steps": int(summary["step"]),
        "init": _rel(init) if init else "random",
        "store": _rel(store),
        "max_videos": max_videos,
        "metrics": _flatten(results),
        "counts": {t: results[t]["counts"] for t in TASKS},
        "train_loss_final": {k: final.get(k) for k in ("loss_total", "loss_clip_caption", "loss_video_paragraph")},
        "time": {
            "train_wall_s": round(w1 - w0, 2), "train_cpu_s": round(c1 - c0, 2),
            "eval_wall_s": round(w2 - w1, 2), "eval_cpu_s": round(c2 - c1, 2),
            "steady_step_wall_s": round(steady, 3),
        },
    }


def evaluate_all(workdir: str, store: str, max_videos: int | None) -> dict[str, dict[str, Any]]:
    """The four evaluation tasks of one checkpoint (its latest step)."""
    from norton_jax.evaluate.run import evaluate_checkpoint

    return {task: evaluate_checkpoint(workdir, task, store, max_videos=max_videos) for task in TASKS}


def base_workdir(workdir: str, store: str, steps: int) -> str:
    """Where the base of ``store`` trained for ``steps`` steps lives (shared by invocations)."""
    return os.path.join(workdir, f"base_{os.path.basename(os.path.normpath(store))}_{steps}steps")


def ensure_base(args) -> dict[str, Any] | None:
    """Trains (or reuses) the clip-only base every row starts from; its run record.

    The base is row ``BASE_ROW``'s loss trained ``args.base_steps`` steps from a random init
    with seed 0 on ``args.store``.  A finished base with the same settings (its
    ``base_run.json``) is reused, so the table and the noise sweep share one base (delete
    its folder to retrain it after changing the training code).
    Returns None when ``--base-steps 0`` (every row then starts from a random init).
    """
    if args.base_steps == 0:
        return None
    workdir = base_workdir(args.workdir, args.store, args.base_steps)
    record_path = os.path.join(workdir, "base_run.json")
    if os.path.exists(record_path):
        with open(record_path) as fh:
            record = json.load(fh)
        if (record.get("steps") == args.base_steps and record.get("store") == _rel(args.store)
                and record.get("max_videos") == args.max_videos):
            print(f"[ablation] reusing the base {_rel(workdir)}", file=sys.stderr, flush=True)
            return record
    print(f"[ablation] base: row {BASE_ROW} loss, {args.base_steps} steps from a random init",
          file=sys.stderr, flush=True)
    record = train_and_eval(BASE_ROW, 0, steps=args.base_steps, store=args.store, workdir=workdir,
                            max_videos=args.max_videos)
    record.update(row="base", workdir=_rel(workdir))
    _dump(record_path, record)
    return record


# ---------------------------------------------------------------------------------------
# Noise sweep
# ---------------------------------------------------------------------------------------


def sweep_corpora(cache_dir: str, max_videos: int) -> list[tuple[str, float, Any]]:
    """``(axis, level, MNCConfig)`` of every variant: irrelevant fraction, then asynchrony."""
    from data_pipeline.youcook2_mnc import MNCConfig

    base = MNCConfig(max_videos=max_videos)
    out = [("irrelevant_fraction", f, dataclasses.replace(base, irrelevant_fraction=f)) for f in IRRELEVANT_LEVELS]
    out += [("shift_std", s, dataclasses.replace(base, shift_std=s, max_shift=3 * s)) for s in SHIFT_LEVELS]
    return out


def corpus_dir(cache_dir: str, axis: str, level: float, max_videos: int) -> str:
    return os.path.join(cache_dir, f"youcook2-mnc_{axis}{level:g}_v{max_videos}")


def run_noise_sweep(args, command: str) -> None:
    from data_pipeline import youcook2_mnc

    t0 = time.perf_counter()
    revision = git_revision()
    base = ensure_base(args)
    init = os.path.join(REPO, base["workdir"]) if base else ""
    runs = []
    for axis, level, cfg in sweep_corpora(args.cache_dir, args.sweep_videos):
        store = corpus_dir(args.cache_dir, axis, level, args.sweep_videos)
        youcook2_mnc.build(store, cfg, progress=False)  # kept when already built with these settings
        for row in args.sweep_rows:
            for seed in range(args.seeds):
                print(f"[ablation] noise {axis}={level:g} row {row} seed {seed}", file=sys.stderr, flush=True)
                run = train_and_eval(row, seed, steps=args.steps, store=store, init=init,
                                     workdir=os.path.join(args.workdir, f"noise_{axis}{level:g}_{row}_s{seed}"),
                                     max_videos=args.max_videos)
                run.update(axis=axis, level=level)
                runs.append(run)
                _dump(args.out + "_noise.json", {"command": command, "base": base, "runs": runs})
    wall = time.perf_counter() - t0
    write_sweep_report(args, runs, command, wall, revision, base,
                       {"irrelevant_fraction": IRRELEVANT_LEVELS, "shift_std": SHIFT_LEVELS})


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def _dump(path: str, obj: Any) -> None:
    fileio.atomic_write_json(path, obj, indent=1)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROW_ORDER), help="comma-separated rows (default: all 12)")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds 0..N-1 per row (default 3; --smoke and --noise-sweep 1)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"training steps per run (default {FULL_STEPS}; --smoke {SMOKE_STEPS})")
    p.add_argument("--base-steps", type=int, default=None,
                   help=f"steps of the clip-only base every row starts from (default {BASE_STEPS}; --smoke "
                        f"{SMOKE_BASE_STEPS}; 0 = rows start from a random init)")
    p.add_argument("--max-videos", type=int, default=None,
                   help=f"evaluate on the first N val videos (default all; --smoke {SMOKE_VIDEOS})")
    p.add_argument("--smoke", action="store_true", help="1 seed, 20 steps, 40 val videos (CI)")
    p.add_argument("--noise-sweep", action="store_true", help="rows A, C, J vs irrelevant fraction and asynchrony")
    p.add_argument("--sweep-rows", default=",".join(SWEEP_ROWS))
    p.add_argument("--sweep-videos", type=int, default=300, help="videos per split of each sweep corpus")
    p.add_argument("--store", default=DEFAULT_STORE, help="youcook2-mnc store of the main table")
    p.add_argument("--cache-dir", default=os.path.join(REPO, "data", "build", "ablation-noise"),
                   help="where the sweep corpora are built (once)")
    p.add_argument("--workdir", default=os.path.join(REPO, "workdir", "ablation"), help="training workdirs")
    p.add_argument("--out", default=None, help="output prefix (default results/ablation, smoke results/ablation_smoke)")
    p.add_argument("--label", default=None, help="title label (default 'full protocol' / 'smoke')")
    p.add_argument("--notes", default=None, help="markdown file appended to the report (hand-written discussion)")
    p.add_argument("--reproduce", default=None, metavar="JSON",
                   help="after training, compare every run (and the base) with the same row and seed of "
                        "this earlier <out>.json; writes <out>_reproduce.json")
    p.add_argument("--report-only", action="store_true",
                   help="re-render <out>.md/.png from <out>.json (e.g. after editing --notes); trains nothing")
    p.add_argument("--jax-cache", default=os.path.join(REPO, "workdir", "jax-cache"),
                   help="persistent XLA compilation cache ('' = off): seeds of a row reuse its compilation")
    args = p.parse_args(argv)
    args.rows = parse_rows(args.rows)
    args.sweep_rows = parse_rows(args.sweep_rows)
    if args.seeds is None:
        args.seeds = 1 if (args.smoke or args.noise_sweep) else 3
    if args.steps is None:
        args.steps = SMOKE_STEPS if args.smoke else FULL_STEPS
    if args.base_steps is None:
        args.base_steps = SMOKE_BASE_STEPS if args.smoke else BASE_STEPS
    if args.max_videos is None and args.smoke:
        args.max_videos = SMOKE_VIDEOS
    if args.smoke and args.noise_sweep and args.sweep_videos == 300:
        args.sweep_videos = SMOKE_VIDEOS
    if args.out is None:
        args.out = os.path.join(REPO, "results", "ablation_smoke" if args.smoke else "ablation")
    if args.label is None:
        args.label = "smoke" if args.smoke else "full protocol"
    for name in ("seeds", "steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1")
    if args.base_steps < 0:
        raise SystemExit("--base-steps must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    command = "python benchmarks/ablation.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    os.makedirs(args.workdir, exist_ok=True)
    if args.jax_cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", args.jax_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    if args.report_only:
        with open(args.out + ".json") as fh:
            saved = json.load(fh)
        args.label = saved.get("label", args.label)
        write_table_report(args.out, saved["runs"], args, saved["command"], saved["wall_s"],
                           machine=saved.get("machine"), date=saved.get("date"), rendered_by=command,
                           base=saved.get("base"), revision=saved.get("revision"))
        return {"out": args.out, "runs": saved["runs"], "base": saved.get("base")}
    if args.noise_sweep:
        run_noise_sweep(args, command)
        return {"out": args.out + "_noise"}
    t0 = time.perf_counter()
    revision = git_revision()  # of the code that runs (later edits do not change it)
    base = ensure_base(args)
    init = os.path.join(REPO, base["workdir"]) if base else ""
    runs = []
    for seed in range(args.seeds):
        for row in args.rows:
            print(f"[ablation] row {row} seed {seed} ({args.steps} steps)", file=sys.stderr, flush=True)
            run = train_and_eval(row, seed, steps=args.steps, store=args.store, init=init,
                                 workdir=os.path.join(args.workdir, f"{row}_s{seed}"), max_videos=args.max_videos)
            runs.append(run)
            print(f"[ablation]   {json.dumps(run['time'])} clip R1 {run['metrics']['clip.R1']:.4f} "
                  f"bg DTW R1 {run['metrics']['para_bg.dtw.R1']:.4f} align {run['metrics']['align.dense_recall']:.4f}",
                  file=sys.stderr, flush=True)
            _dump(args.out + ".json", {"command": command, "label": args.label, "base": base, "runs": runs})
    wall = time.perf_counter() - t0
    _dump(args.out + ".json", {"command": command, "label": args.label, "wall_s": round(wall, 1),
                               "machine": machine_line(), "date": _now(), "revision": revision,
                               "cost_model": cost_model(runs), "base": base, "runs": runs})
    write_table_report(args.out, runs, args, command, wall, base=base, revision=revision)
    result = {"out": args.out, "runs": runs, "base": base}
    if args.reproduce:
        result["reproduce"] = compare_runs(args.reproduce, runs, base, command)
        _dump(args.out + "_reproduce.json", result["reproduce"])
        print(json.dumps(result["reproduce"]["summary"], indent=1))
    return result



if __name__ == "__main__":
    main()
