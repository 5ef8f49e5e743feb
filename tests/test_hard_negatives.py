"""Hard-negative batching like the reference (spec §4.5): caption-span clips, one index per device."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ml_collections import ConfigDict

from data_pipeline import convert, synthetic
from norton_jax.cli import ConfigError
from norton_jax.training import hard_negatives as hn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_caption_span_clip_is_the_captions_span_cut_to_16_seconds():
    t = 40
    features = np.arange(t * 4, dtype=np.float32).reshape(t, 4)
    tokens = [np.arange(5, 45, dtype=np.int32)]  # 40 tokens: no merging needed (Lt <= 32)
    for start, end, frames in ((2.5, 7.2, range(2, 8)), (3.0, 30.0, range(3, 19)), (35.2, 55.0, range(35, 40))):
        clips = hn.sample_caption_span_video(features, np.array([start]), np.array([end]), tokens,
                                             np.random.default_rng(0), clips_per_video=3)
        n = len(frames)
        assert clips["vmasks"].sum(axis=1).tolist() == [n] * 3  # not a random 3-16 s clip
        np.testing.assert_array_equal(clips["vfeats"][:, :n], np.broadcast_to(features[list(frames)], (3, n, 4)))
        assert not clips["vfeats"][:, n:].any()
        assert clips["cmasks"].sum(axis=1).tolist() == [29 + 3] * 3  # captions cut to 29 tokens


def test_build_device_batches_keeps_each_batch_inside_one_index():
    vectors = np.zeros((12, 6), np.float32)
    vectors[np.arange(12), np.arange(12) % 6] = 1.0  # row i and i+6 are twins across the parts
    batches = hn.build_device_batches(vectors, 2, 2, rng=np.random.default_rng(0), num_candidates=2)
    assert len(batches) == 6
    assert all(len({i // 6 for i in b}) == 1 for b in batches)
    host = hn.build_batches(vectors, 2, rng=np.random.default_rng(0), num_candidates=2)
    assert all(abs(b[0] - b[1]) == 6 for b in host)  # one index: the twin is the neighbour


def test_short_lists_are_filled_and_counted():
    vectors = np.eye(8, dtype=np.float32) * 10  # every list of IndexFlatL2 is complete ...
    stats = {}
    batches = hn.build_batches(vectors, 4, rng=np.random.default_rng(0), num_candidates=2, stats=stats)
    assert [len(set(b)) for b in batches] == [4, 4] and stats["filled_videos"] == 4  # ... but only 2 asked


@pytest.mark.parametrize("field,value", [("clips", "random"), ("index", "gpu"), ("num_candidates", 0),
                                         ("num_lists", 2.5)])
def test_bad_config_names_the_field(field, value):
    cfg = ConfigDict(dict(num_lists=4, num_candidates=4, videos_per_call=8), type_safe=False)
    cfg[field] = value
    with pytest.raises(ConfigError, match=f"train.hard_negatives.{field} = "):
        hn.check_config(cfg)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("hn_store")
    synthetic.write_per_video_layout(str(root / "f"), str(root / "c"), 12, seed=3, min_seconds=30, max_seconds=80)
    convert.convert_per_video(str(root / "f"), str(root / "c"), str(root / "store"), videos_per_shard=6)
    return str(root / "store")


def _plan(store, tmp_path, index):
    out = tmp_path / f"{index}.json"
    workdir = f"ram://hn_{index}/work"  # the plan goes through data_pipeline.fileio
    subprocess.run([sys.executable, os.path.join(ROOT, "tests", "hard_negatives_worker.py"), store, workdir,
                    index, str(out)], check=True, cwd=str(tmp_path), timeout=300,
                   env={**os.environ, "PYTHONPATH": ROOT})
    return json.loads(out.read_text())


def test_two_devices_plan_per_device_indices_from_caption_span_clips(store, tmp_path):
    r = _plan(store, tmp_path, "unset")  # the defaults
    assert r["videos_per_host"] == 4 and len(r["batches"]) == r["steps"] * 2 == 6
    assert all(len(set(p)) == 1 for p in r["parts"]), r  # every batch from one device's index
    assert r["caption_span"]
    assert r["saved_positions"] == [p for b in r["batches"] for p in b]
    assert r["resumed_equal"] and r["embedded_on_resume"] == 0


def test_two_devices_host_index_option_mixes_the_parts(store, tmp_path):
    r = _plan(store, tmp_path, "host")
    assert all(len(set(p)) == 2 for p in r["parts"]), r  # nearest neighbour is the twin across parts
