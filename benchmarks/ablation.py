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
import datetime
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from typing import Any, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from data_pipeline.tf_utils import configure_tensorflow_environment  # noqa: E402

configure_tensorflow_environment()

import numpy as np  # noqa: E402

ROW_ORDER = ("A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "OT", "TempCLR")
TASKS = ("youcook2_clip", "youcook2_paragraph", "youcook2_paragraph_bg", "htm_align")
METHODS = ("dtw", "cap_avg", "otam")
METHOD_NAMES = {"dtw": "DTW", "cap_avg": "Cap. Avg.", "otam": "OTAM"}
DEFAULT_STORE = os.path.join(REPO, "data", "build", "youcook2-mnc")
FULL_STEPS = 100
BASE_STEPS = 300  # clip-only base (the `make demo` length); 0 = rows start from a random init
BASE_ROW = "A"  # the base's loss: clip-caption InfoNCE only
SMOKE_STEPS = 20
SMOKE_BASE_STEPS = 10
SMOKE_VIDEOS = 40
IRRELEVANT_LEVELS = (0.0, 0.25, 0.5, 0.75)
SHIFT_LEVELS = (0.0, 4.0, 8.0, 12.0)  # shift_std in s; max_shift = 3 * shift_std
SWEEP_ROWS = ("A", "C", "J")

#: Paper orderings checked automatically: (better, worse, metric keys, what the paper says).
#: Table 7 reports clip retrieval and DTW paragraph retrieval without and with background.
PARA = ("para.dtw.R1", "para_bg.dtw.R1")
CAP_AVG = ("para.cap_avg.R1", "para_bg.cap_avg.R1")
ALIGN = ("align.dense_recall", "align.recall")
CLAIMS = (
    ("B", "A", ("clip.R1",), "FNE helps clip retrieval (B > A)"),
    ("C", "B", PARA, "the OT video-paragraph loss helps (C > B)"),
    ("D", "C", PARA, "max-token beats mean-pooled similarity (D > C)"),
    ("G", "D", PARA, "log-sum-exp (alpha 1) beats max-token (G > D)"),
    ("G", "C", PARA, "fine-grained OT beats mean-pooled OT (G > C)"),
    ("J", "G", PARA, "the prompt bucket helps (J > G)"),
    ("J", "H", PARA, "30% bucket beats 10% (J > H)"),
    ("J", "I", PARA, "30% bucket beats 50% (J > I)"),
    ("J", "A", PARA + ("clip.R1",), "Norton beats clip-only training (J > A)"),
    ("OT", "TempCLR", PARA, "OT beats the soft-DTW sequence loss (OT > TempCLR)"),
    ("J", "TempCLR", PARA, "Norton beats TempCLR-style soft-DTW (J > TempCLR)"),
    ("J", "A", CAP_AVG, "Norton beats clip-only training on Cap. Avg. (J > A)"),
    ("J", "TempCLR", CAP_AVG, "Norton beats TempCLR on Cap. Avg. (paper text: about +1 R@1)"),
    ("J", "A", ALIGN, "Norton aligns noisy narration better than A (J > A)"),
    ("J", "G", ALIGN, "the bucket helps align noisy narration (J > G)"),
)


# ---------------------------------------------------------------------------------------
# Configs and single runs
# ---------------------------------------------------------------------------------------


def _ablation_module():
    path = os.path.join(REPO, "configs", "ablation.py")
    spec = importlib.util.spec_from_file_location("norton_configs_ablation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    config = _ablation_module().get_config(row)
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


def _rel(path: str) -> str:
    return os.path.relpath(path, REPO) if os.path.abspath(path).startswith(REPO) else path


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
# Aggregation and reports
# ---------------------------------------------------------------------------------------


def aggregate(runs: Sequence[dict[str, Any]], key_fn) -> dict[Any, dict[str, tuple[float, float, int]]]:
    """``{group: {metric: (mean, std, n)}}`` with the sample std (0 for one run)."""
    groups: dict[Any, list[dict[str, float]]] = {}
    for r in runs:
        groups.setdefault(key_fn(r), []).append(r["metrics"])
    out = {}
    for g, ms in groups.items():
        out[g] = {}
        for k in ms[0]:
            v = np.asarray([m[k] for m in ms], np.float64)
            out[g][k] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v))
    return out


