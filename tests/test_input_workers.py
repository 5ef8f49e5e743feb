"""Batch assembly in worker processes: same batches for any worker count, clean exit, errors."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from data_pipeline import convert, synthetic
from data_pipeline.input_pipeline import PipelineConfig, TrainIterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    synthetic.write_per_video_layout(str(root / "f"), str(root / "c"), 12, seed=11, min_seconds=30, max_seconds=90)
    convert.convert_per_video(str(root / "f"), str(root / "c"), str(root / "store"), videos_per_shard=4)
    return str(root / "store")


def _cfg(**kw):
    base = dict(videos_per_device=2, num_local_devices=2, process_index=0, process_count=1, seed=5)
    base.update(kw)
    return PipelineConfig(**base)


def _batches(store, n, **kw):
    with TrainIterator(store, "train", _cfg(**kw)) as it:
        return [next(it) for _ in range(n)]


def test_batches_do_not_depend_on_worker_count(store):
    # 3 steps per epoch: 7 batches cross two epoch boundaries
    ref = _batches(store, 7, num_workers=0)
    for workers in (1, 2, 3):
        got = _batches(store, 7, num_workers=workers)
        for a, b in zip(ref, got):
            assert a.keys() == b.keys()
            for key in a:
                assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{workers} workers, field {key}")
    # and they are the per-video sampler's clips
    it = TrainIterator(store, "train", _cfg(num_workers=0))
    one = it.load_video(0, int(ref[0]["video_index"][1, 16]))
    np.testing.assert_array_equal(ref[0]["vfeats"][1, 16:32], one["vfeats"])
    np.testing.assert_array_equal(ref[0]["caps"][1, 16:32], one["caps"])


def test_restore_mid_stream_with_workers(store):
    ref = _batches(store, 5, num_workers=0)
    with TrainIterator(store, "train", _cfg(num_workers=2)) as it:
        for _ in range(3):
            next(it)  # workers have later batches in flight
        it.restore({"epoch": 0, "step": 1})
        for k in range(1, 5):
            b = next(it)
            np.testing.assert_array_equal(b["caps"], ref[k]["caps"])
            np.testing.assert_array_equal(b["video_index"], ref[k]["video_index"])


def test_close_stops_the_workers(store):
    it = TrainIterator(store, "train", _cfg(num_workers=2))
    next(it)
    procs = list(it._workers._procs)
    assert len(procs) == 2 and all(p.poll() is None for p in procs)
    it.close()
    assert all(p.poll() is not None for p in procs)
    it.close()  # idempotent


def test_worker_error_names_the_file(store, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(store, bad)
    shard = sorted(p for p in os.listdir(bad) if p.endswith(".tfrecord"))[0]
    path = bad / shard
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # corrupt the first record's payload (the size check at open time passes)
    path.write_bytes(bytes(data))
    with TrainIterator(str(bad), "train", _cfg(num_workers=2, num_epochs=1)) as it:
        with pytest.raises(Exception, match="CRC32") as err:
            for _ in it:
                pass
    assert shard in str(err.value)


def test_process_that_drops_an_open_iterator_exits(store):
    # Pinned to one core, read 33 batches and end without close(): the process must exit.
    script = textwrap.dedent(f"""
        import os, sys
        os.sched_setaffinity(0, {{sorted(os.sched_getaffinity(0))[0]}})
        sys.path.insert(0, {REPO!r})
        from data_pipeline.input_pipeline import PipelineConfig, TrainIterator
        it = TrainIterator({store!r}, "train", PipelineConfig(videos_per_device=2, num_local_devices=2,
                           process_index=0, process_count=1, seed=1))
        for _ in range(33):
            next(it)
        print("read", it._workers.num_workers, flush=True)
    """)
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == "read 1"  # one core -> one worker
