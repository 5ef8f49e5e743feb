"""No video is lost to a late caption (one that starts after the features or ends well after them).

By default the converters keep such captions with their times unchanged and count them
(``clamped_captions`` / ``clamped_videos``); the sampler clamps the clip centre into the video,
so every sampled clip lies on the features.  ``--strict`` keeps the old rejection.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from data_pipeline import build as build_cli
from data_pipeline import convert, synthetic
from data_pipeline.feature_store import DataError, FeatureStore, FeatureStoreWriter, VideoRecord
from data_pipeline.sampling import sample_clip, sample_video, video_rng
from data_pipeline.tokenization import tokenize_captions
from norton_jax import cli

N_VIDEOS = 9


def _late_dataset(root):
    """9 per-video pairs; videos 0, 3 and 6 (a third) get a caption past their features.

    Video 0: one caption that starts 5 s after the last second; video 3: one that starts
    before the end but ends 10 s after it; video 6: two captions, both after the video.
    Returns (feature dir, caption dir, {video id: number of late captions}, videos).
    """
    feat, caps = os.path.join(root, "f"), os.path.join(root, "c")
    videos = synthetic.write_per_video_layout(feat, caps, N_VIDEOS, seed=21, min_seconds=30, max_seconds=60)
    late = {}
    for k in (0, 3, 6):
        v = videos[k]
        t = len(v["features"])
        extra = {0: [(t + 5.0, t + 9.0)], 3: [(t - 2.0, t + 10.0)], 6: [(t + 1.0, t + 4.0), (t + 30.0, t + 33.5)]}[k]
        v["starts"] = np.concatenate([v["starts"], np.asarray([a for a, _ in extra], np.float32)])
        v["ends"] = np.concatenate([v["ends"], np.asarray([b for _, b in extra], np.float32)])
        v["texts"] = v["texts"] + ["and that is how you plate it"] * len(extra)
        v["tokens"] = tokenize_captions(v["texts"])
        synthetic.write_captions_csv(os.path.join(caps, v["video_id"] + ".csv"), v["starts"], v["ends"], v["texts"])
        late[v["video_id"]] = len(extra)
    return feat, caps, late, videos


@pytest.fixture(scope="module")
def late_store(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("late"))
    feat, caps, late, videos = _late_dataset(root)
    summary = convert.convert_per_video(feat, caps, os.path.join(root, "store"), videos_per_shard=4)
    return root, feat, caps, late, videos, summary


def test_every_video_is_kept_and_counted(late_store):
    root, _, _, late, videos, summary = late_store
    assert summary["num_videos"] == N_VIDEOS and summary["skipped"] == {}
    assert summary["late_captions"] == "keep"
    assert summary["clamped_videos"] == 3 == len(late)
    assert summary["clamped_captions"] == sum(late.values()) == 4
    st = FeatureStore(os.path.join(root, "store"), "train", verify="full")
    assert st.index["clamped_captions"] == 4 and st.index["clamped_videos"] == 3
    entries = {v["id"]: v for s in st.index["shards"] for v in s["videos"]}
    assert {vid: e["clamped_captions"] for vid, e in entries.items() if "clamped_captions" in e} == late
    # times are stored as given (rounded to the CSV's 2 decimals), not cut to the video
    for v in videos:
        rec = st[v["video_id"]]
        np.testing.assert_allclose(rec.starts, np.round(v["starts"], 2), atol=1e-4)
        np.testing.assert_allclose(rec.ends, np.round(v["ends"], 2), atol=1e-4)
        assert rec.num_captions == len(v["texts"])


def test_strict_rejects_as_before(late_store, tmp_path):
    _, feat, caps, late, _, _ = late_store
    with pytest.raises(DataError, match=r"pv21_00000.csv.*video 'pv21_00000'.*outside the video") as ei:
        convert.convert_per_video(feat, caps, str(tmp_path / "s"), strict=True)
    assert ei.value.reason == "caption_outside_video"
    s = convert.convert_per_video(feat, caps, str(tmp_path / "s2"), strict=True, on_error="skip")
    assert s["num_videos"] == N_VIDEOS - 3 and s["skipped"] == {"caption_outside_video": 3}
    assert s["skipped_videos"]["caption_outside_video"] == sorted(late)
    assert s["late_captions"] == "reject" and s["clamped_captions"] == 0


def test_sampling_stays_on_the_features(late_store):
    root, _, _, late, _, _ = late_store
    st = FeatureStore(os.path.join(root, "store"), "train")
    for vid in late:
        rec = st[vid]
        t = rec.num_frames
        for seed in range(60):
            out = sample_video(rec.features, rec.starts, rec.ends, rec.tokens, video_rng(seed, 0, st.position(vid)))
            s, e = out["video_start"], out["video_end"]
            assert (s >= 0).all() and (e <= t).all() and (e > s).all()
            assert (out["vmasks"].sum(1) == np.minimum(e - s, 16)).all()
            for k in range(len(s)):  # the features a clip reads are the video's own
                n = min(16, e[k] - s[k])
                np.testing.assert_array_equal(out["vfeats"][k, :n], rec.features[s[k]:s[k] + n].astype(np.float32))
    # a caption entirely after the video gets a clip among its last seconds (centre clamped to T-1)
    rng = np.random.default_rng(0)
    for _ in range(200):
        s, e = sample_clip(45.0, 48.0, 30, rng)
        assert 30 - 16 <= s < e <= 30 and e >= 29 and 3 <= e - s <= 16


def test_train_iterator_over_late_captions(late_store):
    from data_pipeline.input_pipeline import PipelineConfig, TrainIterator

    root = late_store[0]
    st = FeatureStore(os.path.join(root, "store"), "train")
    cfg = PipelineConfig(videos_per_device=3, num_local_devices=1, process_index=0, process_count=1, seed=5,
                         num_workers=0, layout="flat")
    seen = set()
    with TrainIterator(st, "train", cfg) as it:
        for _ in range(2 * it.steps_per_epoch):
            b = next(it)
            frames = st.num_frames[b["video_index"]]
            assert (b["video_start"] >= 0).all() and (b["video_end"] <= frames).all()
            assert (b["video_end"] > b["video_start"]).all()
            seen.update(b["video_index"].tolist())
    assert {st.position(v) for v in late_store[3]} & seen


def test_reference_layout_keeps_late_captions(tmp_path):
    feat = str(tmp_path / "feat")
    videos = synthetic.write_reference_layout(feat, 6, videos_per_shard=3, seed=8)
    p = os.path.join(feat, convert.DEFAULT_TFEAT_NAME + "train_1.startends_data.npy")
    se = np.load(p)
    t = len(videos[4]["features"])
    se[len(videos[3]["starts"]) + 1] = [t + 3.0, t + 6.0]  # 2nd caption of the 5th video
    np.save(p, se)
    s = convert.convert_reference_howto100m(feat, str(tmp_path / "s"))
    assert s["num_videos"] == 6 and (s["clamped_captions"], s["clamped_videos"]) == (1, 1)
    with pytest.raises(DataError, match=r"video 'vid8_00004'.*outside the video"):
        convert.convert_reference_howto100m(feat, str(tmp_path / "s2"), strict=True)


def test_bad_features_still_stop_with_file_and_video(late_store, tmp_path):
    _, feat, caps, _, videos, _ = late_store
    import shutil
    f2 = shutil.copytree(feat, str(tmp_path / "f"))
    x = np.load(os.path.join(f2, "pv21_00003.npy")).astype(np.float32)
    x[2, 5] = np.nan
    np.save(os.path.join(f2, "pv21_00003.npy"), x)
    with open(os.path.join(f2, "pv21_00004.npy"), "wb"):
        pass  # empty file
    with pytest.raises(DataError, match=r"pv21_00003.npy.*video 'pv21_00003'.*non-finite"):
        convert.convert_per_video(f2, caps, str(tmp_path / "s"))
    s = convert.convert_per_video(f2, caps, str(tmp_path / "s2"), on_error="skip")
    assert s["skipped"] == {"nonfinite_features": 1, "corrupt_file": 1} and s["num_videos"] == N_VIDEOS - 2
    assert s["clamped_videos"] == 2  # videos 0 and 6 are still there with their late captions


def test_cli_prints_the_counts(late_store, tmp_path, capsys):
    _, feat, caps, _, _, _ = late_store
    out = str(tmp_path / "cli")
    code = cli.run(build_cli.main, ["per-video", "--features", feat, "--captions", caps, "--out", out],
                   prog=build_cli.PROG)
    o, e = capsys.readouterr()
    assert code == 0, e
    assert '"clamped_captions": 4' in o and '"clamped_videos": 3' in o
    assert "late captions: kept 4 caption(s) in 3 video(s)" in e
    code = cli.run(build_cli.main, ["per-video", "--features", feat, "--captions", caps, "--out",
                                    str(tmp_path / "strict"), "--strict"], prog=build_cli.PROG)
    e = capsys.readouterr().err
    lines = [x for x in e.splitlines() if x.strip() and not x.startswith("convert")]
    assert code == 2 and len(lines) == 1 and "outside the video" in lines[0] and "pv21_00000" in lines[0]


def test_resume_of_a_build_made_before_late_captions_were_kept(late_store, tmp_path):
    """A store whose settings predate the policy was built rejecting late captions."""
    _, feat, caps, _, _, _ = late_store
    out = str(tmp_path / "old")
    convert.convert_per_video(feat, caps, out, strict=True, on_error="skip")
    import json
    path = os.path.join(out, "train.settings.json")
    settings = json.load(open(path))
    del settings["late_captions"], settings["num_tasks"]
    json.dump(settings, open(path, "w"))
    with pytest.raises(FileExistsError, match="late_captions: 'reject' in the existing store, 'keep' now"):
        convert.convert_per_video(feat, caps, out, resume=True)
    assert convert.convert_per_video(feat, caps, out, resume=True, strict=True, on_error="skip")["num_videos"] == 6


def test_evaluation_and_alignment_readers_accept_late_captions(tmp_path):
    """Store readers of norton_jax (HTM-Align windows, the alignment tool) on a late caption."""
    from norton_jax import align as A
    from norton_jax.evaluate.metrics import htm_align_windows
    from norton_jax.evaluate.run import read_store, store_clips, store_htm_align

    rng = np.random.default_rng(0)
    texts = ["step one", "chatter", "step two", "said after the end"]
    with FeatureStoreWriter(str(tmp_path / "s"), "val") as w:
        w.add(VideoRecord(
            video_id="v0", features=rng.normal(size=(40, 512)).astype(np.float16),
            starts=np.asarray([2, 10, 20, 45], np.float32), ends=np.asarray([8, 14, 30, 52], np.float32),
            tokens=tokenize_captions(texts), texts=texts,
            gt_start=np.asarray([1, -1, 19, 35], np.float32), gt_end=np.asarray([9, -1, 31, 40], np.float32),
            gt_alignable=np.asarray([1, 0, 1, 1]), gt_text=["step one", "", "step two", "last step"]))
    records = read_store(tmp_path / "s", "val")
    assert records[0].starts[3] == 45.0
    clips = store_clips(records)
    assert all(0 <= c.start <= c.end <= 40 for c in clips)
    v = store_htm_align(records)[0]
    windows = htm_align_windows(40, v.starts, v.ends, v.aligned)
    assert all(0 <= w.start < w.stop <= 40 for w in windows)
    caps = A.Captions(texts, records[0].starts, records[0].ends)
    sim = 0.1 + 0.05 * rng.random((4, 40))
    out = A.realign(sim, caps, A.AlignConfig())
    assert np.isfinite(out["alignability"]).all() and (0 <= out["peak"]).all() and (out["peak"] < 40).all()
