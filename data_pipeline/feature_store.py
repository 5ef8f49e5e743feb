"""Sharded feature store: TFRecord shards of ``tf.train.Example`` plus a JSON index.

Layout of a store directory (one or more splits; a local folder or a URL such as
``gs://bucket/store``, every file goes through :mod:`data_pipeline.fileio`)::

    <dir>/<split>-00000.tfrecord      one record per video (tf.train.Example, see below)
    <dir>/<split>-00000.tfrecord.json sidecar index of that shard (written after the shard)
    <dir>/<split>.index.json          split index: shards, per-video byte offset, length, crc32,
                                      skipped videos (counts and ids per reason), late captions
    <dir>/<split>.settings.json       the build's settings (source, tolerance, ...), written first
  a conversion in N tasks (task i) instead writes, before the merge into <split>.index.json:
    <dir>/<split>-t0000i-00000.tfrecord (+ .json)        the shards of task i
    <dir>/<split>.task-0000i-of-0000N.index.json        the partial index of task i

Why TFRecord + index (and not ArrayRecord): TFRecord is readable by ``tf.data`` and TFDS
without extra packages (``array_record`` is not installed here); the index gives O(1) random
access by video (one ranged read of one record at a known offset: ``os.pread`` locally)
which the reference sampling needs (a batch is a list of videos), and a per-record zlib CRC32
in the index catches truncated or corrupt shards with an error that names the file and the
video.

Index entry of a video: ``id``, ``offset``, ``length``, ``crc32``, ``num_frames``,
``num_captions`` and, if some of its captions are late (start at or after the last feature
second, or end more than ``time_tolerance`` after it, kept unless ``--strict``),
``clamped_captions``.  The split index sums them up: ``clamped_captions``, ``clamped_videos``,
and says what the build did with late captions (``late_captions``: ``"keep"`` or ``"reject"``).

Record fields (``tf.train.Example``):
    video_id            bytes
    num_frames          int64                 T (seconds)
    feature_dim         int64                 512
    features            bytes                 float16 little-endian, [T, feature_dim] row-major
    caption_start       float_list [n]        seconds (as given; may lie after T, see above)
    caption_end         float_list [n]        seconds
    caption_num_tokens  int64_list [n]        0..32
    caption_tokens      int64_list [sum n_i]  bert-base-uncased ids, no special tokens
  optional (the embedded youcook2-mnc corpus writes them):
    caption_text        bytes_list [n]
    gt_start, gt_end    float_list [n]        true segment of the caption (-1 if none)
    gt_alignable        int64_list [n]        1 if the caption describes something shown
    gt_text             bytes_list [n]        clean annotated sentence ("" for chatter)

All writes go to a temporary file that is renamed when complete, so an interrupted
conversion never leaves a half-written shard under its final name; finished shards (with
their sidecar) are kept and skipped by ``resume=True`` (``--resume``), which is refused when the
folder's split was built with other settings.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Iterator

import numpy as np

from data_pipeline import fileio
from data_pipeline.store_format import (FEATURE_DIM, INDEX_VERSION, DataError, VideoRecord, check_shard_sizes,
                                        is_task_index, late_captions, parse_record, serialize_record, shard_prefix,
                                        task_index_name, validate_record)
from data_pipeline.store_writer import FeatureStoreWriter, check_tasks, merge_task_indexes, missing_tasks, task_range

__all__ = [
    "FEATURE_DIM", "INDEX_VERSION", "DataError", "VideoRecord", "late_captions", "validate_record",
    "serialize_record", "parse_record", "shard_prefix", "task_index_name", "FeatureStoreWriter",
    "check_tasks", "task_range", "missing_tasks", "merge_task_indexes", "FeatureStore",
    "tf_record_dataset",
]



# ----------------------------------------------------------------------------- reader

class FeatureStore:
    """Random access (by position or video id) to one split of a feature store.

    ``store_dir`` is a local folder or a URL (``gs://...``, see :mod:`data_pipeline.fileio`);
    a local store is read with ``os.pread`` and never imports TensorFlow, a remote one with one
    ranged read per record.  ``verify="size"`` (default) checks at open time that every shard
    has the size recorded in the index (catches truncated/extended shards); ``"full"`` also
    checks every record's CRC32; ``"none"`` checks nothing at open time.  Every read checks the
    record framing and the payload CRC32 and raises :class:`DataError` naming the shard file
    and the video on mismatch.
    """

    def __init__(self, store_dir: str, split: str = "train", *, verify: str = "size"):
        store_dir = os.fspath(store_dir)
        self.store_dir, self.split = store_dir, split
        index_path = fileio.join(store_dir, f"{split}.index.json")
        if not fileio.isfile(index_path):
            partial = sorted(n for n in (fileio.listdir(store_dir) if fileio.isdir(store_dir) else [])
                             if is_task_index(split, n))
            if partial:
                n_tasks = int(partial[0].rsplit("-of-", 1)[1].split(".")[0])
                raise FileNotFoundError(
                    f"no index {index_path}: split {split!r} was converted in {n_tasks} tasks and "
                    f"{len(partial)} have finished; when all have, run python -m data_pipeline.build merge "
                    f"--out {store_dir} --split {split} --num-tasks {n_tasks}")
            raise FileNotFoundError(f"no index {index_path} (store not converted, or the conversion "
                                    "was interrupted before the index was written)")
        try:
            self.index = fileio.read_json(index_path)
        except json.JSONDecodeError as e:
            raise DataError(f"index is not valid JSON ({e})", path=index_path, reason="corrupt_index") from e
        self.feature_dim = int(self.index["feature_dim"])
        self.paths: list[str] = [fileio.join(store_dir, shard["file"]) for shard in self.index["shards"]]
        self._entries: list[tuple[int, int, int, int]] = []  # (shard, offset, length, crc)
        self.video_ids: list[str] = []
        self.num_frames = []
        self.num_captions = []
        if verify != "none":
            check_shard_sizes(self.paths, self.index["shards"])
        for si, shard in enumerate(self.index["shards"]):
            for v in shard["videos"]:
                self._entries.append((si, v["offset"], v["length"], v["crc32"]))
                self.video_ids.append(v["id"])
                self.num_frames.append(v["num_frames"])
                self.num_captions.append(v["num_captions"])
        self.num_frames = np.asarray(self.num_frames, np.int64)
        self.num_captions = np.asarray(self.num_captions, np.int64)
        self._pos = {v: i for i, v in enumerate(self.video_ids)}
        self._reader = fileio.RangeReader()
        if verify == "full":
            for i in range(len(self)):
                self.read_bytes(i)

    def __len__(self) -> int:
        return len(self._entries)

    def position(self, video_id: str) -> int:
        """Index of ``video_id`` in this split."""
        try:
            return self._pos[video_id]
        except KeyError:
            raise KeyError(f"video {video_id!r} is not in {self.store_dir} split {self.split!r}") from None

    def read_bytes(self, i: int) -> bytes:
        """Serialized Example of video ``i`` (checked framing and CRC32): one ranged read."""
        si, off, length, crc = self._entries[i]
        path = self.paths[si]
        vid = self.video_ids[i]
        try:
            buf = self._reader.read(path, off, length + 16)
        except OSError as e:
            raise DataError(f"cannot read shard ({e})", path=path, video_id=vid, reason="missing_shard") from e
        if len(buf) != length + 16:
            raise DataError(f"record at byte {off} is truncated ({len(buf)} of {length + 16} bytes)",
                            path=path, video_id=vid, reason="truncated_shard")
        (n,) = struct.unpack("<Q", buf[:8])
        if n != length:
            raise DataError(f"record at byte {off} has length field {n}, index says {length}",
                            path=path, video_id=vid, reason="corrupt_record")
        payload = buf[12:12 + length]
        if zlib.crc32(payload) != crc:
            raise DataError(f"record at byte {off} fails its CRC32 check (corrupt shard)",
                            path=path, video_id=vid, reason="corrupt_record")
        return payload

    def __getitem__(self, key) -> VideoRecord:
        i = self.position(key) if isinstance(key, str) else int(key)
        rec = parse_record(self.read_bytes(i), path=self.paths[self._entries[i][0]], video_id=self.video_ids[i])
        if rec.video_id != self.video_ids[i]:
            raise DataError(f"record holds video {rec.video_id!r}, index says {self.video_ids[i]!r}",
                            path=self.paths[self._entries[i][0]], video_id=self.video_ids[i],
                            reason="corrupt_record")
        return rec

    def __iter__(self) -> Iterator[VideoRecord]:
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        self._reader.close()


def tf_record_dataset(store_dir: str, split: str = "train"):
    """The split as a ``tf.data.Dataset`` of parsed examples (sequential read, TF parsing).

    Works for local and remote stores (TFRecordDataset reads the same URLs as ``fileio``).
    Elements: ``video_id`` string, ``features`` float16 [T, 512], ``caption_start``/``caption_end``
    float32 [n], ``caption_tokens`` RaggedTensor int64 [n, None].
    """
    from data_pipeline.tf_utils import import_tensorflow
    tf = import_tensorflow()

    store = FeatureStore(store_dir, split)
    files = list(store.paths)
    store.close()
    spec = {
        "video_id": tf.io.FixedLenFeature([], tf.string),
        "num_frames": tf.io.FixedLenFeature([], tf.int64),
        "feature_dim": tf.io.FixedLenFeature([], tf.int64),
        "features": tf.io.FixedLenFeature([], tf.string),
        "caption_start": tf.io.VarLenFeature(tf.float32),
        "caption_end": tf.io.VarLenFeature(tf.float32),
        "caption_num_tokens": tf.io.VarLenFeature(tf.int64),
        "caption_tokens": tf.io.VarLenFeature(tf.int64),
    }

    def parse(x):
        ex = tf.io.parse_single_example(x, spec)
        feats = tf.reshape(tf.io.decode_raw(ex["features"], tf.float16, little_endian=True),
                           [ex["num_frames"], ex["feature_dim"]])
        toks = tf.RaggedTensor.from_row_lengths(tf.sparse.to_dense(ex["caption_tokens"]),
                                                tf.sparse.to_dense(ex["caption_num_tokens"]))
        return {"video_id": ex["video_id"], "features": feats,
                "caption_start": tf.sparse.to_dense(ex["caption_start"]),
                "caption_end": tf.sparse.to_dense(ex["caption_end"]), "caption_tokens": toks}

    return tf.data.TFRecordDataset(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
