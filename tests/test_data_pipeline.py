"""tf.data training pipeline: per-host sharding, batch layout, determinism, resume."""
from __future__ import annotations

import numpy as np
import pytest

from data_pipeline import convert, synthetic
from data_pipeline.input_pipeline import PipelineConfig, TrainIterator, create_train_iterator, host_video_order


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    synthetic.write_per_video_layout(str(root / "f"), str(root / "c"), 16, seed=7, min_seconds=30, max_seconds=90)
    convert.convert_per_video(str(root / "f"), str(root / "c"), str(root / "store"), videos_per_shard=5)
    return str(root / "store")


def _cfg(**kw):
    base = dict(videos_per_device=2, num_local_devices=2, process_index=0, process_count=1, seed=3)
    base.update(kw)
    return PipelineConfig(**base)


def test_batch_layout(store):
    it = TrainIterator(store, "train", _cfg())
    b = next(it)
    assert b["caps"].shape == (2, 32, 32) and b["caps"].dtype == np.int32
    assert b["cmasks"].shape == (2, 32, 32) and b["cmasks"].dtype == bool
    assert b["vfeats"].shape == (2, 32, 16, 512) and b["vfeats"].dtype == np.float32
    assert b["vmasks"].shape == (2, 32, 16) and b["vmasks"].dtype == bool
    # video-major rows: each device holds 2 whole videos, 16 consecutive rows each, sorted clips
    vi = b["video_index"]
    for d in range(2):
        for v in range(2):
            rows = slice(v * 16, (v + 1) * 16)
            assert len(set(vi[d, rows].tolist())) == 1
            keys = list(zip(b["text_start"][d, rows], b["video_start"][d, rows]))
            assert keys == sorted(keys)
    assert len(set(vi[:, ::16].ravel().tolist())) == 4
    # matches the per-video sampler exactly
    one = it.load_video(0, int(vi[1, 16]))
    np.testing.assert_array_equal(b["caps"][1, 16:32], one["caps"])
    np.testing.assert_array_equal(b["vfeats"][1, 16:32], one["vfeats"])
    flat = next(TrainIterator(store, "train", _cfg(layout="flat")))
    assert flat["vfeats"].shape == (64, 16, 512)
    np.testing.assert_array_equal(flat["caps"].reshape(2, 32, 32), b["caps"])


def test_two_hosts_disjoint_complete(store):
    n = 16
    seen = []
    for h in range(2):
        cfg = _cfg(videos_per_device=2, num_local_devices=1, process_index=h, process_count=2, num_epochs=1)
        it = TrainIterator(store, "train", cfg)
        assert it.steps_per_epoch == 4
        vids = [int(x) for b in it for x in b["video_index"][:, ::16].ravel()]
        assert len(vids) == 8 == len(set(vids))
        assert vids == host_video_order(n, 0, seed=3, process_index=h, process_count=2, videos_per_host=2).tolist()
        seen.append(set(vids))
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(n))


def test_epochs_reshuffle_and_seed_determinism(store):
    o0 = host_video_order(16, 0, seed=3, process_index=0, process_count=1, videos_per_host=4)
    o1 = host_video_order(16, 1, seed=3, process_index=0, process_count=1, videos_per_host=4)
    assert sorted(o0.tolist()) == sorted(o1.tolist()) == list(range(16)) and o0.tolist() != o1.tolist()
    a = [next(TrainIterator(store, "train", _cfg()))["caps"] for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])
    c = next(TrainIterator(store, "train", _cfg(seed=4)))["caps"]
    assert not np.array_equal(a[0], c)


def test_resume_continues_same_order(store, tmp_path):
    cfg = _cfg(num_local_devices=1)           # 2 videos per step, 8 steps per epoch
    ref = TrainIterator(store, "train", cfg)
    batches = [next(ref) for _ in range(11)]  # crosses the epoch boundary
    it = TrainIterator(store, "train", cfg)
    for _ in range(6):
        next(it)
    it.save_state(str(tmp_path / "it.json"))
    state = it.state()
    assert state["epoch"] == 0 and state["step"] == 6
    resumed = create_train_iterator(store, "train", state=state, **cfg.__dict__)
    for k in range(6, 11):
        b = next(resumed)
        for key in ("caps", "vfeats", "video_index", "video_start"):
            np.testing.assert_array_equal(b[key], batches[k][key])
    assert resumed.state()["epoch"] == 1 and resumed.state()["step"] == 3
    again = TrainIterator(store, "train", cfg)
    again.load_state(str(tmp_path / "it.json"))
    np.testing.assert_array_equal(next(again)["caps"], batches[6]["caps"])
    with pytest.raises(ValueError, match="seed"):
        TrainIterator(store, "train", _cfg(num_local_devices=1, seed=99), state=state)


def test_too_few_videos(store):
    with pytest.raises(ValueError, match="too few"):
        TrainIterator(store, "train", _cfg(videos_per_device=64))
