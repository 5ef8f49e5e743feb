"""Conversion in several tasks (``--num-tasks N --task-index i``) and the merge of their indexes.

A store converted in N tasks must read the same videos at the same positions as one converted
in one task, with the same skip lists and counts; each task resumes on its own; the merge
refuses incomplete or mixed sets of tasks.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from data_pipeline import build as build_cli
from data_pipeline import convert, synthetic
from data_pipeline.feature_store import (DataError, FeatureStore, merge_task_indexes, missing_tasks, task_index_name,
                                         task_range)
from norton_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNTS = ("num_videos", "num_frames", "num_captions", "clamped_captions", "clamped_videos", "skipped",
          "skipped_videos", "skipped_examples")


def _same_store(a_dir, b_dir, split="train"):
    a, b = FeatureStore(a_dir, split, verify="full"), FeatureStore(b_dir, split, verify="full")
    assert a.video_ids == b.video_ids and len(a) > 0
    for i in range(len(a)):
        assert a.read_bytes(i) == b.read_bytes(i)  # identical serialized records, position by position
    assert {k: a.index[k] for k in COUNTS} == {k: b.index[k] for k in COUNTS}
    return a, b


@pytest.fixture(scope="module")
def per_video(tmp_path_factory):
    """11 per-video pairs; one with NaN features, one with an empty caption, one with a late caption."""
    root = str(tmp_path_factory.mktemp("pv"))
    feat, caps = os.path.join(root, "f"), os.path.join(root, "c")
    videos = synthetic.write_per_video_layout(feat, caps, 11, seed=31, min_seconds=25, max_seconds=60)
    x = videos[4]["features"].astype(np.float32)
    x[1, 1] = np.inf
    np.save(os.path.join(feat, videos[4]["video_id"] + ".npy"), x)
    v = videos[8]
    synthetic.write_captions_csv(os.path.join(caps, v["video_id"] + ".csv"), v["starts"], v["ends"],
                                 v["texts"][:-1] + ["   "])
    v = videos[9]
    t = len(v["features"])
    synthetic.write_captions_csv(os.path.join(caps, v["video_id"] + ".csv"), list(v["starts"]) + [t + 4.0],
                                 list(v["ends"]) + [t + 8.0], v["texts"] + ["late words"])
    ids = [x["video_id"] for x in videos]
    ids = ids[:6] + [ids[2]] + ids[6:]  # a duplicate, in another task's share than its first copy
    single = os.path.join(root, "single")
    convert.convert_per_video(feat, caps, single, video_ids=ids, videos_per_shard=3, on_error="skip")
    return root, feat, caps, ids, single


def test_task_range_covers_everything_in_order():
    for n in (0, 1, 5, 11, 100):
        for k in (1, 2, 3, 7):
            parts = [task_range(n, k, i) for i in range(k)]
            assert [j for p in parts for j in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match="task_index"):
        task_range(5, 3, 3)
    with pytest.raises(ValueError, match="num_tasks"):
        task_range(5, 0, 0)


def test_per_video_in_three_tasks_equals_one_task(per_video, tmp_path):
    _, feat, caps, ids, single = per_video
    out = str(tmp_path / "tasks")
    summaries = []
    for i in (2, 0, 1):  # any order; the last one to finish merges
        summaries.append(convert.convert_per_video(feat, caps, out, video_ids=ids, videos_per_shard=2,
                                                   on_error="skip", num_tasks=3, task_index=i))
        if i != 1:
            assert summaries[-1]["merged"] is None
            with pytest.raises(FileNotFoundError, match=r"converted in 3 tasks.*data_pipeline.build merge"):
                FeatureStore(out, "train")
    assert missing_tasks(out, "train", 3) == []
    merged = summaries[-1]["merged"]
    a, b = _same_store(out, single)
    assert merged["num_videos"] == len(b) == 9  # 12 ids: 1 duplicate, 2 bad ones skipped, late one kept
    assert merged["skipped"] == {"duplicate_video": 1, "nonfinite_features": 1, "empty_caption": 1}
    assert merged["clamped_videos"] == 1 and a.index["num_tasks"] == 3
    assert sum(s["num_videos"] for s in summaries) == merged["num_videos"]
    names = os.listdir(out)
    assert "train.task-00001-of-00003.index.json" in names and "train-t00002-00000.tfrecord" in names
    assert not [n for n in names if ".tmp" in n]
    # every task wrote its own shards only
    for s in summaries:
        assert all(sh["file"].startswith(f"train-t{s['task_index']:05d}-") for sh in
                   json.load(open(os.path.join(out, task_index_name("train", s["task_index"], 3))))["shards"])


def test_more_tasks_than_videos(tmp_path):
    feat, caps = str(tmp_path / "f"), str(tmp_path / "c")
    synthetic.write_per_video_layout(feat, caps, 3, seed=2, max_seconds=50)
    out = str(tmp_path / "s")
    for i in range(5):
        s = convert.convert_per_video(feat, caps, out, num_tasks=5, task_index=i)
    assert s["merged"]["num_videos"] == 3
    convert.convert_per_video(feat, caps, str(tmp_path / "one"))
    _same_store(out, str(tmp_path / "one"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """7 reference shards of 2 videos; shard 5 lists a video of shard 0 again; shard 3 is unreadable."""
    root = str(tmp_path_factory.mktemp("ref"))
    feat = os.path.join(root, "feat")
    synthetic.write_reference_layout(feat, 14, videos_per_shard=2, seed=6)
    meta_path = os.path.join(feat, "train_meta.pkl")
    meta = pickle.load(open(meta_path, "rb"))
    meta[5] = [meta[5][0], meta[0][1]]
    pickle.dump(meta, open(meta_path, "wb"))
    # shard 5's second video is now listed twice: keep the data consistent with the ids
    os.remove(os.path.join(feat, "train_3_data.npy"))
    single = os.path.join(root, "single")
    convert.convert_reference_howto100m(feat, single, videos_per_shard=3, on_error="skip")
    return root, feat, single


def test_howto100m_in_three_tasks_equals_one_task(reference, tmp_path):
    _, feat, single = reference
    out = str(tmp_path / "tasks")
    for i in range(3):
        s = convert.convert_reference_howto100m(feat, out, videos_per_shard=3, on_error="skip", num_tasks=3,
                                                task_index=i)
    a, b = _same_store(out, single)
    assert s["merged"]["skipped"] == {"duplicate_video": 1, "missing_file": 2}
    assert len(a) == 14 - 1 - 2


def test_each_task_resumes_and_refuses_a_rerun(per_video, tmp_path, monkeypatch):
    _, feat, caps, ids, single = per_video
    out = str(tmp_path / "tasks")
    common = dict(video_ids=ids, videos_per_shard=1, on_error="skip", num_tasks=3)
    convert.convert_per_video(feat, caps, out, task_index=0, **common)
    with pytest.raises(FileExistsError, match=r"task 0 of 3.*--resume"):
        convert.convert_per_video(feat, caps, out, task_index=0, **common)
    # task 1 is interrupted at its 3rd video, then resumes with its finished shards
    calls = []
    add = convert.FeatureStoreWriter.add

    def interrupted_add(self, rec, **kw):
        calls.append(rec.video_id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return add(self, rec, **kw)

    monkeypatch.setattr(convert.FeatureStoreWriter, "add", interrupted_add)
    with pytest.raises(KeyboardInterrupt):
        convert.convert_per_video(feat, caps, out, task_index=1, **common)
    monkeypatch.undo()
    assert os.path.exists(os.path.join(out, "train-t00001-00000.tfrecord"))  # its finished shard is kept
    assert not os.path.exists(os.path.join(out, task_index_name("train", 1, 3)))
    with pytest.raises(FileExistsError, match=r"task 1 of 3.*--resume"):
        convert.convert_per_video(feat, caps, out, task_index=1, **common)
    calls.clear()
    monkeypatch.setattr(convert.FeatureStoreWriter, "add", lambda self, rec, **kw: calls.append(rec.video_id)
                        or add(self, rec, **kw))
    convert.convert_per_video(feat, caps, out, task_index=1, resume=True, **common)
    monkeypatch.undo()
    share = [ids[p] for p in task_range(len(ids), 3, 1)]
    assert share[1] not in calls and share[-1] in calls  # the finished video was not converted again
    s = convert.convert_per_video(feat, caps, out, task_index=2, **common)
    _same_store(out, single)
    # resuming a finished task rewrites the merged index with the same content
    before = json.load(open(os.path.join(out, "train.index.json")))
    s = convert.convert_per_video(feat, caps, out, task_index=2, resume=True, **common)
    assert s["merged"] is not None and json.load(open(os.path.join(out, "train.index.json"))) == before


def test_tasks_and_single_builds_do_not_mix(per_video, tmp_path):
    _, feat, caps, ids, single = per_video
    with pytest.raises(FileExistsError, match=r"num_tasks: 1 in the existing store, 2 now"):
        convert.convert_per_video(feat, caps, single, video_ids=ids, videos_per_shard=3, on_error="skip",
                                  num_tasks=2, task_index=0, resume=True)
    out = str(tmp_path / "tasks")
    convert.convert_per_video(feat, caps, out, video_ids=ids, on_error="skip", num_tasks=2, task_index=0)
    with pytest.raises(FileExistsError, match=r"videos_per_shard: 512 in the existing store, 3 now"):
        convert.convert_per_video(feat, caps, out, video_ids=ids, videos_per_shard=3, on_error="skip",
                                  num_tasks=2, task_index=1)


def test_merge_checks_its_inputs(per_video, tmp_path):
    _, feat, caps, ids, _ = per_video
    out = str(tmp_path / "tasks")
    for i in range(2):
        convert.convert_per_video(feat, caps, out, video_ids=ids, on_error="skip", num_tasks=2, task_index=i)
    merged = json.load(open(os.path.join(out, "train.index.json")))
    assert merge_task_indexes(out, "train", 2) == merged  # by hand: the same
    with pytest.raises(DataError, match=r"3 of 3 tasks have no partial index.*task\(s\) 0, 1, 2 not finished"):
        merge_task_indexes(out, "train", 3)
    p = os.path.join(out, task_index_name("train", 1, 2))
    part = json.load(open(p))
    part["settings"]["time_tolerance"] = 9.0
    json.dump(part, open(p, "w"))
    with pytest.raises(DataError, match=r"other settings than task 0.*time_tolerance: 2\.0 in task 0, 9\.0 in task 1"):
        merge_task_indexes(out, "train", 2)
    part["settings"]["time_tolerance"] = 2.0
    part["shards"][0]["videos"][0]["id"] = ids[0]  # a video of task 0
    json.dump(part, open(p, "w"))
    with pytest.raises(DataError, match=rf"video '{ids[0]}'.*in task 0 and in task 1"):
        merge_task_indexes(out, "train", 2)


def test_cli_tasks_merge_and_progress(per_video, tmp_path, capsys):
    _, feat, caps, _, _ = per_video
    out = str(tmp_path / "cli")
    args = ["per-video", "--features", feat, "--captions", caps, "--out", out, "--skip-bad", "--num-tasks", "2"]
    code = cli.run(build_cli.main, args + ["--task-index", "0"], prog=build_cli.PROG)
    o, e = capsys.readouterr()
    assert code == 0, e
    assert f"{build_cli.PROG} merge --out {out} --split train --num-tasks 2" in e
    # task 1 in its own process: auto-merge, the progress bar counts videos
    proc = subprocess.run([sys.executable, "-m", "data_pipeline.build", *args, "--task-index", "1"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "video/s" in proc.stderr and "all 2 tasks have finished" in proc.stderr
    one = str(tmp_path / "one")
    convert.convert_per_video(feat, caps, one, on_error="skip")
    _same_store(out, one)
    code = cli.run(build_cli.main, ["merge", "--out", out, "--num-tasks", "2"], prog=build_cli.PROG)
    o, e = capsys.readouterr()
    assert code == 0 and json.loads(o[:o.rindex("}") + 1])["num_videos"] == 9
    code = cli.run(build_cli.main, ["merge", "--out", out, "--num-tasks", "4"], prog=build_cli.PROG)
    e = capsys.readouterr().err
    assert code == 2 and "not finished" in e and len(e.strip().splitlines()) == 1
    code = cli.run(build_cli.main, args + ["--task-index", "2"], prog=build_cli.PROG)
    e = capsys.readouterr().err
    assert code == 2 and "--task-index must be in 0..1" in e


def test_howto100m_progress_counts_videos(reference, tmp_path):
    _, feat, _ = reference
    proc = subprocess.run([sys.executable, "-m", "data_pipeline.build", "howto100m", "--vfeat-dir", feat, "--out",
                           str(tmp_path / "s"), "--skip-bad", "--num-tasks", "2", "--task-index", "0"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # task 0 has input shards 0..2: 6 videos (the bar counts videos, not shards)
    assert "6/6" in proc.stderr and "video/s" in proc.stderr
