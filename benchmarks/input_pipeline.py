"""Throughput of the training input pipeline at the paper's batch geometry, printed as JSON.

    python benchmarks/input_pipeline.py                       # synthetic store (256 videos)
    python benchmarks/input_pipeline.py --store DIR --split train

Geometry (spec §0/§4.4): 64 videos per device x 16 clips = 1024 clip-caption pairs = 128
sequences of 8 per device step. Reported: sequences/s, clips/s and videos/s per host, after
``--warmup`` steps (tf.data start-up, first reads). The run uses every CPU core TensorFlow sees.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default=None, help="feature store folder (default: a synthetic one in a temp dir)")
    p.add_argument("--split", default="train")
    p.add_argument("--synthetic-videos", type=int, default=256)
    p.add_argument("--videos-per-device", type=int, default=64)
    p.add_argument("--num-devices", type=int, default=1, help="local devices to lay the batch out for")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args()

    from data_pipeline.input_pipeline import PipelineConfig, TrainIterator

    tmp = None
    store = a.store
    if store is None:
        tmp = tempfile.TemporaryDirectory()
        store = tmp.name
        t = time.time()
        make_synthetic_store(store, a.synthetic_videos)
        synth_s = time.time() - t
    cfg = PipelineConfig(videos_per_device=a.videos_per_device, num_local_devices=a.num_devices,
                         process_index=0, process_count=1, seed=0)
    it = TrainIterator(store, a.split, cfg)
    t0 = time.time()
    for _ in range(a.warmup):
        batch = next(it)
    t1 = time.time()
    for _ in range(a.steps):
        batch = next(it)
    dt = time.time() - t1
    clips = a.steps * a.videos_per_device * a.num_devices * cfg.clips_per_video
    out = {
        "benchmark": "input_pipeline",
        "store": a.store or f"synthetic ({a.synthetic_videos} videos, 120-480 s each)",
        "videos_per_device": a.videos_per_device, "clips_per_video": cfg.clips_per_video,
        "num_devices": a.num_devices, "rows_per_step": a.videos_per_device * a.num_devices * cfg.clips_per_video,
        "steps_timed": a.steps, "warmup_seconds": round(t1 - t0, 2), "seconds": round(dt, 3),
        "steps_per_second": round(a.steps / dt, 3),
        "sequences_per_second": round(clips / 8 / dt, 1), "clips_per_second": round(clips / dt, 1),
        "videos_per_second": round(clips / cfg.clips_per_video / dt, 1),
        "batch_shapes": {k: list(v.shape) for k, v in batch.items()},
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
    }
    if tmp is not None:
        out["synthetic_build_seconds"] = round(synth_s, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