def _pct(stat: tuple[float, float, int], *, ranks: bool = False) -> str:
    mean, std, n = stat
    if ranks:
        return f"{mean:.0f}" if n == 1 else f"{mean:.0f} ± {std:.0f}"
    return f"{100 * mean:.1f}" if n == 1 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    import jax

    return (f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
            f"Python {platform.python_version()}, JAX {jax.__version__} on {jax.default_backend()}; "
            f"load average at the end {load}")


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        # Outputs under results/ (this script's own among them) do not make the code dirty.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cost_model(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per-run cost model from measured runs: fixed train cost, per-step cost, evaluation."""
    steps = np.asarray([r["steps"] for r in runs], np.float64)
    step_wall = np.asarray([r["time"]["steady_step_wall_s"] for r in runs], np.float64)
    train_wall = np.asarray([r["time"]["train_wall_s"] for r in runs], np.float64)
    train_cpu = np.asarray([r["time"]["train_cpu_s"] for r in runs], np.float64)
    eval_wall = np.asarray([r["time"]["eval_wall_s"] for r in runs], np.float64)
    eval_cpu = np.asarray([r["time"]["eval_cpu_s"] for r in runs], np.float64)
    finite = step_wall[np.isfinite(step_wall)]
    per_step = float(np.median(finite)) if finite.size else 0.0  # no steady interval: all "fixed"
    fixed_wall = float(np.median(train_wall - steps * per_step))
    cpu_per_wall = float(np.median(train_cpu / train_wall))  # threads busy on average
    return {
        "per_step_wall_s": per_step,
        "fixed_train_wall_s": fixed_wall,
        "eval_wall_s": float(np.median(eval_wall)),
        "cpu_per_wall_train": cpu_per_wall,
        "per_step_cpu_s": per_step * cpu_per_wall,
        "fixed_train_cpu_s": fixed_wall * cpu_per_wall,
        "eval_cpu_s": float(np.median(eval_cpu)),
    }


def estimate_s(model: dict[str, float], *, runs: int, steps: int, cpu: bool) -> float:
    if cpu:
        return runs * (model["fixed_train_cpu_s"] + steps * model["per_step_cpu_s"] + model["eval_cpu_s"])
    return runs * (model["fixed_train_wall_s"] + steps * model["per_step_wall_s"] + model["eval_wall_s"])


def check_claims(agg: dict[str, dict[str, tuple[float, float, int]]]) -> list[tuple[str, str, str]]:
    """Each paper ordering -> (claim, metric, verdict) on this run's means (and stds)."""
    out = []
    for better, worse, keys, text in CLAIMS:
        if better not in agg or worse not in agg:
            continue
        for key in keys:
            out.append(_verdict(agg, better, worse, key, text))
    return out


def _verdict(agg, better: str, worse: str, key: str, text: str) -> tuple[str, str, str]:
    """One claim on one metric: the two means and whether the difference clears 2 s.e."""
    (mb, sb, nb), (mw, sw, nw) = agg[better][key], agg[worse][key]
    diff = mb - mw
    if nb > 1 and nw > 1:
        noise = math.sqrt(sb**2 / nb + sw**2 / nw)
        if diff == 0:
            verdict = "tie"
        elif abs(diff) > 2 * noise:
            verdict = ("holds" if diff > 0 else "reversed") + " (difference > 2 standard errors)"
        else:
            verdict = ("same sign" if diff > 0 else "reversed sign") + ", within noise"
    else:
        verdict = ("same sign" if diff > 0 else "reversed" if diff < 0 else "tie") + " (one seed: no error bar)"
    return text, f"`{key}` {100 * mb:.1f} vs {100 * mw:.1f}", verdict


