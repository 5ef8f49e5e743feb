"""The feature store's on-disk format: the video record, its validation and (de)serialisation,
and the names and sizes of shards.

The layout of a store folder and the record fields are described in
:mod:`data_pipeline.feature_store`; the writer is :mod:`data_pipeline.store_writer`.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional

import numpy as np

from data_pipeline import fileio
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


def late_captions(starts, ends, num_frames: int, time_tolerance: float = 2.0) -> np.ndarray:
    """bool [n]: captions that start at or after the last feature second (``start >= T``) or end
    more than ``time_tolerance`` seconds after it (``end > T + time_tolerance``)."""
    s = np.asarray(starts, np.float64)
    e = np.asarray(ends, np.float64)
    return (s >= num_frames) | (e > num_frames + time_tolerance)


def validate_record(rec: VideoRecord, *, path: str = "", feature_dim: int = FEATURE_DIM,
                    time_tolerance: float = 2.0, strict: bool = False) -> int:
    """Raise :class:`DataError` (naming ``path`` and the video) if ``rec`` is unusable.

    Checks: feature shape ``[T>0, feature_dim]``, finite features, at least one caption,
    caption arrays of equal length, finite times, ``0 <= start <= end``, token ids in
    ``[0, 30522)`` and at most 32 per caption.

    Late captions (:func:`late_captions`: ``start >= T`` or ``end > T + time_tolerance``) are
    kept by default and only counted: the sampler clamps a clip centre into ``[0, T-1]``, so such
    a caption is paired with the last seconds of the video, as in the reference.  With
    ``strict=True`` (``--strict``) a late caption makes the video bad (reason
    ``caption_outside_video``).  Returns the number of late captions that were kept.
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
    checks = [("non-finite caption time", ~np.isfinite(s) | ~np.isfinite(e), "caption_time"),
              ("caption end < start", e < s, "caption_end_before_start"),
              ("caption start < 0", s < 0, "caption_time")]
    late = late_captions(s, e, t, time_tolerance)
    if strict:
        checks.append((f"caption outside the video (T = {t} s, tolerance {time_tolerance} s; --strict)",
                       late, "caption_outside_video"))
    for name, bad_mask, reason in checks:
        if bad_mask.any():
            i = int(np.argmax(bad_mask))
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
    return 0 if strict else int(late.sum())


# ----------------------------------------------------------------------------- serialisation

def _example_proto():
    """(example module, feature module) stand-ins: our TensorFlow-free Example classes."""
    from data_pipeline.example_proto import example_classes
    classes = example_classes()
    return classes, classes


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
    # deterministic: map entries sorted by key, so the same video gives the same bytes in every process
    return example_pb2.Example(features=feature_pb2.Features(feature=fmap)).SerializeToString(deterministic=True)


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


def shard_prefix(split: str, task_index: int = 0, num_tasks: int = 1) -> str:
    """Shard names start with this: ``train`` (one task) or ``train-t00002`` (task 2 of several)."""
    return split if num_tasks == 1 else f"{split}-t{task_index:05d}"


def task_index_name(split: str, task_index: int, num_tasks: int) -> str:
    """File name of the partial index of one task: ``train.task-00002-of-00008.index.json``."""
    return f"{split}.task-{task_index:05d}-of-{num_tasks:05d}.index.json"


def sidecar_pattern(split: str) -> "re.Pattern[str]":
    """Sidecar names of a split's shards; group 1 = the shard prefix."""
    return re.compile(rf"^({re.escape(split)}(?:-t\d+)?)-\d+\.tfrecord\.json$")


def is_task_index(split: str, name: str) -> bool:
    return re.fullmatch(rf"{re.escape(split)}\.task-\d+-of-\d+\.index\.json", name) is not None



def check_shard_sizes(paths: list[str], shards: list[dict]) -> None:
    """DataError naming the first shard (in index order) that is missing or has another size.

    Remote shards are checked by a pool of threads (one metadata request each)."""
    def size(path):
        try:
            return fileio.getsize(path)
        except (FileNotFoundError, IsADirectoryError):
            return None

    if paths and fileio.is_url(paths[0]) and len(paths) > 1:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(min(32, len(paths))) as pool:
            sizes = list(pool.map(size, paths))
    else:
        sizes = [size(p) for p in paths]
    for path, shard, got in zip(paths, shards, sizes):
        if got is None:
            raise DataError("shard file missing", path=path, reason="missing_shard")
        if got != shard["bytes"]:
            last = shard["videos"][-1]["id"] if shard["videos"] else ""
            raise DataError(f"shard has {got} bytes, index says {shard['bytes']} "
                            f"(truncated or corrupt; its last video is {last!r})",
                            path=path, reason="truncated_shard")


