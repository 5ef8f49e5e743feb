"""Throughput of the training input pipeline at the paper's batch geometry, printed as JSON.

    python benchmarks/input_pipeline.py                       # synthetic store (256 videos), all cores
    python benchmarks/input_pipeline.py --cores 1,2           # one pinned run per core count + ratio
    python benchmarks/input_pipeline.py --store DIR --split train --out results/input_pipeline.json

Geometry: 64 videos per device x 16 clips = 1024 clip-caption pairs = 128 sequences of 8 per
device step. Reported: sequences/s, clips/s and videos/s per host, after ``--warmup`` steps
(worker start-up, first reads). With ``--cores 1,2`` every count runs in its own subprocess
pinned to that many cores (``os.sched_setaffinity``), so the input workers (one per core
by default) and the main process share exactly those cores; ``scaling`` is the rate with
the most cores over the rate with the fewest, measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def make_synthetic_store(out_dir: str, num_videos: int, seed: int = 0) -> None:
    from data_pipeline.feature_store import FeatureStoreWriter, VideoRecord
    from data_pipeline.synthetic import random_video
    from data_pipeline.tokenization import tokenize_captions

    rng = np.random.default_rng(seed)
    with FeatureStoreWriter(out_dir, "train", videos_per_shard=64) as w:
        for i in range(num_videos):
            # HowTo100M-like lengths: a few minutes per video
            v = random_video(rng, f"bench_{i:05d}", min_seconds=120, max_seconds=480)
            w.add(VideoRecord(v["video_id"], v["features"], v["starts"], v["ends"], tokenize_captions(v["texts"])))


def measure(store: str, split: str, *, videos_per_device: int, num_devices: int, steps: int, warmup: int,
            num_workers: int | None = None) -> dict:
    """Sequences/s of ``TrainIterator`` over ``store`` in this process (its current core mask)."""
    from data_pipeline.batch_workers import available_cores
    from data_pipeline.input_pipeline import PipelineConfig, TrainIterator

    cfg = PipelineConfig(videos_per_device=videos_per_device, num_local_devices=num_devices,
                         process_index=0, process_count=1, seed=0, num_workers=num_workers)
    with TrainIterator(store, split, cfg) as it:
        t0 = time.time()
        for _ in range(warmup):
            batch = next(it)
        t1 = time.time()
        for _ in range(steps):
            batch = next(it)
        dt = time.time() - t1
        workers = it._workers.num_workers
    clips = steps * videos_per_device * num_devices * cfg.clips_per_video
    return {
        "cores": available_cores(), "num_workers": workers,
        "steps_timed": steps, "warmup_seconds": round(t1 - t0, 2), "seconds": round(dt, 3),
        "steps_per_second": round(steps / dt, 3),
        "sequences_per_second": round(clips / 8 / dt, 1), "clips_per_second": round(clips / dt, 1),
        "videos_per_second": round(clips / cfg.clips_per_video / dt, 1),
        "batch_shapes": {k: list(v.shape) for k, v in batch.items()},
    }


def _pinned_run(cores: int, args: argparse.Namespace, store: str) -> dict:
    """``measure`` in a subprocess pinned to the first ``cores`` cores of this process's mask."""
    mask = sorted(os.sched_getaffinity(0))
    if cores > len(mask):
        raise SystemExit(f"--cores {cores}: this process may use only {len(mask)} cores")
    cmd = [sys.executable, os.path.abspath(__file__), "--store", store, "--split", args.split,
           "--videos-per-device", str(args.videos_per_device), "--num-devices", str(args.num_devices),
           "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--pin", ",".join(str(c) for c in mask[:cores])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"pinned run on {cores} cores failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default=None, help="feature store folder (default: a synthetic one in a temp dir)")
    p.add_argument("--split", default="train")
    p.add_argument("--synthetic-videos", type=int, default=256)
    p.add_argument("--videos-per-device", type=int, default=64)
    p.add_argument("--num-devices", type=int, default=1, help="local devices to lay the batch out for")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--cores", default=None,
                   help="comma-separated core counts, each measured in a pinned subprocess (e.g. 1,2)")
    p.add_argument("--pin", default=None, help=argparse.SUPPRESS)  # internal: the pinned child
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args()
    if a.pin:
        os.sched_setaffinity(0, {int(c) for c in a.pin.split(",")})
        print(json.dumps(measure(a.store, a.split, videos_per_device=a.videos_per_device,
                                 num_devices=a.num_devices, steps=a.steps, warmup=a.warmup)))
        return

    tmp = None
    store = a.store
    synth_s = None
    if store is None:
        tmp = tempfile.TemporaryDirectory()
        store = tmp.name
        t = time.time()
        make_synthetic_store(store, a.synthetic_videos)
        synth_s = time.time() - t
    out = {
        "benchmark": "input_pipeline",
        "store": a.store or f"synthetic ({a.synthetic_videos} videos, 120-480 s each)",
        "videos_per_device": a.videos_per_device, "clips_per_video": 16, "num_devices": a.num_devices,
        "rows_per_step": a.videos_per_device * a.num_devices * 16,
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "command": " ".join(["python", "benchmarks/input_pipeline.py", *sys.argv[1:]]),
    }
    if a.cores:
        counts = [int(c) for c in a.cores.split(",")]
        runs = {str(c): _pinned_run(c, a, store) for c in counts}
        out["runs"] = runs
        lo, hi = runs[str(min(counts))], runs[str(max(counts))]
        out["scaling"] = round(hi["sequences_per_second"] / lo["sequences_per_second"], 3)
        out["scaling_cores"] = [min(counts), max(counts)]
    else:
        out.update(measure(store, a.split, videos_per_device=a.videos_per_device, num_devices=a.num_devices,
                           steps=a.steps, warmup=a.warmup))
    if synth_s is not None:
        out["synthetic_build_seconds"] = round(synth_s, 1)
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
