"""Train-step and loss benchmark; prints JSON.

    python benchmarks/train_step.py [--quick] [--out results/train_step.json]

1. ``tiny_train_step``: steps/s and sequences/s of the tiny config's jitted train step on
   synthetic batches (model + both losses + Adam), on this machine's devices; and
   ``pipeline_vs_train``: sequences/s the tf.data pipeline delivers at that geometry from
   ``--store`` (default: the built youcook2-mnc corpus) over what the step consumes.
2. ``paper_loss``: one loss + gradient evaluation at the paper's loss geometry (B = 1024
   clips, N = 128 sequences, 18 frame and 31 word tokens, d = 768) for our jitted
   ``norton_loss`` against the reference formulation in PyTorch
   (``benchmarks/torch_norton_loss.py``) on the same inputs and CPU, with the ratio.
   Memory: XLA's compiled temp-buffer size for ours, the peak RSS growth of the
   PyTorch run, and the size of the dense ``[B, B, T, F]`` float32 tensor that the
   reference materialises (three times: products, masked, exp).

3. ``full_step``: one jitted train step at the paper's *model* geometry (configs/pretrain.py:
   768-d, 12 text / 6 video layers, LayerNorm-only training; both encoders, Norton's loss,
   backward, clipping, Adam) against the reference's step in PyTorch on the same inputs and
   weights (``benchmarks/train_step_full.py``): medians of repeated steps, both losses,
   ``speedup_vs_torch`` and ``peak_memory_ratio`` (ours / torch, peak RSS growth over the
   steps on both sides) plus XLA's compiled memory.  4 videos (64 clips) per step, 2 with
   ``--quick``; dropout off on both sides so that the losses compare.
4. ``compiled_memory``: XLA's compiled (not executed) memory of the full step at 16, 32 and
   64 videos per device, float32 / bfloat16 encoders, with / without ``model.remat``
   (docs/hardware.md's table); ``--quick`` compiles the 64-video rows only.

``--quick`` shrinks the paper loss geometry to B = 256 (same token counts and d) and uses
fewer repeats.  ``--sections`` runs a subset (comma-separated section names).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def tiny_train_step(repeats: int) -> dict:
    import ml_collections
    from norton_jax.models.config import tiny_model_config
    from norton_jax.models.dual_encoder import init_model
    from norton_jax.training.defaults import optim_config
    from norton_jax.training.step import (ModelParts, init_train_state, make_mesh, make_optimizer,
                                          make_train_step, replicate, shard_batch, split_model)

    videos_per_device = 8
    mesh = make_mesh()
    rows = videos_per_device * 16 * mesh.devices.size
    rng = np.random.default_rng(0)
    caps = rng.integers(1000, 2000, (rows, 32)).astype(np.int32)
    caps[:, 0], caps[:, 1] = 101, 102
    batch = dict(caps=caps, cmasks=np.ones((rows, 32), bool),
                 vfeats=rng.normal(size=(rows, 16, 512)).astype(np.float32),
                 vmasks=rng.uniform(size=(rows, 16)) > 0.2)
    model = init_model(tiny_model_config(), seed=0)
    parts, trainable = split_model(model, "all")
    tx, _ = make_optimizer(ml_collections.ConfigDict(optim_config()), 1000)
    parts = ModelParts(parts.graphdef, replicate(parts.frozen, mesh), replicate(parts.rest, mesh))
    state = replicate(init_train_state(trainable, tx, 0), mesh)
    step = make_train_step(parts, tx, mesh, loss_kwargs=dict(seq_len=8))
    sharded = shard_batch(batch, mesh)
    t0 = time.perf_counter()
    state, metrics = step(state, sharded)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0

    def run():
        nonlocal state
        state, m = step(state, sharded)
        jax.block_until_ready(m)

    t = median_time(run, repeats)
    return {"videos_per_device": videos_per_device, "clips": rows, "sequences": rows // 8,
            "compile_s": compile_s, "step_s": t, "steps_per_s": 1 / t, "sequences_per_s": rows / 8 / t}


def pipeline_vs_train(store: str, train_sequences_per_s: float, steps: int) -> dict:
    """Input-pipeline throughput at the tiny config's geometry vs. the train step's demand."""
    from data_pipeline.input_pipeline import PipelineConfig, TrainIterator

    it = TrainIterator(store, "train", PipelineConfig(videos_per_device=8, num_local_devices=1,
                                                      process_index=0, process_count=1, seed=0))
    for _ in range(2):  # tf.data start-up
        next(it)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    dt = time.perf_counter() - t0
    seq_per_s = steps * 8 * 16 / 8 / dt
    return {"store": store, "steps_timed": steps, "pipeline_sequences_per_s": seq_per_s,
            "train_sequences_per_s": train_sequences_per_s,
            "pipeline_over_train": seq_per_s / train_sequences_per_s}


def paper_geometry_memory(b: int = 1024) -> dict:
    """XLA's temp-buffer size of our loss+gradient at the paper geometry (compiled, not run)."""
    from norton_jax.losses import norton_loss

    t_len, f_len, d = 31, 18, 768
    spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    fn = jax.jit(jax.value_and_grad(lambda pv, pt, tv, tt, mv, mt: norton_loss(pv, pt, tv, tt, mv, mt)[0],
                                    argnums=(0, 1, 2, 3)))
    compiled = fn.lower(spec(b, d), spec(b, d), spec(b, f_len, d), spec(b, t_len, d),
                        spec(b, f_len), spec(b, t_len)).compile()
    mem = compiled.memory_analysis()
    temp = int(mem.temp_size_in_bytes)
    dense = b * b * t_len * f_len * 4
    return {"clips": b, "jax_xla_temp_bytes": temp, "dense_btf_tensor_bytes": dense,
            "reference_dense_tensors_bytes": 3 * dense,  # s, the masked product and exp(s)
            "jax_temp_over_dense_tensor": temp / dense}


