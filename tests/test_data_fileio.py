"""The file layer (``data_pipeline.fileio``) and the data path on a filesystem that is not POSIX.

TensorFlow's in-process ``ram://`` filesystem stands in for ``gs://``: both are reached only
through ``tf.io.gfile``, neither has file descriptors, ``os.pread`` or atomic renames.  Per-video
and reference inputs written under ``ram://`` are converted into a ``ram://`` store, read back
with ``FeatureStore`` (random access, CRC checks) and compared with the same conversion done
in a local folder.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

from data_pipeline import convert, fileio, synthetic
from data_pipeline.feature_store import DataError, FeatureStore, tf_record_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ram() -> str:
    """A fresh folder on the ram:// filesystem (shared by the whole process)."""
    return f"ram://norton-{uuid.uuid4().hex[:10]}"


def _same_records(a: FeatureStore, b: FeatureStore) -> None:
    assert a.video_ids == b.video_ids
    for i in range(len(a)):
        ra, rb = a[i], b[i]
        assert ra.video_id == rb.video_id
        np.testing.assert_array_equal(ra.features, rb.features)
        np.testing.assert_array_equal(ra.starts, rb.starts)
        np.testing.assert_array_equal(ra.ends, rb.ends)
        assert len(ra.tokens) == len(rb.tokens)
        for x, y in zip(ra.tokens, rb.tokens):
            np.testing.assert_array_equal(x, y)
        assert ra.texts == rb.texts


# ------------------------------------------------------------------ the layer itself

def test_join_keeps_urls_and_local_paths():
    assert fileio.join("gs://bucket", "x", "y.json") == "gs://bucket/x/y.json"
    assert fileio.join("gs://bucket/store/", "train.index.json") == "gs://bucket/store/train.index.json"
    assert fileio.join("/tmp/a", "b") == "/tmp/a/b"
    assert fileio.is_url("gs://b/x") and fileio.is_url("ram://x") and not fileio.is_url("/tmp/x")
    assert not fileio.is_url("relative/dir") and not fileio.is_url("C:\\data")
    assert fileio.dirname("gs://b/x/y") == "gs://b/x" and fileio.basename("gs://b/x/y/") == "y"
    assert fileio.abspath("gs://b/x") == "gs://b/x"


@pytest.mark.parametrize("where", ["local", "ram"])
def test_basic_operations(tmp_path, where):
    root = str(tmp_path / "root") if where == "local" else _ram()
    d = fileio.join(root, "sub")
    fileio.makedirs(d)
    fileio.makedirs(d)  # exists: nothing happens
    assert fileio.isdir(d) and fileio.exists(d)
    arr = np.arange(40, dtype=np.float16).reshape(10, 4)
    with fileio.open(fileio.join(d, "a.npy"), "wb") as fh:
        np.save(fh, arr)
    with fileio.open(fileio.join(d, "a.npy"), "rb") as fh:
        np.testing.assert_array_equal(np.load(fh, allow_pickle=False), arr)
    with fileio.open(fileio.join(d, "t.csv"), "w", newline="") as fh:
        fh.write("start,end,text\r\n1,2,\"caf\u00e9, ok\"\r\n")
    with fileio.open(fileio.join(d, "t.csv"), "r", newline="", encoding="utf-8-sig") as fh:
        assert fh.read() == "start,end,text\r\n1,2,\"caf\u00e9, ok\"\r\n"
    fileio.atomic_write_json(fileio.join(d, "x.json"), {"a": [1, 2]})
    assert fileio.read_json(fileio.join(d, "x.json")) == {"a": [1, 2]}
    assert sorted(fileio.listdir(d)) == ["a.npy", "t.csv", "x.json"]  # no temporary files left
    assert fileio.glob(fileio.join(d, "*.npy")) == [fileio.join(d, "a.npy")]
    size = fileio.getsize(fileio.join(d, "a.npy"))
    raw = fileio.read_bytes(fileio.join(d, "a.npy"))
    assert len(raw) == size
    # ranged reads, through the handle cache, anywhere in the file and past its end
    reader = fileio.RangeReader()
    assert reader.read(fileio.join(d, "a.npy"), 0, 6) == b"\x93NUMPY"
    assert reader.read(fileio.join(d, "a.npy"), size - 8, 8) == raw[-8:]
    assert reader.read(fileio.join(d, "a.npy"), 10, 5) == raw[10:15]
    assert reader.read(fileio.join(d, "a.npy"), size - 2, 8) == raw[-2:]
    assert reader.read(fileio.join(d, "a.npy"), size + 10, 8) == b""
    assert fileio.read_range(fileio.join(d, "a.npy"), 1, 5) == b"NUMPY"
    reader.close()
    fileio.replace(fileio.join(d, "x.json"), fileio.join(d, "y.json"))
    assert not fileio.exists(fileio.join(d, "x.json")) and fileio.read_json(fileio.join(d, "y.json"))["a"] == [1, 2]
    fileio.write_bytes(fileio.join(d, "z.bin"), b"new")
    fileio.replace(fileio.join(d, "z.bin"), fileio.join(d, "y.json"))  # replaces an existing file
    assert fileio.read_bytes(fileio.join(d, "y.json")) == b"new"
    fileio.remove(fileio.join(d, "y.json"))
    with pytest.raises(FileNotFoundError):
        fileio.open(fileio.join(d, "missing.json"), "rb")
    with pytest.raises(FileNotFoundError):
        fileio.getsize(fileio.join(d, "missing.json"))
    with pytest.raises(FileNotFoundError):
        fileio.read_range(fileio.join(d, "missing.bin"), 0, 4)
    dst = fileio.join(root, "moved")
    fileio.move_tree(d, dst)
    assert sorted(fileio.listdir(dst)) == ["a.npy", "t.csv"] and not fileio.exists(fileio.join(d, "a.npy"))
    fileio.rmtree(dst)
    assert not fileio.exists(fileio.join(dst, "a.npy"))


