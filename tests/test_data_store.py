"""Feature store and converters: round trips, TFDS, and every bad-input case (issue 4, item 1)."""
from __future__ import annotations

import csv
import os
import pickle
import shutil

import numpy as np
import pytest

from data_pipeline import convert, synthetic
from data_pipeline.feature_store import DataError, FeatureStore, FeatureStoreWriter, VideoRecord


@pytest.fixture(scope="module")
def ref_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    videos = synthetic.write_reference_layout(str(root / "feat"), 11, videos_per_shard=4, seed=3)
    return root, videos


@pytest.fixture(scope="module")
def ref_store(ref_corpus):
    root, videos = ref_corpus
    summary = convert.convert_reference_howto100m(str(root / "feat"), str(root / "store"), videos_per_shard=5)
    return str(root / "store"), videos, summary


def _assert_same(rec, v):
    assert rec.video_id == v["video_id"]
    np.testing.assert_array_equal(rec.features, v["features"])
    assert rec.features.dtype == np.float16
    np.testing.assert_array_equal(rec.starts, v["starts"])
    np.testing.assert_array_equal(rec.ends, v["ends"])
    assert len(rec.tokens) == len(v["tokens"])
    for a, b in zip(rec.tokens, v["tokens"]):
        np.testing.assert_array_equal(a, b)


def test_reference_layout_round_trip(ref_store):
    store_dir, videos, summary = ref_store
    assert summary["num_videos"] == 11 and summary["skipped"] == {}
    assert summary["num_frames"] == sum(len(v["features"]) for v in videos)
    st = FeatureStore(store_dir, "train", verify="full")
    assert len(st) == 11 and len(st.index["shards"]) == 3  # 5 + 5 + 1 videos
    assert st.video_ids == [v["video_id"] for v in videos]
    for v in videos:
        _assert_same(st[v["video_id"]], v)  # random access by id
    _assert_same(st[7], videos[7])           # and by position


def test_tf_data_reads_store(ref_store):
    store_dir, videos, _ = ref_store
    from data_pipeline.feature_store import tf_record_dataset
    got = list(tf_record_dataset(store_dir, "train").as_numpy_iterator())
    assert [g["video_id"].decode() for g in got] == [v["video_id"] for v in videos]
    np.testing.assert_array_equal(got[2]["features"], videos[2]["features"])
    np.testing.assert_array_equal(got[2]["caption_tokens"][1], videos[2]["tokens"][1])


def test_per_video_round_trip(tmp_path):
    videos = synthetic.write_per_video_layout(str(tmp_path / "f"), str(tmp_path / "c"), 5, seed=4)
    s = convert.convert_per_video(str(tmp_path / "f"), str(tmp_path / "c"), str(tmp_path / "s"), videos_per_shard=2)
    assert s["num_videos"] == 5
    st = FeatureStore(str(tmp_path / "s"), "train")
    for v in videos:
        rec = st[v["video_id"]]
        np.testing.assert_array_equal(rec.features, v["features"])
        np.testing.assert_allclose(rec.starts, v["starts"], atol=6e-3)  # CSV keeps 2 decimals
        assert rec.texts == v["texts"]
        for a, b in zip(rec.tokens, v["tokens"]):
            np.testing.assert_array_equal(a, b)


def test_real_howto100m_caption_csv_converts(tmp_path):
    """The real small_train_captions format (stop-word-removed ASR) converts with random features."""
    src = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "howto100m", "small_train_captions")
    vid = "2Mn5sVpFDTg"
    s, e, texts = convert.read_captions_csv(os.path.join(src, vid + ".csv"))
    (tmp_path / "f").mkdir()
    np.save(tmp_path / "f" / f"{vid}.npy", np.zeros((int(np.ceil(e.max())) + 1, 512), np.float16))
    out = convert.convert_per_video(str(tmp_path / "f"), src, str(tmp_path / "s"))
    assert out["num_videos"] == 1
    assert FeatureStore(str(tmp_path / "s"), "train")[vid].num_captions == len(s)


def test_resume_keeps_finished_shards(tmp_path, ref_corpus):
    root, videos = ref_corpus
    out = str(tmp_path / "store")
    convert.convert_reference_howto100m(str(root / "feat"), out, videos_per_shard=4)
    # simulate an interruption after the first shard: drop later shards and the index
    os.remove(os.path.join(out, "train.index.json"))
    for name in ("train-00001.tfrecord", "train-00001.tfrecord.json", "train-00002.tfrecord",
                 "train-00002.tfrecord.json"):
        os.remove(os.path.join(out, name))
    mtime = os.path.getmtime(os.path.join(out, "train-00000.tfrecord"))
    with pytest.raises(FileExistsError):
        convert.convert_reference_howto100m(str(root / "feat"), out, videos_per_shard=4)
    convert.convert_reference_howto100m(str(root / "feat"), out, videos_per_shard=4, resume=True)
    assert os.path.getmtime(os.path.join(out, "train-00000.tfrecord")) == mtime
    st = FeatureStore(out, "train", verify="full")
    assert sorted(st.video_ids) == sorted(v["video_id"] for v in videos)