def paper_loss(b: int, repeats: int) -> dict:
    import torch
    import torch_norton_loss
    from train_step_full import compile_loss_and_grad

    t_len, f_len, d = 31, 18, 768
    rng = np.random.default_rng(0)
    pv = rng.normal(size=(b, d)).astype(np.float32)
    pt = rng.normal(size=(b, d)).astype(np.float32)
    tv = rng.normal(size=(b, f_len, d)).astype(np.float32)
    tt = rng.normal(size=(b, t_len, d)).astype(np.float32)
    mv = np.ones((b, f_len), np.float32)
    mv[:, 0] = 0
    mv[:, 1:17] = rng.uniform(size=(b, 16)) > 0.3
    mt = np.zeros((b, t_len), np.float32)
    lengths = rng.integers(8, 30, size=b)
    for i, n in enumerate(lengths):
        mt[i, 1:n + 1] = 1

    # Ours: jitted loss + gradient w.r.t. the four float inputs.
    compiled, args, compile_s = compile_loss_and_grad(pv, pt, tv, tt, mv, mt)
    mem = compiled.memory_analysis()
    temp_bytes = int(getattr(mem, "temp_size_in_bytes", 0)) if mem is not None else None
    loss_jax, _ = compiled(*args)
    jax.block_until_ready(loss_jax)
    jax_s = median_time(lambda: jax.block_until_ready(compiled(*args)), repeats)

    # Reference formulation in PyTorch on the same inputs.
    torch.set_num_threads(os.cpu_count() or 1)
    targs = [torch.tensor(x, requires_grad=True) for x in (pv, pt, tv, tt)]
    tm = (torch.tensor(mv), torch.tensor(mt))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def torch_run():
        for x in targs:
            x.grad = None
        loss = torch_norton_loss.norton_loss(*targs, *tm)
        loss.backward()
        return loss

    loss_torch = torch_run().item()
    torch_s = median_time(torch_run, repeats)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    dense = b * b * t_len * f_len * 4
    return {
        "geometry": {"clips": b, "sequences": b // 8, "frame_tokens": f_len, "word_tokens": t_len, "dim": d},
        "loss_jax": float(loss_jax), "loss_torch": loss_torch,
        "jax_compile_s": compile_s, "jax_loss_and_grad_s": jax_s, "torch_loss_and_grad_s": torch_s,
        "speedup_vs_torch": torch_s / jax_s,
        "jax_xla_temp_bytes": temp_bytes,
        "torch_peak_rss_growth_bytes": int(max(rss1 - rss0, 0) * 1024),
        "dense_btf_tensor_bytes": dense,
        "jax_temp_below_dense_tensor": temp_bytes is not None and temp_bytes < dense,
    }


SECTIONS = ("tiny_train_step", "paper_loss", "full_step", "compiled_memory")


def compiled_memory_table(videos_list: tuple[int, ...]) -> dict:
    """Compiled memory of the full step per videos/device, encoder dtype and remat."""
    import train_step_full

    rows = []
    for videos in videos_list:
        for dtype in ("float32", "bfloat16"):
            for remat in (False, True):
                rows.append(train_step_full.compiled_memory(videos, dtype, remat))
                print(f"compiled_memory: {videos} videos {dtype} remat={remat}: "
                      f"{rows[-1]['peak_gb']:.2f} GB ({rows[-1]['compile_s']:.0f} s)", file=sys.stderr, flush=True)
    return {"source": f"XLA {jax.devices()[0].platform} compilation (memory_analysis), not a device run",
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="")
    parser.add_argument("--store", default="data/build/youcook2-mnc",
                        help="feature store for the pipeline-vs-train ratio (skipped if missing)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="comma-separated subset of: " + ", ".join(SECTIONS))
    parser.add_argument("--memory-videos", default="",
                        help="videos per device of the compiled_memory rows (default 16,32,64; --quick: 64)")
    args = parser.parse_args()
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    repeats = 3 if args.quick else 5
    report = {
        "device": str(jax.devices()[0]), "num_devices": jax.device_count(), "jax": jax.__version__,
        "machine": platform.machine(), "cpus": os.cpu_count(), "quick": args.quick,
        "command": " ".join(["python", *sys.argv]),
    }
    def save() -> None:  # after every section: a partial report survives an interruption
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                f.write(json.dumps(report, indent=2) + "\n")

    if "tiny_train_step" in sections:
        tiny = report["tiny_train_step"] = tiny_train_step(repeats * 2)
        report["pipeline_vs_train"] = (
            pipeline_vs_train(args.store, tiny["sequences_per_s"], 10 if args.quick else 30)
            if os.path.exists(os.path.join(args.store, "train.index.json")) else None)
        save()
    if "paper_loss" in sections:
        # One timed repeat at B = 1024: each loss+gradient is minutes on a 2-core CPU.
        report["paper_loss"] = paper_loss(256 if args.quick else 1024, 3 if args.quick else 1)
        report["paper_geometry_memory"] = paper_geometry_memory(1024)
        save()
    if "full_step" in sections:
        import train_step_full

        report["full_step"] = train_step_full.full_step(2 if args.quick else 4, repeats)
        save()
    if "compiled_memory" in sections:
        videos = (tuple(int(v) for v in args.memory_videos.split(",")) if args.memory_videos
                  else (64,) if args.quick else (16, 32, 64))
        report["compiled_memory"] = compiled_memory_table(videos)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