def test_local_paths_do_not_import_tensorflow(tmp_path):
    """The store reader and the file layer stay TensorFlow-free on local paths (input workers)."""
    synthetic.write_per_video_layout(str(tmp_path / "f"), str(tmp_path / "c"), 3, seed=1, max_seconds=50)
    convert.convert_per_video(str(tmp_path / "f"), str(tmp_path / "c"), str(tmp_path / "s"), videos_per_shard=2)
    code = (
        "import sys\n"
        "from data_pipeline import fileio\n"
        "from data_pipeline.feature_store import FeatureStore\n"
        f"d = {str(tmp_path)!r}\n"
        "st = FeatureStore(d + '/s', 'train', verify='full')\n"
        "assert st[2].num_frames > 0 and st[st.video_ids[0]].num_captions > 0\n"
        "fileio.atomic_write_json(d + '/x.json', {'a': 1}); assert fileio.read_json(d + '/x.json') == {'a': 1}\n"
        "fileio.read_range(d + '/x.json', 0, 3); fileio.listdir(d); fileio.glob(d + '/*')\n"
        "print('tensorflow' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ the data path on ram://

@pytest.fixture(scope="module")
def per_video_ram(tmp_path_factory):
    """The same per-video corpus on ram:// and in a local folder, each converted into a store on the same side."""
    local = tmp_path_factory.mktemp("pv")
    ram = _ram()
    out = {}
    for name, root in (("local", str(local)), ("ram", ram)):
        synthetic.write_per_video_layout(fileio.join(root, "feat"), fileio.join(root, "caps"), 7, seed=11,
                                         max_seconds=90)
        out[name] = (root, convert.convert_per_video(fileio.join(root, "feat"), fileio.join(root, "caps"),
                                                     fileio.join(root, "store"), videos_per_shard=3))
    return out


def test_per_video_conversion_on_ram_equals_local(per_video_ram):
    (local, s_local), (ram, s_ram) = per_video_ram["local"], per_video_ram["ram"]
    assert s_ram["num_videos"] == s_local["num_videos"] == 7
    assert {k: s_ram[k] for k in ("num_frames", "num_captions", "skipped")} == \
        {k: s_local[k] for k in ("num_frames", "num_captions", "skipped")}
    names = sorted(fileio.listdir(fileio.join(ram, "store")))
    assert names == sorted(fileio.listdir(fileio.join(local, "store")))
    assert "train.index.json" in names and "train-00002.tfrecord" in names
    assert not [n for n in names if ".tmp" in n]
    st_ram = FeatureStore(fileio.join(ram, "store"), "train", verify="full")
    st_local = FeatureStore(fileio.join(local, "store"), "train")
    _same_records(st_ram, st_local)
    # random access by id and by position, in any order (ranged reads, cached handles)
    for i in (6, 0, 4, 4, 2):
        vid = st_local.video_ids[i]
        np.testing.assert_array_equal(st_ram[vid].features, st_local[i].features)
    # the shards are byte-identical
    for s in st_local.index["shards"]:
        assert fileio.read_bytes(fileio.join(ram, "store", s["file"])) == \
            fileio.read_bytes(fileio.join(local, "store", s["file"]))
    st_ram.close()


def test_crc_and_size_checks_on_ram(per_video_ram):
    ram, _ = per_video_ram["ram"]
    src = fileio.join(ram, "store")
    d = _ram()
    fileio.makedirs(d)
    for name in fileio.listdir(src):
        fileio.copy(fileio.join(src, name), fileio.join(d, name))
    st = FeatureStore(d, "train")
    victim = st.index["shards"][1]["videos"][1]
    path = fileio.join(d, st.index["shards"][1]["file"])
    data = bytearray(fileio.read_bytes(path))
    data[victim["offset"] + 12 + victim["length"] // 2] ^= 0xFF
    fileio.write_bytes(path, bytes(data))
    st = FeatureStore(d, "train")  # same size: opens
    st[st.index["shards"][1]["videos"][0]["id"]]
    with pytest.raises(DataError, match=rf"train-00001.tfrecord.*{victim['id']}.*CRC32"):
        st[victim["id"]]
    with pytest.raises(DataError, match="CRC32"):
        FeatureStore(d, "train", verify="full")
    fileio.write_bytes(path, bytes(data[:-100]))
    with pytest.raises(DataError, match=r"ram://.*train-00001.tfrecord.*truncated or corrupt"):
        FeatureStore(d, "train")
    fileio.remove(path)
    with pytest.raises(DataError, match=r"train-00001.tfrecord.*shard file missing"):
        FeatureStore(d, "train")
    fileio.remove(fileio.join(d, "train.index.json"))
    with pytest.raises(FileNotFoundError, match="no index"):
        FeatureStore(d, "train")


def test_tf_data_reads_a_ram_store(per_video_ram):
    ram, _ = per_video_ram["ram"]
    st = FeatureStore(fileio.join(ram, "store"), "train")
    got = list(tf_record_dataset(fileio.join(ram, "store"), "train").as_numpy_iterator())
    assert [g["video_id"].decode() for g in got] == st.video_ids
    np.testing.assert_array_equal(got[3]["features"], st[3].features)


def test_resume_and_refusal_on_ram(per_video_ram):
    ram, _ = per_video_ram["ram"]
    feat, caps, out = fileio.join(ram, "feat"), fileio.join(ram, "caps"), fileio.join(ram, "store")
    with pytest.raises(FileExistsError, match="pass --resume"):
        convert.convert_per_video(feat, caps, out, videos_per_shard=3)
    with pytest.raises(FileExistsError, match="videos_per_shard: 3 in the existing store, 4 now"):
        convert.convert_per_video(feat, caps, out, videos_per_shard=4, resume=True)
    assert convert.convert_per_video(feat, caps, out, videos_per_shard=3, resume=True)["num_videos"] == 7


def test_reference_layout_on_ram_equals_local(tmp_path):
    """The reference ShardedTensor layout read from ram:// (row ranges of *_data.npy, never whole)."""
    ram = _ram()
    synthetic.write_reference_layout(fileio.join(ram, "feat"), 7, videos_per_shard=3, seed=4)
    synthetic.write_reference_layout(str(tmp_path / "feat"), 7, videos_per_shard=3, seed=4)
    s_ram = convert.convert_reference_howto100m(fileio.join(ram, "feat"), fileio.join(ram, "store"),
                                                videos_per_shard=4)
    s_local = convert.convert_reference_howto100m(str(tmp_path / "feat"), str(tmp_path / "store"),
                                                  videos_per_shard=4)
    assert s_ram["num_videos"] == s_local["num_videos"] == 7
    _same_records(FeatureStore(fileio.join(ram, "store"), "train", verify="full"),
                  FeatureStore(str(tmp_path / "store"), "train"))
    data = fileio.join(ram, "feat", "train_1_data.npy")
    view = convert.RemoteNpy(data)
    assert view.usable and len(view) == np.load(str(tmp_path / "feat" / "train_1_data.npy")).shape[0]
    np.testing.assert_array_equal(view[5:9], np.load(str(tmp_path / "feat" / "train_1_data.npy"))[5:9])
    # a truncated remote .npy is named as such
    raw = fileio.read_bytes(data)
    fileio.write_bytes(data, raw[:len(raw) // 2])
    with pytest.raises(DataError, match=r"train_1_data.npy.*truncated"):
        convert.convert_reference_howto100m(fileio.join(ram, "feat"), fileio.join(ram, "store2"))


def test_conversion_in_tasks_on_ram(per_video_ram):
    ram, _ = per_video_ram["ram"]
    out = fileio.join(ram, "tasks")
    for i in (1, 0):
        s = convert.convert_per_video(fileio.join(ram, "feat"), fileio.join(ram, "caps"), out,
                                      videos_per_shard=2, num_tasks=2, task_index=i)
    assert s["merged"]["num_videos"] == 7
    _same_records(FeatureStore(out, "train", verify="full"), FeatureStore(fileio.join(ram, "store"), "train"))


def test_train_iterator_reads_a_ram_store(per_video_ram):
    """TrainIterator in this process (num_workers=0: ram:// is not shared with other processes)."""
    from data_pipeline.input_pipeline import PipelineConfig, TrainIterator

    ram, _ = per_video_ram["ram"]
    cfg = PipelineConfig(videos_per_device=2, num_local_devices=1, process_index=0, process_count=1,
                         seed=0, num_workers=0)
    with TrainIterator(fileio.join(ram, "store"), "train", cfg) as it:
        b = next(it)
    with TrainIterator(fileio.join(per_video_ram["local"][0], "store"), "train", cfg) as it:
        ref = next(it)
    for key in ("caps", "vfeats", "video_index", "video_start", "video_end"):
        np.testing.assert_array_equal(b[key], ref[key])
