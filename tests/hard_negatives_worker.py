"""Plans an epoch of hard-negative batches on 2 simulated CPU devices (run by test_hard_negatives).

    python tests/hard_negatives_worker.py STORE WORKDIR INDEX OUT.json

XLA_FLAGS must be set before JAX starts, hence the subprocess.  The model is replaced by a
stand-in embedding (``embed_videos``) that makes video ``share[i]`` and ``share[i + n/2]`` -
which lie in different devices' parts - identical, and records the clips it was given.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from data_pipeline.input_pipeline import PipelineConfig, TrainIterator, host_video_order  # noqa: E402
from norton_jax.training import hard_negatives  # noqa: E402

store, workdir, index, out = sys.argv[1:5]
assert jax.local_device_count() == 2, jax.devices()
seen = {}


def fake_embed(model, load_video, positions, *, videos_per_call=8):
    half = len(positions) // 2
    vectors = np.zeros((len(positions), half), np.float32)
    for i, p in enumerate(positions):
        seen[int(p)] = load_video(int(p))
        vectors[i, i % half] = 10.0
    return vectors


hard_negatives.embed_videos = fake_embed
hn = dict(enabled=True, num_lists=512, num_candidates=2, videos_per_call=4)
if index != "unset":
    hn["index"] = index
config = ConfigDict(dict(train=dict(hard_negatives=hn)))
it = TrainIterator(store, "train", PipelineConfig(videos_per_device=2, seed=5, layout="flat"))
planner = hard_negatives.EpochPlanner(config=config, workdir=workdir, iterator=it, embed_fn=lambda: None)
positions = planner(1)
share = host_video_order(len(it.store), 1, seed=5, process_index=0, process_count=1, videos_per_host=1)
part_of = {int(p): int(i >= len(share) // 2) for i, p in enumerate(share)}
batches = positions.reshape(-1, 2).tolist()
span_equal = []
for p, clips in seen.items():
    rec = it.store[p]
    expect = hard_negatives.sample_caption_span_video(
        rec.features, rec.starts, rec.ends, rec.tokens, hard_negatives.caption_span_rng(5, 1, p))
    span_equal.append(sorted(clips) == sorted(expect) and all(np.array_equal(clips[k], expect[k]) for k in expect))
plan_path = planner._path(1)
from data_pipeline import fileio  # noqa: E402

saved = fileio.read_json(plan_path) if fileio.exists(plan_path) else None
seen.clear()
again = planner(1)  # resume: read back, nothing embedded
json.dump({"batches": batches, "parts": [[part_of[p] for p in b] for b in batches],
           "steps": it.steps_per_epoch, "videos_per_host": it.videos_per_host,
           "caption_span": all(span_equal) and bool(span_equal),
           "saved_positions": None if saved is None else saved["positions"],
           "resumed_equal": again.tolist() == positions.tolist(), "embedded_on_resume": len(seen)},
          open(out, "w"))