def write_table_report(out: str, runs: list[dict[str, Any]], args, command: str, wall_s: float,
                       machine: str | None = None, date: str | None = None, rendered_by: str | None = None,
                       base: dict[str, Any] | None = None, revision: str | None = None) -> None:
    table_runs = list(runs) + ([base] if base else [])
    rows = [r for r in ("base",) + ROW_ORDER if any(x["row"] == r for x in table_runs)]
    agg = aggregate(table_runs, lambda r: r["row"])
    seeds = sorted({r["seed"] for r in runs})
    steps = runs[0]["steps"]
    counts = runs[0]["counts"]
    model = cost_model(runs)
    full_runs = len(ROW_ORDER) * 3
    sweep_runs = len(SWEEP_ROWS) * (len(IRRELEVANT_LEVELS) + len(SHIFT_LEVELS))
    lines = [
        f"# Norton ablation (Table 7) on youcook2-mnc — {args.label}",
        "",
        f"* **Command**: `{command}`",
        f"* **Date**: {date or _now()}; **revision** {revision or git_revision()}; total wall time {wall_s / 60:.1f} min",
        f"* **Machine**: {machine or machine_line()}",
        *([f"* Report re-rendered from `{os.path.basename(out)}.json` (no training) by `{rendered_by}`"]
          if rendered_by else []),
        (f"* **Base**: row {BASE_ROW}'s loss (clip-caption InfoNCE only) trained {base['steps']} steps from a "
         f"random init (seed 0), kept in `{base['workdir']}`; every row below is post-trained from it "
         "(all parameters), as Norton post-pretrains VideoCLIP. Row `base` is this model without post-training."
         if base else "* **Init**: every row starts from a random init (seed s), no base model."),
        f"* **Protocol**: tiny config (`configs/ablation.py:<row>`), {steps} training steps per run "
        f"(8 videos x 16 clips per step, lr warm-up 20 steps then linear decay to 0 at step {steps}), "
        f"seeds {seeds} (seed s = data order and dropout of every row"
        + ("" if base else " and the model init") + f"), corpus `{runs[0]['store']}` "
        f"(train split), evaluation on its val split"
        + (f" restricted to the first {runs[0]['max_videos']} videos" if runs[0].get("max_videos") else " (all videos)")
        + f": {counts['youcook2_clip']['clips']} clips of {counts['youcook2_clip']['videos']} videos "
        f"(clip R@1 chance {100 / counts['youcook2_clip']['clips']:.2f}%, paragraph R@1 chance "
        f"{100 / counts['youcook2_clip']['videos']:.2f}%), {counts['htm_align']['captions']} narration captions.",
        "* Numbers are percentages, mean ± sample std over seeds (no ± with one seed).",
        "",
        "## Clip retrieval and alignment of the noisy narration",
        "",
        "| row | clip R@1 | clip R@5 | clip MR | align recall (dense) | align AUC (dense) | "
        "align recall (reference windows) | align AUC (reference windows) | final train loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a = agg[r]
        losses = [x["train_loss_final"]["loss_total"] for x in table_runs if x["row"] == r]
        loss = f"{np.mean([v for v in losses if v is not None]):.3f}" if any(v is not None for v in losses) else "-"
        lines.append(f"| {r} | {_pct(a['clip.R1'])} | {_pct(a['clip.R5'])} | {_pct(a['clip.MR'], ranks=True)} | "
                     f"{_pct(a['align.dense_recall'])} | {_pct(a['align.dense_auc'])} | "
                     f"{_pct(a['align.recall'])} | {_pct(a['align.auc'])} | {loss} |")
    ts = agg[rows[0]]["align.timestamp_recall"][0]
    lines += ["", f"Recall of the corpus' own (shifted) narration timestamps, for reference: {100 * ts:.1f}.", ""]
    for prefix, title in (("para", "without background"), ("para_bg", "with background")):
        lines += [f"## Paragraph retrieval {title}", "",
                  "| row | " + " | ".join(f"{METHOD_NAMES[m]} R@1 | {METHOD_NAMES[m]} R@5" for m in METHODS) + " |",
                  "|---|" + "---|" * (2 * len(METHODS))]
        for r in rows:
            a = agg[r]
            cells = []
            for m in METHODS:
                cells += [_pct(a[f"{prefix}.{m}.R1"]), _pct(a[f"{prefix}.{m}.R5"])]
            lines.append(f"| {r} | " + " | ".join(cells) + " |")
        lines.append("")
    claims = check_claims(agg)
    if claims:
        lines += ["## The paper's orderings on this run", "",
                  "| paper's claim | this run | verdict |", "|---|---|---|"]
        lines += [f"| {t} | {m} | {v} |" for t, m, v in claims]
        lines.append("")
    lines += [
        "## Cost",
        "",
        f"Measured per run on this machine (medians over {len(runs)} runs): start-up "
        f"{model['fixed_train_wall_s']:.0f} s wall (init, compilation, first hard-negative plan), "
        f"{model['per_step_wall_s']:.2f} s wall per steady training step, evaluation "
        f"{model['eval_wall_s']:.0f} s wall; training kept {model['cpu_per_wall_train']:.2f} cores busy on average."
        + (f" The base took {base['time']['train_wall_s']:.0f} s to train and {base['time']['eval_wall_s']:.0f} s "
           "to evaluate (once; reused when it exists)." if base else ""),
        "",
        f"Estimated full protocol ({len(ROW_ORDER)} rows x 3 seeds x {FULL_STEPS} steps = {full_runs} runs, "
        "`python benchmarks/ablation.py`): "
        f"{estimate_s(model, runs=full_runs, steps=FULL_STEPS, cpu=False) / 60:.0f} min at this machine's load; "
        f"on an idle 2-core CPU between {estimate_s(model, runs=full_runs, steps=FULL_STEPS, cpu=True) / 120:.0f} "
        f"and {estimate_s(model, runs=full_runs, steps=FULL_STEPS, cpu=True) / 60:.0f} min "
        "(process CPU seconds / 2 .. / 1).",
        "",
        f"Estimated noise sweep ({len(SWEEP_ROWS)} rows x {len(IRRELEVANT_LEVELS) + len(SHIFT_LEVELS)} corpora x "
        f"1 seed x {FULL_STEPS} steps = {sweep_runs} runs, `python benchmarks/ablation.py --noise-sweep`), "
        "training and evaluation only: "
        f"{estimate_s(model, runs=sweep_runs, steps=FULL_STEPS, cpu=False) / 60:.0f} min at this machine's load, "
        f"{estimate_s(model, runs=sweep_runs, steps=FULL_STEPS, cpu=True) / 120:.0f}-"
        f"{estimate_s(model, runs=sweep_runs, steps=FULL_STEPS, cpu=True) / 60:.0f} min idle, plus building the "
        "8 corpus variants once (MiniLM embeddings are cached; not measured here).",
        "",
    ]
    if args.notes:
        with open(args.notes) as fh:
            lines += [fh.read().rstrip(), ""]
    lines += [f"Per-run numbers: `{os.path.basename(out)}.json`; plot: `{os.path.basename(out)}.png`.", ""]
    with open(out + ".md", "w") as fh:
        fh.write("\n".join(lines))
    plot_table(out + ".png", rows, agg, title=f"{args.label}; seeds {seeds}")


def _now() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def plot_table(path: str, rows: Sequence[str], agg, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("clip.R1", "clip R@1"), ("para.dtw.R1", "paragraph DTW R@1 (no bg)"),
              ("para_bg.dtw.R1", "paragraph DTW R@1 (bg)"), ("align.dense_recall", "alignment recall (dense)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    x = np.arange(len(rows))
    for ax, (key, name) in zip(axes, panels):
        means = [100 * agg[r][key][0] for r in rows]
        stds = [100 * agg[r][key][1] for r in rows]
        colors = ["tab:red" if r == "J" else "tab:gray" if r in ("OT", "TempCLR") else "tab:blue" for r in rows]
        ax.bar(x, means, yerr=stds, color=colors, capsize=2)
        ax.set_xticks(x, rows, rotation=60, fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("%")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    agg = aggregate(runs, lambda r: (r["axis"], r["level"], r["row"]))
    lines = [f"# Noise sweep — {args.label}", "", f"* **Command**: `{command}`",
             f"* **Date**: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}; "
             f"revision {revision}; wall {wall / 60:.1f} min",
             f"* **Machine**: {machine_line()}",
             f"* rows {', '.join(args.sweep_rows)}, {args.steps} steps, {args.seeds} seed(s), corpora of "
             f"{args.sweep_videos} videos per split in `{_rel(args.cache_dir)}`; max_shift = 3 x shift_std; "
             + (f"every run post-trained from the base `{base['workdir']}` ({base['steps']} clip-only steps on "
                f"`{base['store']}`)." if base else "every run from a random init."), ""]
    for axis, title in (("irrelevant_fraction", "irrelevant fraction"), ("shift_std", "shift std (s)")):
        levels = IRRELEVANT_LEVELS if axis == "irrelevant_fraction" else SHIFT_LEVELS
        lines += [f"## vs {title}", "", "| row | " + " | ".join(
            f"{title} {lv:g}: bg DTW R@1 / align recall dense / reference" for lv in levels) + " |",
            "|---|" + "---|" * len(levels)]
        for row in args.sweep_rows:
            cells = [" / ".join(_pct(agg[(axis, lv, row)][k]) for k in ("para_bg.dtw.R1", "align.dense_recall", "align.recall"))
                     for lv in levels]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        ts = [_pct(agg[(axis, lv, args.sweep_rows[0])]["align.timestamp_recall"]) for lv in levels]
        lines += ["| corpus timestamps | " + " | ".join(f"- / {t} / -" for t in ts) + " |", ""]
    with open(args.out + "_noise.md", "w") as fh:
        fh.write("\n".join(lines))
    plot_sweep(args.out + "_noise.png", agg, args.sweep_rows)


def plot_sweep(path: str, agg, rows: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5))
    for col, (axis, levels, xlabel, scale) in enumerate((
            ("irrelevant_fraction", IRRELEVANT_LEVELS, "irrelevant captions (%)", 100),
            ("shift_std", SHIFT_LEVELS, "caption time-shift std (s)", 1))):
        for ri, (key, name) in enumerate((("para_bg.dtw.R1", "paragraph DTW R@1 with bg (%)"),
                                          ("align.dense_recall", "alignment recall, dense (%)"))):
            ax = axes[ri, col]
            for row in rows:
                m = [100 * agg[(axis, lv, row)][key][0] for lv in levels]
                s = [100 * agg[(axis, lv, row)][key][1] for lv in levels]
                ax.errorbar([scale * lv for lv in levels], m, yerr=s, marker="o", capsize=2, label=row)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(name)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def _dump(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


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


def compare_runs(reference_json: str, runs: Sequence[dict[str, Any]], base: dict[str, Any] | None,
                 command: str) -> dict[str, Any]:
    """Each new run vs the run of the same row and seed in ``reference_json``.

    Per pair: the largest absolute metric difference (fractions; MR in ranks) and whether
    every metric is within the reference table's std of that row.
    """
    with open(reference_json) as fh:
        ref = json.load(fh)
    ref_runs = {(r["row"], r["seed"]): r for r in ref["runs"]}
    if ref.get("base") and base:
        ref_runs[("base", 0)] = ref["base"]
    stds = {row: {k: s for k, (_, s, _) in stats.items()}
            for row, stats in aggregate(ref["runs"], lambda r: r["row"]).items()}
    pairs = []
    for run in list(runs) + ([base] if base else []):
        other = ref_runs.get((run["row"], run["seed"]))
        if other is None:
            raise SystemExit(f"{reference_json}: no run of row {run['row']} seed {run['seed']} to compare with")
        diffs = {k: abs(run["metrics"][k] - other["metrics"][k]) for k in run["metrics"]
                 if np.isfinite(run["metrics"][k]) and np.isfinite(other["metrics"][k])}
        worst = max(diffs, key=diffs.get)
        row_std = stds.get(run["row"], {})
        within = all(d <= row_std.get(k, 0.0) + 1e-12 for k, d in diffs.items())
        pairs.append({"row": run["row"], "seed": run["seed"], "max_abs_diff": diffs[worst],
                      "max_abs_diff_metric": worst, "identical": max(diffs.values()) == 0.0,
                      "within_reference_std": within})
    return {"command": command, "reference": _rel(reference_json), "date": _now(), "machine": machine_line(),
            "summary": {"pairs": len(pairs), "identical": sum(p["identical"] for p in pairs),
                        "within_reference_std": sum(p["within_reference_std"] for p in pairs),
                        "max_abs_diff": max(p["max_abs_diff"] for p in pairs)},
            "pairs": pairs}


if __name__ == "__main__":
    main()