# ------------------------------------------------------------------ bad inputs: reference layout

def _copy(src, dst):
    shutil.copytree(src, dst)
    for dirpath, _, files in os.walk(dst):
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)
    return dst


def test_truncated_npy_shard_names_file(tmp_path, ref_corpus):
    root, _ = ref_corpus
    feat = _copy(str(root / "feat"), str(tmp_path / "feat"))
    path = os.path.join(feat, "train_1_data.npy")
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    with pytest.raises(DataError, match="train_1_data.npy") as ei:
        convert.convert_reference_howto100m(feat, str(tmp_path / "s"))
    assert ei.value.reason == "corrupt_file"
    # with the skip flag the 4 videos of that shard are skipped and counted
    s = convert.convert_reference_howto100m(feat, str(tmp_path / "s2"), on_error="skip")
    assert s["num_videos"] == 7 and s["skipped"] == {"corrupt_file": 4}
    assert FeatureStore(str(tmp_path / "s2"), "train").index["skipped"] == {"corrupt_file": 4}


def test_sharded_offsets_mismatch(tmp_path, ref_corpus):
    root, _ = ref_corpus
    feat = _copy(str(root / "feat"), str(tmp_path / "feat"))
    starts = np.load(os.path.join(feat, "train_0_starts.npy"))
    starts[-1] += 3
    np.save(os.path.join(feat, "train_0_starts.npy"), starts)
    with pytest.raises(DataError, match=r"train_0_starts.npy.*last offset"):
        convert.convert_reference_howto100m(feat, str(tmp_path / "s"))


def test_meta_lists_wrong_number_of_videos(tmp_path, ref_corpus):
    root, _ = ref_corpus
    feat = _copy(str(root / "feat"), str(tmp_path / "feat"))
    with open(os.path.join(feat, "train_meta.pkl"), "rb") as fh:
        meta = pickle.load(fh)
    meta[0] = meta[0][:-1]
    with open(os.path.join(feat, "train_meta.pkl"), "wb") as fh:
        pickle.dump(meta, fh)
    with pytest.raises(DataError, match="lists 3 videos"):
        convert.convert_reference_howto100m(feat, str(tmp_path / "s"))


def test_reference_caption_end_before_start(tmp_path, ref_corpus):
    root, videos = ref_corpus
    feat = _copy(str(root / "feat"), str(tmp_path / "feat"))
    p = os.path.join(feat, convert.DEFAULT_TFEAT_NAME + "train_0.startends_data.npy")
    se = np.load(p)
    se[len(videos[0]["starts"]) + 2] = [30.0, 20.0]  # 3rd caption of the 2nd video
    np.save(p, se)
    with pytest.raises(DataError, match=r"video 'vid3_00001'.*end < start.*caption 2"):
        convert.convert_reference_howto100m(feat, str(tmp_path / "s"))
    s = convert.convert_reference_howto100m(feat, str(tmp_path / "s2"), on_error="skip")
    assert s["skipped"] == {"caption_end_before_start": 1} and s["num_videos"] == 10


# ------------------------------------------------------------------ bad inputs: per-video layout

