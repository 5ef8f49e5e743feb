"""Sharded on-disk feature store: TFRecord shards of ``tf.train.Example`` plus a JSON index.

Layout of a store directory (one or more splits)::

    <dir>/<split>-00000.tfrecord      one record per video (tf.train.Example, see below)
    <dir>/<split>-00000.tfrecord.json sidecar index of that shard (written after the shard)
    <dir>/<split>.index.json          split index: shards, per-video byte offset, length, crc32

Why TFRecord + index (and not ArrayRecord): TFRecord is readable by ``tf.data`` and TFDS
without extra packages (``array_record`` is not installed here); the index gives O(1) random
access by video (``os.pread`` of one record at a known offset) which the reference sampling
needs (a batch is a list of videos), and a per-record zlib CRC32 in the index catches
truncated or corrupt shards with an error that names the file and the video.

Record fields (``tf.train.Example``):
    video_id            bytes
    num_frames          int64                 T (seconds)
    feature_dim         int64                 512
    features            bytes                 float16 little-endian, [T, feature_dim] row-major
    caption_start       float_list [n]        seconds
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
their sidecar) are kept and skipped by ``resume=True``.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import struct
import zlib
from typing import Iterator, Optional

import numpy as np

from data_pipeline.tokenization import MAX_STORED_TOKENS, VOCAB_SIZE

FEATURE_DIM = 512
INDEX_VERSION = 1


class DataError(ValueError):
    """Bad input data. The message names the file, the video and the offending field/value."""

    def __init__(self, message: str, *, path: str = "", video_id: str = "", reason: str = "invalid"):
        where = ", ".join(x for x in (f"file {path}" if path else "", f"video {video_id!r}" if video_id else "") if x)
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.video_id = video_id
        self.reason = reason


@dataclasses.dataclass
class VideoRecord:
    """One video of the store (all times in seconds).

    features: float16 [T, 512]; starts/ends: float32 [n]; tokens: list of n int32 arrays.
    """
    video_id: str
    features: np.ndarray                     # [T, 512] float16
    starts: np.ndarray                       # [n] float32
    ends: np.ndarray                         # [n] float32
    tokens: list                             # n x int32 [<=32]
    texts: Optional[list] = None             # n x str
    gt_start: Optional[np.ndarray] = None    # [n] float32
    gt_end: Optional[np.ndarray] = None      # [n] float32
    gt_alignable: Optional[np.ndarray] = None  # [n] int64
    gt_text: Optional[list] = None           # n x str (clean sentence, "" if none)

    @property
    def num_frames(self) -> int:
        return int(self.features.shape[0])

    @property
    def num_captions(self) -> int:
        return int(len(self.starts))


def validate_record(rec: VideoRecord, *, path: str = "", feature_dim: int = FEATURE_DIM,
                    time_tolerance: float = 2.0) -> None:
    """Raise :class:`DataError` (naming ``path`` and the video) if ``rec`` is unusable.

    Checks: feature shape ``[T>0, feature_dim]``, finite features, at least one caption,
    caption arrays of equal length, finite times, ``0 <= start <= end``, caption inside the
    video (``start < T`` and ``end <= T + time_tolerance``; ASR times may run a little past the
    last feature second), token ids in ``[0, 30522)`` and at most 32 per caption.
    """
    vid = rec.video_id
    f = rec.features
    if f.ndim != 2 or f.shape[1] != feature_dim:
        raise DataError(f"features have shape {tuple(f.shape)}, expected [T, {feature_dim}]",
                        path=path, video_id=vid, reason="feature_width")
    if f.shape[0] == 0:
        raise DataError("features have 0 frames", path=path, video_id=vid, reason="empty_video")
    finite = np.isfinite(f)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        raise DataError(f"features contain {int((~finite).sum())} non-finite values (NaN/inf), "
                        f"first at frame {int(bad[0])}, dim {int(bad[1])}: {f[bad[0], bad[1]]!r}",
                        path=path, video_id=vid, reason="nonfinite_features")
    if f.dtype != np.float16 and np.abs(f).max() > 65504:
        raise DataError(f"feature values up to {float(np.abs(f).max())!r} overflow float16",
                        path=path, video_id=vid, reason="nonfinite_features")
    n = len(rec.starts)
    if n == 0:
        raise DataError("video has no captions", path=path, video_id=vid, reason="no_captions")
    if len(rec.ends) != n or len(rec.tokens) != n:
        raise DataError(f"caption arrays disagree: {n} starts, {len(rec.ends)} ends, "
                        f"{len(rec.tokens)} token lists", path=path, video_id=vid, reason="caption_count")
    s = np.asarray(rec.starts, np.float64)
    e = np.asarray(rec.ends, np.float64)
    t = f.shape[0]
    for name, bad_mask in (("non-finite caption time", ~np.isfinite(s) | ~np.isfinite(e)),
                           ("caption end < start", e < s),
                           ("caption start < 0", s < 0),
                           (f"caption outside the video (T = {t} s, tolerance {time_tolerance} s)",
                            (s >= t) | (e > t + time_tolerance))):
        if bad_mask.any():
            i = int(np.argmax(bad_mask))
            reason = {"caption end < start": "caption_end_before_start"}.get(name, "caption_time")
            if name.startswith("caption outside"):
                reason = "caption_outside_video"
            raise DataError(f"{name}: caption {i} has start={s[i]!r}, end={e[i]!r}",
                            path=path, video_id=vid, reason=reason)
    for i, tk in enumerate(rec.tokens):
        tk = np.asarray(tk)
        if tk.ndim != 1 or len(tk) > MAX_STORED_TOKENS:
            raise DataError(f"caption {i} has {tk.shape} tokens, expected at most {MAX_STORED_TOKENS}",
                            path=path, video_id=vid, reason="caption_tokens")
        if len(tk) and (tk.min() < 0 or tk.max() >= VOCAB_SIZE):
            raise DataError(f"caption {i} has token ids outside [0, {VOCAB_SIZE}): {tk.tolist()}",
                            path=path, video_id=vid, reason="caption_tokens")


# ----------------------------------------------------------------------------- serialisation

def _example_proto():
    from tensorflow.core.example import example_pb2, feature_pb2  # protobuf only, light
    return example_pb2, feature_pb2


def serialize_record(rec: VideoRecord) -> bytes:
    """``VideoRecord`` -> serialized ``tf.train.Example`` bytes."""
    example_pb2, feature_pb2 = _example_proto()
    F = feature_pb2.Feature

    def b(vals):
        return F(bytes_list=feature_pb2.BytesList(value=vals))

    def fl(vals):
        return F(float_list=feature_pb2.FloatList(value=np.asarray(vals, np.float32).tolist()))

    def i64(vals):
        return F(int64_list=feature_pb2.Int64List(value=np.asarray(vals, np.int64).tolist()))

    feats = np.ascontiguousarray(rec.features, dtype="<f2")
    lens = [len(t) for t in rec.tokens]
    flat = np.concatenate([np.asarray(t, np.int64) for t in rec.tokens]) if sum(lens) else np.zeros(0, np.int64)
    fmap = {
        "video_id": b([rec.video_id.encode()]),
        "num_frames": i64([feats.shape[0]]),
        "feature_dim": i64([feats.shape[1]]),
        "features": b([feats.tobytes()]),
        "caption_start": fl(rec.starts),
        "caption_end": fl(rec.ends),
        "caption_num_tokens": i64(lens),
        "caption_tokens": i64(flat),
    }
    if rec.texts is not None:
        fmap["caption_text"] = b([str(t).encode() for t in rec.texts])
    if rec.gt_start is not None:
        fmap["gt_start"] = fl(rec.gt_start)
        fmap["gt_end"] = fl(rec.gt_end)
        fmap["gt_alignable"] = i64(rec.gt_alignable)
    if rec.gt_text is not None:
        fmap["gt_text"] = b([str(t).encode() for t in rec.gt_text])
    return example_pb2.Example(features=feature_pb2.Features(feature=fmap)).SerializeToString()


def parse_record(data: bytes, *, path: str = "", video_id: str = "") -> VideoRecord:
    """Serialized ``tf.train.Example`` -> ``VideoRecord`` (numpy; no TensorFlow graph)."""
    example_pb2, _ = _example_proto()
    try:
        ex = example_pb2.Example.FromString(data)
        f = ex.features.feature
        vid = f["video_id"].bytes_list.value[0].decode()
        t = int(f["num_frames"].int64_list.value[0])
        d = int(f["feature_dim"].int64_list.value[0])
        raw = f["features"].bytes_list.value[0]
    except Exception as e:  # noqa: BLE001 - any protobuf/key failure is corrupt data
        raise DataError(f"cannot parse record ({type(e).__name__}: {e})", path=path, video_id=video_id,
                        reason="corrupt_record") from e
    if len(raw) != t * d * 2:
        raise DataError(f"features field has {len(raw)} bytes, expected {t}x{d}x2", path=path,
                        video_id=vid, reason="corrupt_record")
    feats = np.frombuffer(raw, dtype="<f2").reshape(t, d)
    lens = np.asarray(f["caption_num_tokens"].int64_list.value, np.int64)
    flat = np.asarray(f["caption_tokens"].int64_list.value, np.int64)
    if lens.sum() != len(flat):
        raise DataError(f"caption_tokens has {len(flat)} ids, caption_num_tokens sums to {lens.sum()}",
                        path=path, video_id=vid, reason="corrupt_record")
    bounds = np.concatenate([[0], np.cumsum(lens)])
    tokens = [flat[bounds[i]:bounds[i + 1]].astype(np.int32) for i in range(len(lens))]
    rec = VideoRecord(
        video_id=vid, features=feats,
        starts=np.asarray(f["caption_start"].float_list.value, np.float32),
        ends=np.asarray(f["caption_end"].float_list.value, np.float32),
        tokens=tokens)
    if "caption_text" in f:
        rec.texts = [x.decode() for x in f["caption_text"].bytes_list.value]
    if "gt_start" in f:
        rec.gt_start = np.asarray(f["gt_start"].float_list.value, np.float32)
        rec.gt_end = np.asarray(f["gt_end"].float_list.value, np.float32)
        rec.gt_alignable = np.asarray(f["gt_alignable"].int64_list.value, np.int64)
    if "gt_text" in f:
        rec.gt_text = [x.decode() for x in f["gt_text"].bytes_list.value]
    return rec


# TFRecord framing (written by tf.io.TFRecordWriter): uint64 length, uint32 masked crc32c of
# the length, payload, uint32 masked crc32c of the payload -> 16 bytes of overhead per record.
# The reader checks the length field and a zlib CRC32 of the payload stored in the index.


# ----------------------------------------------------------------------------- writer

class FeatureStoreWriter:
    """Writes videos of one split into TFRecord shards and an index (atomic, resumable).

    Example::

        with FeatureStoreWriter(out_dir, "train", videos_per_shard=512) as w:
            for rec in records:
                w.add(rec)
        # -> out_dir/train-00000.tfrecord ..., out_dir/train.index.json

    Every record is validated first (:func:`validate_record`); ``on_error="skip"`` counts and
    skips bad videos (see ``skipped``), ``"raise"`` (default) raises :class:`DataError`.
    """

    def __init__(self, out_dir: str, split: str, *, videos_per_shard: int = 512,
                 feature_dim: int = FEATURE_DIM, time_tolerance: float = 2.0,
                 on_error: str = "raise", resume: bool = False, source: str = "",
                 metadata: Optional[dict] = None):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir, self.split = out_dir, split
        self.videos_per_shard = videos_per_shard
        self.feature_dim = feature_dim
        self.time_tolerance = time_tolerance
        self.on_error = on_error
        self.source = source
        self.metadata = dict(metadata or {})
        self.skipped: dict[str, int] = {}
        self.skipped_videos: list[tuple[str, str]] = []
        self._shards: list[dict] = []
        self._done_ids: set[str] = set()
        self._buf: list[tuple[str, bytes, int, int]] = []
        index_path = os.path.join(out_dir, f"{split}.index.json")
        existing = sorted(glob.glob(os.path.join(out_dir, f"{split}-*.tfrecord.json")))
        if existing and not resume:
            raise FileExistsError(f"{out_dir} already holds shards of split {split!r}; "
                                  "use resume=True or another directory")
        if resume:
            for side in existing:
                with open(side) as fh:
                    shard = json.load(fh)
                shard_path = os.path.join(out_dir, shard["file"])
                if os.path.exists(shard_path) and os.path.getsize(shard_path) == shard["bytes"]:
                    self._shards.append(shard)
                    self._done_ids.update(v["id"] for v in shard["videos"])
            if os.path.exists(index_path):
                os.remove(index_path)
        self._closed = False

    def has(self, video_id: str) -> bool:
        """True if ``video_id`` is already in a finished shard (resume)."""
        return video_id in self._done_ids

    def _skip(self, err: DataError) -> None:
        self.skipped[err.reason] = self.skipped.get(err.reason, 0) + 1
        self.skipped_videos.append((err.video_id, str(err)))

    def report_error(self, err: DataError) -> None:
        """Raise ``err`` or count it as a skip, according to ``on_error`` (for converters)."""
        if self.on_error == "raise":
            raise err
        self._skip(err)

    def add(self, rec: VideoRecord, *, path: str = "") -> bool:
        """Validate and queue one video. Returns False if it was skipped."""
        if rec.video_id in self._done_ids:
            return True
        try:
            validate_record(rec, path=path, feature_dim=self.feature_dim, time_tolerance=self.time_tolerance)
        except DataError as err:
            self.report_error(err)
            return False
        payload = serialize_record(rec)
        self._buf.append((rec.video_id, payload, rec.num_frames, rec.num_captions))
        self._done_ids.add(rec.video_id)
        if len(self._buf) >= self.videos_per_shard:
            self._flush()
        return True

    def _flush(self) -> None:
        if not self._buf:
            return
        from data_pipeline.tf_utils import import_tensorflow
        tf = import_tensorflow()

        num = max([int(s["file"].rsplit("-", 1)[1].split(".")[0]) for s in self._shards] + [-1]) + 1
        name = f"{self.split}-{num:05d}.tfrecord"
        final = os.path.join(self.out_dir, name)
        tmp = final + ".tmp"
        videos = []
        offset = 0
        with tf.io.TFRecordWriter(tmp) as w:
            for vid, payload, t, n in self._buf:
                w.write(payload)
                videos.append({"id": vid, "offset": offset, "length": len(payload),
                               "crc32": zlib.crc32(payload), "num_frames": t, "num_captions": n})
                offset += len(payload) + 16
        if os.path.getsize(tmp) != offset:
            raise IOError(f"{tmp}: wrote {os.path.getsize(tmp)} bytes, expected {offset}")
        os.replace(tmp, final)
        shard = {"file": name, "bytes": offset, "videos": videos}
        _atomic_json(final + ".json", shard)
        self._shards.append(shard)
        self._buf = []

    def close(self) -> dict:
        """Flush the last shard and write ``<split>.index.json``. Returns the index dict."""
        if self._closed:
            return self.index
        self._flush()
        self._shards.sort(key=lambda s: s["file"])
        self.index = {
            "version": INDEX_VERSION, "split": self.split, "feature_dim": self.feature_dim,
            "feature_dtype": "float16", "source": self.source,
            "num_videos": sum(len(s["videos"]) for s in self._shards),
            "num_frames": sum(v["num_frames"] for s in self._shards for v in s["videos"]),
            "num_captions": sum(v["num_captions"] for s in self._shards for v in s["videos"]),
            "skipped": dict(self.skipped), "metadata": self.metadata, "shards": self._shards,
        }
        _atomic_json(os.path.join(self.out_dir, f"{self.split}.index.json"), self.index)
        self._closed = True
        return self.index

    def __enter__(self) -> "FeatureStoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def _atomic_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- reader

class FeatureStore:
    """Random access (by position or video id) to one split of a feature store.

    ``verify="size"`` (default) checks at open time that every shard has the size recorded in
    the index (catches truncated/extended shards); ``"full"`` also checks every record's CRC32.
    Every read checks the record framing and the payload CRC32 and raises :class:`DataError`
    naming the shard file and the video on mismatch.
    """

    def __init__(self, store_dir: str, split: str = "train", *, verify: str = "size"):
        self.store_dir, self.split = store_dir, split
        index_path = os.path.join(store_dir, f"{split}.index.json")
        if not os.path.exists(index_path):
            raise FileNotFoundError(f"no index {index_path} (store not converted, or the conversion "
                                    "was interrupted before the index was written)")
        try:
            with open(index_path) as fh:
                self.index = json.load(fh)
        except json.JSONDecodeError as e:
            raise DataError(f"index is not valid JSON ({e})", path=index_path, reason="corrupt_index") from e
        self.feature_dim = int(self.index["feature_dim"])
        self.paths: list[str] = []
        self._entries: list[tuple[int, int, int, int]] = []  # (shard, offset, length, crc)
        self.video_ids: list[str] = []
        self.num_frames = []
        self.num_captions = []
        for si, shard in enumerate(self.index["shards"]):
            path = os.path.join(store_dir, shard["file"])
            self.paths.append(path)
            if verify != "none":
                if not os.path.exists(path):
                    raise DataError("shard file missing", path=path, reason="missing_shard")
                size = os.path.getsize(path)
                if size != shard["bytes"]:
                    last = shard["videos"][-1]["id"] if shard["videos"] else ""
                    raise DataError(f"shard has {size} bytes, index says {shard['bytes']} "
                                    f"(truncated or corrupt; its last video is {last!r})",
                                    path=path, reason="truncated_shard")
            for v in shard["videos"]:
                self._entries.append((si, v["offset"], v["length"], v["crc32"]))
                self.video_ids.append(v["id"])
                self.num_frames.append(v["num_frames"])
                self.num_captions.append(v["num_captions"])
        self.num_frames = np.asarray(self.num_frames, np.int64)
        self.num_captions = np.asarray(self.num_captions, np.int64)
        self._pos = {v: i for i, v in enumerate(self.video_ids)}
        self._fds: dict[int, int] = {}
        if verify == "full":
            for i in range(len(self)):
                self.read_bytes(i)

    def __len__(self) -> int:
        return len(self._entries)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def position(self, video_id: str) -> int:
        """Index of ``video_id`` in this split."""
        try:
            return self._pos[video_id]
        except KeyError:
            raise KeyError(f"video {video_id!r} is not in {self.store_dir} split {self.split!r}") from None

    def read_bytes(self, i: int) -> bytes:
        """Serialized Example of video ``i`` (checked framing and CRC32)."""
        si, off, length, crc = self._entries[i]
        path = self.paths[si]
        vid = self.video_ids[i]
        fd = self._fds.get(si)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise DataError(f"cannot open shard ({e})", path=path, video_id=vid, reason="missing_shard") from e
            self._fds[si] = fd
        buf = os.pread(fd, length + 16, off)
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
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


def tf_record_dataset(store_dir: str, split: str = "train"):
    """The split as a ``tf.data.Dataset`` of parsed examples (sequential read, TF parsing).

    Elements: ``video_id`` string, ``features`` float16 [T, 512], ``caption_start``/``caption_end``
    float32 [n], ``caption_tokens`` RaggedTensor int64 [n, None].
    """
    import tensorflow as tf

    index = FeatureStore(store_dir, split).index
    files = [os.path.join(store_dir, s["file"]) for s in index["shards"]]
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
