"""Reports of the Table 7 ablation benchmark (``benchmarks/ablation.py``): tables, claims, costs, plots.

The paper's orderings checked on every run (:data:`CLAIMS`), the aggregation of runs into
mean and sample std per row, the cost model that estimates the full protocol from measured
runs, the markdown reports and the plots.  Nothing here trains or evaluates a model.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
from typing import Any, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ROW_ORDER = ("A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "OT", "TempCLR")
METHODS = ("dtw", "cap_avg", "otam")
METHOD_NAMES = {"dtw": "DTW", "cap_avg": "Cap. Avg.", "otam": "OTAM"}
FULL_STEPS = 100
BASE_ROW = "A"  # the base's loss: clip-caption InfoNCE only
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


def rel_path(path: str) -> str:
    """``path`` relative to the repository when it lies inside it."""
    return os.path.relpath(path, REPO) if os.path.abspath(path).startswith(REPO) else path


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


def pct(stat: tuple[float, float, int], *, ranks: bool = False) -> str:
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
            out.append(verdict(agg, better, worse, key, text))
    return out


def verdict(agg, better: str, worse: str, key: str, text: str) -> tuple[str, str, str]:
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
        f"* **Date**: {date or now()}; **revision** {revision or git_revision()}; total wall time {wall_s / 60:.1f} min",
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
        lines.append(f"| {r} | {pct(a['clip.R1'])} | {pct(a['clip.R5'])} | {pct(a['clip.MR'], ranks=True)} | "
                     f"{pct(a['align.dense_recall'])} | {pct(a['align.dense_auc'])} | "
                     f"{pct(a['align.recall'])} | {pct(a['align.auc'])} | {loss} |")
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
                cells += [pct(a[f"{prefix}.{m}.R1"]), pct(a[f"{prefix}.{m}.R5"])]
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


def now() -> str:
    """The local date and time, as reports print it."""
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


def plot_sweep(path: str, agg, rows: Sequence[str], levels: dict[str, Sequence[float]]) -> None:
    """Two metrics vs each noise axis; ``levels``: ``{"irrelevant_fraction": [...], "shift_std": [...]}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5))
    for col, (axis, levels, xlabel, scale) in enumerate((
            ("irrelevant_fraction", levels["irrelevant_fraction"], "irrelevant captions (%)", 100),
            ("shift_std", levels["shift_std"], "caption time-shift std (s)", 1))):
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
    return {"command": command, "reference": rel_path(reference_json), "date": now(), "machine": machine_line(),
            "summary": {"pairs": len(pairs), "identical": sum(p["identical"] for p in pairs),
                        "within_reference_std": sum(p["within_reference_std"] for p in pairs),
                        "max_abs_diff": max(p["max_abs_diff"] for p in pairs)},
            "pairs": pairs}


def write_sweep_report(args, runs: Sequence[dict[str, Any]], command: str, wall: float, revision: str,
                       base: dict[str, Any] | None, axis_levels: dict[str, Sequence[float]]) -> None:
    """``<out>_noise.md`` and ``.png`` of the noise sweep (``axis_levels``: the levels of each axis)."""
    agg = aggregate(runs, lambda r: (r["axis"], r["level"], r["row"]))
    lines = [f"# Noise sweep — {args.label}", "", f"* **Command**: `{command}`",
             f"* **Date**: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}; "
             f"revision {revision}; wall {wall / 60:.1f} min",
             f"* **Machine**: {machine_line()}",
             f"* rows {', '.join(args.sweep_rows)}, {args.steps} steps, {args.seeds} seed(s), corpora of "
             f"{args.sweep_videos} videos per split in `{rel_path(args.cache_dir)}`; max_shift = 3 x shift_std; "
             + (f"every run post-trained from the base `{base['workdir']}` ({base['steps']} clip-only steps on "
                f"`{base['store']}`)." if base else "every run from a random init."), ""]
    for axis, title in (("irrelevant_fraction", "irrelevant fraction"), ("shift_std", "shift std (s)")):
        levels = axis_levels[axis]
        lines += [f"## vs {title}", "", "| row | " + " | ".join(
            f"{title} {lv:g}: bg DTW R@1 / align recall dense / reference" for lv in levels) + " |",
            "|---|" + "---|" * len(levels)]
        for row in args.sweep_rows:
            cells = [" / ".join(pct(agg[(axis, lv, row)][k]) for k in ("para_bg.dtw.R1", "align.dense_recall", "align.recall"))
                     for lv in levels]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        ts = [pct(agg[(axis, lv, args.sweep_rows[0])]["align.timestamp_recall"]) for lv in levels]
        lines += ["| corpus timestamps | " + " | ".join(f"- / {t} / -" for t in ts) + " |", ""]
    with open(args.out + "_noise.md", "w") as fh:
        fh.write("\n".join(lines))
    plot_sweep(args.out + "_noise.png", agg, args.sweep_rows, axis_levels)