def _one_video(tmp_path, feats, rows):
    (tmp_path / "f").mkdir()
    (tmp_path / "c").mkdir()
    np.save(tmp_path / "f" / "v1.npy", feats)
    with open(tmp_path / "c" / "v1.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["start", "end", "text"])
        w.writerows(rows)
    return str(tmp_path / "f"), str(tmp_path / "c")


GOOD_ROWS = [(0.5, 4.0, "cut the onion"), (4.0, 9.5, "add oil to the pan")]


@pytest.mark.parametrize("case,reason,pattern", [
    ("width", "feature_width", r"v1.npy.*video 'v1'.*shape \(20, 256\)"),
    ("nan", "nonfinite_features", r"video 'v1'.*non-finite.*frame 3"),
    ("inf", "nonfinite_features", r"video 'v1'.*non-finite"),
    ("overflow", "nonfinite_features", r"video 'v1'.*overflow float16"),
    ("end_before_start", "caption_end_before_start", r"v1.csv.*video 'v1'.*end < start"),
    ("outside", "caption_outside_video", r"video 'v1'.*outside the video \(T = 20 s"),
    ("negative", "caption_time", r"video 'v1'.*start < 0"),
    ("no_captions", "no_captions", r"video 'v1'.*no captions"),
    ("bad_time", "caption_time", r"v1.csv.*line 3: bad time"),
])
def test_per_video_bad_inputs(tmp_path, case, reason, pattern):
    feats = np.random.default_rng(0).standard_normal((20, 512)).astype(np.float32)
    rows = list(GOOD_ROWS)
    if case == "width":
        feats = feats[:, :256]
    elif case == "nan":
        feats[3, 7] = np.nan
    elif case == "inf":
        feats[5, 0] = np.inf
    elif case == "overflow":
        feats[5, 0] = 1e6
    elif case == "end_before_start":
        rows[1] = (9.0, 8.0, "add oil")
    elif case == "outside":
        rows[1] = (25.0, 28.0, "add oil")
    elif case == "negative":
        rows[0] = (-1.0, 2.0, "cut")
    elif case == "no_captions":
        rows = []
    elif case == "bad_time":
        rows[1] = ("x", 8.0, "add oil")
    f, c = _one_video(tmp_path, feats, rows)
    kw = {"strict": True} if case == "outside" else {}  # late captions are kept unless --strict
    with pytest.raises(DataError, match=pattern) as ei:
        convert.convert_per_video(f, c, str(tmp_path / "s"), **kw)
    assert ei.value.reason == reason and ei.value.video_id == "v1"
    assert not os.path.exists(tmp_path / "s" / "train.index.json")
    # explicit counted skip
    s = convert.convert_per_video(f, c, str(tmp_path / "s2"), on_error="skip", **kw)
    assert s["num_videos"] == 0 and s["skipped"] == {reason: 1}


def test_missing_caption_file_and_tolerance(tmp_path):
    feats = np.zeros((20, 512), np.float16)
    f, c = _one_video(tmp_path, feats, [(0.0, 21.5, "ends a little after the last feature second")])
    ok = convert.convert_per_video(f, c, str(tmp_path / "ok"))
    assert ok["num_videos"] == 1 and ok["clamped_captions"] == 0  # within the 2 s tolerance
    with pytest.raises(DataError, match="outside the video"):
        convert.convert_per_video(f, c, str(tmp_path / "strict"), time_tolerance=0.0, strict=True)
    late = convert.convert_per_video(f, c, str(tmp_path / "late"), time_tolerance=0.0)
    assert late["num_videos"] == 1 and (late["clamped_captions"], late["clamped_videos"]) == (1, 1)
    os.remove(os.path.join(c, "v1.csv"))
    with pytest.raises(DataError, match=r"v1.csv.*captions CSV missing"):
        convert.convert_per_video(f, c, str(tmp_path / "s"))


def test_truncated_npy_file(tmp_path):
    f, c = _one_video(tmp_path, np.zeros((20, 512), np.float16), GOOD_ROWS)
    p = os.path.join(f, "v1.npy")
    with open(p, "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(DataError, match=r"v1.npy.*video 'v1'.*cannot read"):
        convert.convert_per_video(f, c, str(tmp_path / "s"))


# ------------------------------------------------------------------ bad inputs: the store itself

def test_corrupt_store_shards(tmp_path, ref_store):
    store_dir, videos, _ = ref_store
    d = _copy(store_dir, str(tmp_path / "store"))
    shard = os.path.join(d, "train-00001.tfrecord")
    size = os.path.getsize(shard)
    with open(shard, "r+b") as fh:  # flip one byte inside the 2nd record of shard 1
        second = FeatureStore(d, "train").index["shards"][1]["videos"][1]
        fh.seek(second["offset"] + 12 + second["length"] // 2)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0xFF]))
    st = FeatureStore(d, "train")
    st[videos[5]["video_id"]]  # first record of that shard is intact
    with pytest.raises(DataError, match=rf"train-00001.tfrecord.*{videos[6]['video_id']}.*CRC32"):
        st[videos[6]["video_id"]]
    with pytest.raises(DataError, match="CRC32"):
        FeatureStore(d, "train", verify="full")
    with open(shard, "r+b") as fh:
        fh.truncate(size - 100)
    with pytest.raises(DataError, match=r"train-00001.tfrecord.*truncated or corrupt"):
        FeatureStore(d, "train")
    os.remove(os.path.join(d, "train.index.json"))
    with pytest.raises(FileNotFoundError, match="no index"):
        FeatureStore(d, "train")


def test_writer_validates_tokens(tmp_path):
    w = FeatureStoreWriter(str(tmp_path), "train")
    rec = VideoRecord("v", np.zeros((10, 512), np.float16), np.array([0.0], np.float32),
                      np.array([2.0], np.float32), [np.array([5, 40000], np.int32)])
    with pytest.raises(DataError, match=r"video 'v'.*token ids outside"):
        w.add(rec)


def test_tfds_builder(tmp_path, ref_store):
    store_dir, videos, _ = ref_store
    import tensorflow_datasets as tfds
    from data_pipeline.tfds_builder import NortonFeatureStore

    builder = NortonFeatureStore(data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=store_dir))
    ds = tfds.load("norton_feature_store", split="train", data_dir=str(tmp_path / "tfds"))
    got = {ex["video_id"].decode(): ex for ex in tfds.as_numpy(ds)}
    assert len(got) == 11
    v = videos[4]
    ex = got[v["video_id"]]
    np.testing.assert_array_equal(ex["features"], v["features"])
    np.testing.assert_array_equal(ex["caption_start"], v["starts"])
    n = ex["caption_num_tokens"][0]
    np.testing.assert_array_equal(ex["caption_tokens"][0, :n], v["tokens"][0])
    assert (ex["caption_tokens"][0, n:] == -1).all()
