"""Sinkhorn variants on identical inputs, under jit, in one process.

    python benchmarks/sinkhorn.py            # full run (a few minutes on a 2-core CPU)
    python benchmarks/sinkhorn.py --quick    # fewer repeats and sizes (< 3 min here)
    python benchmarks/sinkhorn.py --quick --check   # exit 1 when a target ratio is missed

Problem sets (all float32 inputs unless a variant says otherwise):

* ``video_paragraph``: Norton's video-paragraph OT (spec 2.4.6): 128 x 128 sequence pairs of
  L = 8 clips -> 16384 problems of 9 x 9 with the alignable prompt bucket, epsilon 0.1,
  similarities uniform in [0, 1], bucket value = their 30% quantile.
* ``video_paragraph_nobucket``: the same 16384 problems of 8 x 8 without the bucket.
* ``video_paragraph_ragged``: the bucket problems with masks (2..8 valid rows/columns).
* ``clip_caption``: one 1024 x 1024 problem on raw dot-product logits of synthetic
  768-d pooled embeddings (shared offset + per-video topic + noise, as VideoCLIP's
  un-normalised means), epsilon 1 (spec 2.3); the log-range exceeds float32's exp range.
* ``sweep_batch`` / ``sweep_side``: time vs number of 9 x 9 bucket problems and vs the
  side of one clip-caption-like problem.

Every variant gets the same scores ``S``, weights ``a``/``b`` and epsilon and runs the same
50 iterations (rows first, then columns; ott-jax is fed the transposed problem so that its
column-first updates are the same sequence).  Measured: compile time, median run time
over repeats after a warm-up, problems/s, the marginal error (L1 of row-sum plus
column-sum errors per problem, as ``SinkhornResult.marginal_error``; max and mean over
the batch, computed by this harness from each plan in float64) and the plan error (max
absolute difference to a float64 2000-iteration solution of the same problem).  Writes
``sinkhorn_benchmark.json`` and ``sinkhorn_benchmark.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

from data_pipeline.tf_utils import configure_tensorflow_environment  # noqa: E402

configure_tensorflow_environment()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sinkhorn_variants import (  # noqa: E402
    EARLY_MAX_ITERS, EARLY_TOL, ITERS, REF_ITERS, SWEEP_VARIANTS, VARIANTS, Prepared, Problem, Variant,
    attach_reference, clip_caption_problem, video_paragraph_problem,
)

# (problem, numerator variants (the fastest one counts), denominator, minimum ratio, what)
TARGETS = [
    ("video_paragraph", ("torch_loop", "torch_loop_1t", "torch_loop_cuda"), "norton_auto", 5.0, "default vs reference PyTorch loop"),
    ("video_paragraph", ("ott_fixed",), "norton_auto", 3.0, "default vs ott-jax, same fixed iterations"),
    ("clip_caption", ("torch_loop", "torch_loop_1t", "torch_loop_cuda"), "norton_auto", 2.0, "default vs reference PyTorch loop"),
]
TARGET_VARIANTS = {name for _, nums, den, _, _ in TARGETS for name in (*nums, den)}
# The default's marginal error at the video-paragraph geometry must be <= this.
TARGET_MARGINAL_ERROR = 1e-5


# --------------------------------------------------------------------------- measuring


def _block(x):
    return jax.block_until_ready(x) if not hasattr(x, "numpy") else x


def marginal_errors(plan: np.ndarray, problem: Problem) -> np.ndarray:
    plan = np.nan_to_num(plan.astype(np.float64), nan=np.inf)
    rows = np.abs(plan.sum(-1) - problem.a).sum(-1)
    cols = np.abs(plan.sum(-2) - problem.b).sum(-1)
    return rows + cols  # [B]


def measure(variant: Variant, problem: Problem, *, repeats: int, budget_s: float,
            with_errors: bool = True, keep: dict[str, Prepared] | None = None) -> dict[str, Any]:
    prepared = variant.prepare(problem)
    if keep is not None:
        keep[variant.name] = prepared
    t0 = time.perf_counter()
    out = _block(prepared.run())  # warm-up (also the first call of non-jitted solvers)
    first_s = time.perf_counter() - t0
    n = max(1, min(repeats, int(budget_s / max(first_s, 1e-6))))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = _block(prepared.run())
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    row: dict[str, Any] = dict(
        variant=variant.name, family=variant.family, problem=problem.name, batch=problem.batch,
        shape=list(problem.scores.shape[1:]), epsilon=problem.epsilon,
        compile_s=prepared.compile_s, median_s=median, min_s=min(times), repeats=n,
        problems_per_s=problem.batch / median,
        iterations=prepared.iterations() if prepared.iterations else ITERS,
    )
    plan = prepared.to_numpy(out)
    row["finite"] = bool(np.all(np.isfinite(plan)))
    if prepared.plan_kind == "bucket_scaled":
        row["marginal_error_max"] = row["marginal_error_mean"] = None
        if with_errors and problem.reference is not None:
            # The public API returns the plan x (valid rows + valid columns), bucket dropped.
            m, n_ = plan.shape[-2:]
            rm, cm = problem.extra.get("row_mask_grid"), problem.extra.get("col_mask_grid")
            rows_valid = np.full(problem.batch, m) if rm is None else rm.reshape(problem.batch, m).sum(-1)
            cols_valid = np.full(problem.batch, n_) if cm is None else cm.reshape(problem.batch, n_).sum(-1)
            scale = (rows_valid + cols_valid).astype(np.float64)[:, None, None]
            scaled = plan.reshape(problem.batch, m, n_).astype(np.float64) / scale
            row["plan_error_max"] = float(np.max(np.abs(scaled - problem.reference[:, :m, :n_])))
        return row
    err = marginal_errors(plan, problem)
    row["marginal_error_max"] = float(np.max(err))
    row["marginal_error_mean"] = float(np.mean(err))
    if with_errors and problem.reference is not None:
        row["plan_error_max"] = float(np.max(np.abs(plan.astype(np.float64) - problem.reference)))
    return row


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def print_rows(rows: list[dict[str, Any]], base: str = "norton_log") -> None:
    by = {r["variant"]: r for r in rows}
    base_t = by[base]["median_s"] if base in by else None
    print(f"  {'variant':<20} {'compile s':>9} {'median ms':>10} {'x log':>6} {'problems/s':>11} "
          f"{'iters':>5} {'marg.err max':>12} {'plan err':>9}")
    for r in rows:
        rel = r["median_s"] / base_t if base_t else None
        print(f"  {r['variant']:<20} {_fmt(r['compile_s'], '9.2f')} {r['median_s'] * 1e3:10.1f} "
              f"{_fmt(rel, '6.2f')} {r['problems_per_s']:11.3g} {r['iterations']:5d} "
              f"{_fmt(r.get('marginal_error_max'), '12.2e')} {_fmt(r.get('plan_error_max'), '9.1e')}"
              + ("" if r["finite"] else "  NON-FINITE"))


def head_to_head(prepared: dict[str, Prepared], rounds: int) -> dict[str, float]:
    """Median times of solvers run in turns (round-robin), so that all see the same load."""
    times: dict[str, list[float]] = {name: [] for name in prepared}
    for _ in range(rounds):
        for name, p in prepared.items():
            t0 = time.perf_counter()
            _block(p.run())
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def run_problem(problem: Problem, names: list[str], *, repeats: int, budget_s: float,
                reference: bool = True, rounds: int = 0) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    if reference:
        attach_reference(problem)
    extra = {k: v for k, v in problem.extra.items() if isinstance(v, (int, float))}
    print(f"\n{problem.name}: batch {problem.batch} x {list(problem.scores.shape[1:])}, eps {problem.epsilon}"
          + (f", reference marginal error {problem.reference_marginal_error:.1e}" if reference else "")
          + (f", {extra}" if extra else "") + f" (reference {time.perf_counter() - t0:.1f}s)")
    rows = []
    keep: dict[str, Prepared] = {}
    for name in names:
        variant = VARIANTS[name]
        if not variant.applies(problem):
            continue
        row = measure(variant, problem, repeats=repeats, budget_s=budget_s, with_errors=reference,
                      keep=keep if name in TARGET_VARIANTS else None)
        row.update(extra)
        rows.append(row)
    print_rows(rows)
    if rounds and any(t[0] == problem.name for t in TARGETS) and keep:
        medians = head_to_head(keep, rounds)
        print(f"  head-to-head ({rounds} rounds, round-robin): "
              + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in medians.items()))
        for row in rows:
            if row["variant"] in medians:
                row["head_to_head_median_s"] = medians[row["variant"]]
                row["head_to_head_rounds"] = rounds
    return rows


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    index = {(r["problem"], r["variant"]): r for r in results}
    def seconds(row):
        return row.get("head_to_head_median_s", row["median_s"])

    for problem, nums, den, minimum, what in TARGETS:
        present = [index[(problem, n)] for n in nums if (problem, n) in index]
        if not present or (problem, den) not in index:
            continue
        fastest = min(present, key=seconds)
        ratio = seconds(fastest) / seconds(index[(problem, den)])
        out.append(dict(problem=problem, numerator=fastest["variant"], denominator=den, ratio=ratio,
                        target=minimum, met=bool(ratio >= minimum), what=what,
                        timing="head-to-head median" if "head_to_head_median_s" in fastest else "median"))
    vp = index.get(("video_paragraph", "norton_auto"))
    if vp is not None:
        err = vp["marginal_error_max"]
        out.append(dict(problem="video_paragraph", numerator="marginal_error_max", denominator=None,
                        ratio=err, target=TARGET_MARGINAL_ERROR, met=bool(err <= TARGET_MARGINAL_ERROR),
                        what="default's max marginal error at 50 iterations <= 1e-5"))
    return out


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 10))
    for ax, problem in zip(axes[0], ["video_paragraph", "clip_caption"]):
        rows = [r for r in results if r["problem"] == problem and r.get("plan_error_max") is not None]
        for r in rows:
            err = r["plan_error_max"] if np.isfinite(r["plan_error_max"]) else 1.0
            ax.scatter(r["median_s"] * 1e3, max(err, 1e-12), s=40)
            ax.annotate(r["variant"] + ("" if r["finite"] else " (NaN)"), (r["median_s"] * 1e3, max(err, 1e-12)),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("median run time [ms]")
        ax.set_ylabel("max |plan - float64 2000-iteration plan|")
        ax.set_title(f"{problem}: time vs error")
        ax.grid(True, which="both", alpha=0.3)
    for ax, (prefix, key, label) in zip(axes[1], [("sweep_batch", "batch", "number of 9x9 bucket problems"),
                                                   ("sweep_side", "side", "matrix side (one problem)")]):
        rows = [r for r in results if r["problem"].startswith(prefix)]
        for name in SWEEP_VARIANTS:
            pts = sorted((r[key], r["median_s"] * 1e3) for r in rows if r["variant"] == name)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("median run time [ms]")
        ax.set_title(f"{prefix}: time vs size")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"Sinkhorn variants, {ITERS} iterations, device {jax.devices()[0].device_kind}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes (< 3 minutes on CPU)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target ratio is missed")
    parser.add_argument("--out", type=Path, default=Path("results/sinkhorn"), help="output folder")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (smoke test of the harness only)")
    parser.add_argument("--variants", default="", help="comma-separated subset of: " + ", ".join(VARIANTS))
    args = parser.parse_args(argv)

    device = jax.devices()[0]
    import torch

    env = dict(
        device=f"{device.platform}: {device.device_kind}", jax=jax.__version__, torch=torch.__version__,
        torch_threads=torch.get_num_threads(), cpu_count=os.cpu_count(), python=platform.python_version(),
        machine=platform.machine(), quick=args.quick, tiny=args.tiny, iterations=ITERS,
        command=" ".join(["python benchmarks/sinkhorn.py", *(sys.argv[1:] if argv is None else argv)]),
    )
    print(f"device: {env['device']} | jax {env['jax']} | torch {env['torch']} ({env['torch_threads']} threads) "
          f"| {env['cpu_count']} CPUs | {ITERS} iterations")
    t_start = time.perf_counter()

    if args.tiny:
        repeats, budget, rounds = 1, 0.5, 1
        pairs, side, batches, sides = 64, 64, [64], [32]
    elif args.quick:
        repeats, budget, rounds = 3, 1.0, 5
        pairs, side, batches, sides = 16384, 1024, [1024, 16384], [256, 1024]
    else:
        repeats, budget, rounds = 11, 6.0, 11
        pairs, side, batches, sides = 16384, 1024, [1024, 4096, 16384, 65536], [128, 256, 512, 1024, 2048, 4096]
    chosen = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")

    def pick(names):
        return [n for n in names if not chosen or n in chosen]

    everything = list(VARIANTS)
    light = ["norton_auto", "norton_log", "norton_kernel", "ott_fixed", "torch_loop_1t"]
    ragged = ["norton_auto", "norton_log", "norton_kernel", "norton_stabilized", "norton_bucket_api"]
    if args.quick:
        light, ragged = light[:2] + light[-1:], ragged[:2]
    common = dict(repeats=repeats, budget_s=budget)

    results: list[dict[str, Any]] = []
    results += run_problem(video_paragraph_problem(pairs), pick(everything), rounds=rounds, **common)
    results += run_problem(clip_caption_problem(side), pick([n for n in everything if n != "norton_bucket_api"]),
                           rounds=rounds, **common)
    if not args.tiny:
        results += run_problem(video_paragraph_problem(pairs, bucket=False), pick(light), **common)
        results += run_problem(video_paragraph_problem(pairs, ragged=True), pick(ragged), **common)
    for batch in batches:
        problem = video_paragraph_problem(batch, seed=batch)
        problem.name = "sweep_batch"
        for r in run_problem(problem, pick(SWEEP_VARIANTS), reference=False, **common):
            results.append(dict(r, batch=batch))
    for s in sides:
        problem = clip_caption_problem(s, seed=s)
        problem.name = "sweep_side"
        for r in run_problem(problem, pick(SWEEP_VARIANTS), reference=False, **common):
            results.append(dict(r, side=s))

    checks = ratios(results)
    print("\ntargets (time ratios, same process):")
    for c in checks:
        lhs = (f"{c['numerator']} / {c['denominator']} = {c['ratio']:.2f}x" if c["denominator"]
               else f"{c['numerator']} = {c['ratio']:.2e}")
        op = ">=" if c["denominator"] else "<="
        print(f"  {c['problem']:<16} {lhs:<44} target {op} {c['target']:g}  {'met' if c['met'] else 'MISSED'}"
              f"  ({c['what']})")
    env["wall_s"] = time.perf_counter() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "sinkhorn_benchmark" + ("_quick" if args.quick else "") + ("_tiny" if args.tiny else "")
    (args.out / f"{stem}.json").write_text(json.dumps(dict(env=env, targets=checks, results=results), indent=1))
    plot(results, args.out / f"{stem}.png")
    print(f"\nwrote {args.out / (stem + '.json')} and .png in {env['wall_s']:.0f}s")
    if args.check and not all(c["met"] for c in checks):
        print("a target was missed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
