"""Measures Norton's Sinkhorn, loss and full train step on this machine's accelerator; writes JSON.

    python benchmarks/accelerator_check.py                 # on a GPU/TPU host, < 8 minutes
    python benchmarks/accelerator_check.py --smoke         # tiny sizes on CPU (the test suite)

Sections (each timed as medians of repeated runs after a warm-up, in one process):

1. ``sinkhorn``: the target problems of ``benchmarks/sinkhorn.py`` (16384 video-paragraph
   problems of 9 x 9 with the bucket; one 1024 x 1024 clip-caption problem at epsilon 1) for
   ours (``norton_auto``), ott-jax (``ott_fixed``, the same 50 iterations) and the reference's
   PyTorch loop on CUDA when torch sees a GPU (else on the CPU, marked so), with the ratios.
2. ``paper_loss``: Norton's loss + gradient at the paper's loss geometry (B = 1024 clips,
   18 frame / 31 word tokens, d = 768) for ours against the PyTorch formulation
   (``benchmarks/torch_norton_loss.py``) on the same device when torch sees it.
3. ``full_step``: the jitted train step at 64 videos (1024 clips) per device with bfloat16
   encoders (configs/pretrain.py's model, LayerNorm-only training): steps/s, sequences/s,
   model FLOPs utilisation (analytic FLOPs of the step, ``train_step_full.model_flops``, over
   the chip's peak from :data:`PEAK_FLOPS`), XLA's compiled memory and the device's peak
   memory in use.

Writes ``results/accelerator/<device>.json`` (``--out`` overrides).  ``--smoke`` runs every
section at tiny sizes with the tiny model (no timing claims) in well under a minute.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline.tf_utils import configure_tensorflow_environment  # noqa: E402

configure_tensorflow_environment()

import jax  # noqa: E402
import numpy as np  # noqa: E402

#: Dense bfloat16 peak FLOP/s per chip, keyed by a substring of ``device.device_kind``
#: (vendor data sheets; the first match wins, so the longer names come first).
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("TPU v6 lite", 918e12), ("TPU v6e", 918e12),
    ("TPU v5 lite", 197e12), ("TPU v5e", 197e12),
    ("TPU v5p", 459e12), ("TPU v5", 459e12),
    ("TPU v4", 275e12), ("TPU v3", 123e12), ("TPU v2", 45e12),
    ("H200", 989e12), ("H100", 989e12), ("GH200", 989e12),
    ("A100", 312e12), ("A10G", 70e12), ("A10", 125e12), ("L40S", 362e12), ("L4", 121e12),
    ("V100", 125e12), ("T4", 65e12),
)
SECTIONS = ("sinkhorn", "paper_loss", "full_step")


def peak_flops(device_kind: str) -> float | None:
    for key, value in PEAK_FLOPS:
        if key.lower() in device_kind.lower():
            return value
    return None


def device_name(device) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", f"{device.platform}_{device.device_kind}").strip("_").lower()


def torch_device() -> str:
    try:
        import torch
    except ImportError:
        return "none"
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_memory(device) -> dict[str, Any]:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats:
        return {}
    keys = ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")
    return {k: int(stats[k]) for k in keys if k in stats}


# --------------------------------------------------------------------------- sections


def sinkhorn_section(smoke: bool, repeats: int) -> dict[str, Any]:
    import sinkhorn as bench
    from sinkhorn_variants import VARIANTS, clip_caption_problem, video_paragraph_problem

    problems = ([video_paragraph_problem(16), clip_caption_problem(side=16, dim=8)] if smoke
                else [video_paragraph_problem(128 * 128), clip_caption_problem()])
    names = ["norton_auto", "ott_fixed", "torch_loop_cuda" if torch_device() == "cuda" else "torch_loop"]
    rows = []
    for problem in problems:
        for name in names:
            variant = VARIANTS[name]
            if not variant.applies(problem):
                continue
            rows.append(bench.measure(variant, problem, repeats=repeats, budget_s=20.0, with_errors=False))
    index = {(r["problem"], r["variant"]): r["median_s"] for r in rows}
    ratios = {f"{p.name}: {n} / norton_auto": index[(p.name, n)] / index[(p.name, "norton_auto")]
              for p in problems for n in names[1:] if (p.name, n) in index and (p.name, "norton_auto") in index}
    return {"torch_device": torch_device(), "rows": rows, "ratios": ratios}


def paper_loss_section(smoke: bool, repeats: int) -> dict[str, Any]:
    import torch_norton_loss

    from train_step_full import compile_loss_and_grad, median_time

    b, t_len, f_len, d = (32, 7, 6, 16) if smoke else (1024, 31, 18, 768)
    rng = np.random.default_rng(0)
    pv, pt = (rng.normal(size=(b, d)).astype(np.float32) for _ in range(2))
    tv = rng.normal(size=(b, f_len, d)).astype(np.float32)
    tt = rng.normal(size=(b, t_len, d)).astype(np.float32)
    mv = (rng.uniform(size=(b, f_len)) > 0.3).astype(np.float32)
    mv[:, 1] = 1
    mt = (rng.uniform(size=(b, t_len)) > 0.3).astype(np.float32)
    mt[:, 1] = 1
    compiled, args, compile_s = compile_loss_and_grad(pv, pt, tv, tt, mv, mt)
    loss_jax = float(jax.block_until_ready(compiled(*args))[0])
    jax_s, _ = median_time(lambda: jax.block_until_ready(compiled(*args)), repeats)
    out: dict[str, Any] = {"clips": b, "loss_jax": loss_jax, "jax_compile_s": compile_s, "jax_s": jax_s}
    dev = torch_device()
    if dev != "none":
        import torch

        targs = [torch.tensor(x, requires_grad=True, device=dev) for x in (pv, pt, tv, tt)]
        tm = [torch.tensor(x, device=dev) for x in (mv, mt)]

        def run():
            for x in targs:
                x.grad = None
            loss = torch_norton_loss.norton_loss(*targs, *tm)
            loss.backward()
            if dev == "cuda":
                torch.cuda.synchronize()
            return float(loss.detach())

        out["loss_torch"] = run()
        out["torch_s"], _ = median_time(run, repeats)
        out["torch_device"] = dev
        out["speedup_vs_torch"] = out["torch_s"] / jax_s
        out["loss_rel_diff"] = abs(loss_jax - out["loss_torch"]) / max(abs(out["loss_torch"]), 1e-12)
    return out


def full_step_section(smoke: bool, repeats: int) -> dict[str, Any]:
    from norton_jax.models.config import ModelConfig, tiny_model_config
    from norton_jax.training.step import shard_batch
    from train_step_full import (CLIPS_PER_VIDEO, build_jax_step, flops_of, median_time, memory_of,
                                 model_flops, paper_model, synthetic_batch)

    videos = 2 if smoke else 64
    config = (ModelConfig.from_any(tiny_model_config()).replace(
        dtype="bfloat16", num_hidden_text_layers=1, num_hidden_video_layers=1) if smoke
              else paper_model("bfloat16", remat=False, dropout=True))
    clips = videos * CLIPS_PER_VIDEO
    step, state, _, mesh, parts = build_jax_step(config)
    batch = shard_batch(synthetic_batch(clips), mesh)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    memory, xla_flops = memory_of(compiled), flops_of(compiled)
    holder = {"state": state}

    def run():
        holder["state"], m = compiled(holder["state"], parts.frozen, parts.rest, batch)
        holder["metrics"] = jax.block_until_ready(m)

    run()  # warm-up
    step_s, times = median_time(run, repeats)
    flops = model_flops(clips, config)
    device = jax.devices()[0]
    peak = peak_flops(device.device_kind)
    metrics = jax.device_get(holder["metrics"])
    return {
        "videos_per_device": videos, "clips": clips, "dtype": config.dtype, "model": "tiny" if smoke else "paper",
        "compile_s": compile_s, "step_s": step_s, "step_times_s": times, "steps_per_s": 1 / step_s,
        "sequences_per_s": clips / 8 / step_s, "model_flops": flops, "xla_cost_analysis_flops": xla_flops,
        "achieved_flops_per_s": flops / step_s, "peak_flops_per_s": peak,
        "mfu": None if peak is None else flops / step_s / peak,
        "loss": float(metrics["loss_total"]), "finite": bool(metrics["finite"]),
        "compiled_memory": memory, "device_memory": device_memory(device),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any backend (the test suite)")
    parser.add_argument("--out", default="", help="JSON path (default results/accelerator/<device>.json)")
    parser.add_argument("--repeats", type=int, default=0, help="timed repeats per measurement (default 5, smoke 2)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="subset of: " + ", ".join(SECTIONS))
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="skip the sections left once this many seconds have passed (default 450)")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    repeats = args.repeats or (1 if args.smoke else 5)
    device = jax.devices()[0]
    name = device_name(device) + ("_smoke" if args.smoke else "")
    out = Path(args.out) if args.out else Path("results") / "accelerator" / f"{name}.json"
    report: dict[str, Any] = {
        "device": str(device), "device_kind": device.device_kind, "platform": device.platform,
        "num_devices": jax.device_count(), "jax": jax.__version__, "smoke": args.smoke,
        "torch_device": torch_device(), "command": " ".join(["python", "benchmarks/accelerator_check.py",
                                                             *(argv if argv is not None else sys.argv[1:])]),
        "skipped_sections": [], "section_s": {},
    }
    start = time.perf_counter()
    runners = {"sinkhorn": sinkhorn_section, "paper_loss": paper_loss_section, "full_step": full_step_section}
    for section in sections:
        if time.perf_counter() - start > args.budget_s:
            report["skipped_sections"].append(section)
            print(f"accelerator_check: skipping {section} (over the {args.budget_s:.0f} s budget)", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        report[section] = runners[section](args.smoke, repeats)
        report["section_s"][section] = time.perf_counter() - t0
        print(f"accelerator_check: {section} done in {report['section_s'][section]:.1f} s", file=sys.stderr, flush=True)
    report["device_memory"] = device_memory(device)
    report["total_s"] = time.perf_counter() - start
    from data_pipeline import fileio

    fileio.makedirs(str(out.parent))
    fileio.atomic_write_json(str(out), report, indent=2)
    print(f"accelerator_check: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from norton_jax.cli import run

    sys.exit(run(main, sys.argv[1:], prog="accelerator_check"))
