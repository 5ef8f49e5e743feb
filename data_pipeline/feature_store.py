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

import dataclasses
import json
import os
import re
import struct
import zlib
from typing import Iterator, Optional

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


# ----------------------------------------------------------------------------- writer

# Settings that builds made before they were recorded had implicitly (for --resume checks).
_SETTING_DEFAULTS = {"late_captions": "reject", "num_tasks": 1}


def shard_prefix(split: str, task_index: int = 0, num_tasks: int = 1) -> str:
    """Shard names start with this: ``train`` (one task) or ``train-t00002`` (task 2 of several)."""
    return split if num_tasks == 1 else f"{split}-t{task_index:05d}"


def task_index_name(split: str, task_index: int, num_tasks: int) -> str:
    """File name of the partial index of one task: ``train.task-00002-of-00008.index.json``."""
    return f"{split}.task-{task_index:05d}-of-{num_tasks:05d}.index.json"


def _sidecar_pattern(split: str) -> "re.Pattern[str]":
    """Sidecar names of a split's shards; group 1 = the shard prefix."""
    return re.compile(rf"^({re.escape(split)}(?:-t\d+)?)-\d+\.tfrecord\.json$")


def _is_task_index(split: str, name: str) -> bool:
    return re.fullmatch(rf"{re.escape(split)}\.task-\d+-of-\d+\.index\.json", name) is not None


class FeatureStoreWriter:
    """Writes videos of one split into TFRecord shards and an index (atomic, resumable).

    Example::

        with FeatureStoreWriter(out_dir, "train", videos_per_shard=512) as w:
            for rec in records:
                w.add(rec)
        # -> out_dir/train-00000.tfrecord ..., out_dir/train.index.json

    ``out_dir`` may be a local folder or a URL (``gs://...``): every file goes through
    :mod:`data_pipeline.fileio`.

    Every record is validated first (:func:`validate_record`); ``on_error="skip"`` counts and
    skips bad videos (see ``skipped``; the index lists their ids per reason under
    ``skipped_videos``), ``"raise"`` (default) raises :class:`DataError`.  Late captions are
    kept and counted (``clamped_captions``/``clamped_videos`` in the index, and
    ``clamped_captions`` on each such video's entry) unless ``strict=True``.

    The settings of the build (``source``, ``feature_dim``, ``time_tolerance``,
    ``videos_per_shard``, ``late_captions``, ``num_tasks``, ``metadata``) are written to
    ``<split>.settings.json`` before the first shard.  A folder that already holds this split
    is refused unless ``resume=True`` (``--resume``), and ``resume`` is refused when the
    existing settings differ: a store is never a mix of two builds.  ``resume`` on a complete
    store with the same settings keeps every shard (nothing to do).

    Conversion in several tasks (``num_tasks > 1``): the writer of task ``task_index`` writes
    shards ``<split>-t<task>-<n>.tfrecord`` and, on :meth:`close`, the partial index
    :func:`task_index_name`; the writer that finds all partial indexes present then writes
    ``<split>.index.json`` (:func:`merge_task_indexes`; ``auto_merge=False`` leaves that to an
    explicit merge).  Tasks may run at the same time into the same folder.
    """

    def __init__(self, out_dir: str, split: str, *, videos_per_shard: int = 512,
                 feature_dim: int = FEATURE_DIM, time_tolerance: float = 2.0,
                 on_error: str = "raise", resume: bool = False, source: str = "",
                 metadata: Optional[dict] = None, strict: bool = False, num_tasks: int = 1,
                 task_index: int = 0, auto_merge: bool = True):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if isinstance(videos_per_shard, bool) or not isinstance(videos_per_shard, (int, np.integer)) \
                or videos_per_shard < 1:
            raise ValueError(f"videos_per_shard (--videos-per-shard) must be an integer >= 1, "
                             f"got {videos_per_shard!r}")
        if not (isinstance(time_tolerance, (int, float, np.floating, np.integer))
                and np.isfinite(time_tolerance) and time_tolerance >= 0):
            raise ValueError(f"time_tolerance (--time-tolerance) must be a finite number >= 0, "
                             f"got {time_tolerance!r}")
        if not split or os.sep in split or "/" in split or split != split.strip() or split.startswith("."):
            raise ValueError(f"split (--split) must be a plain name such as 'train', got {split!r}")
        check_tasks(num_tasks, task_index)
        out_dir = os.fspath(out_dir)
        fileio.makedirs(out_dir)
        self.out_dir, self.split = out_dir, split
        self.videos_per_shard = int(videos_per_shard)
        self.feature_dim = feature_dim
        self.time_tolerance = float(time_tolerance)
        self.on_error = on_error
        self.strict = bool(strict)
        self.num_tasks, self.task_index = int(num_tasks), int(task_index)
        self.auto_merge = auto_merge
        self.prefix = shard_prefix(split, self.task_index, self.num_tasks)
        self.source = source
        self.metadata = dict(metadata or {})
        self.skipped: dict[str, int] = {}
        self.skipped_videos: list[tuple[str, str, str]] = []  # (video id, message, reason)
        self.merged: Optional[dict] = None
        self._shards: list[dict] = []
        self._done_ids: set[str] = set()
        self._buf: list[tuple[str, bytes, int, int, int]] = []
        self.settings = json.loads(json.dumps({
            "source": source, "feature_dim": feature_dim, "time_tolerance": self.time_tolerance,
            "videos_per_shard": self.videos_per_shard, "late_captions": "reject" if self.strict else "keep",
            "num_tasks": self.num_tasks, "metadata": self.metadata}))
        index_path = fileio.join(out_dir, f"{split}.index.json")
        own_index = index_path if self.num_tasks == 1 else \
            fileio.join(out_dir, task_index_name(split, self.task_index, self.num_tasks))
        settings_path = fileio.join(out_dir, f"{split}.settings.json")
        names = set(fileio.listdir(out_dir))
        pattern = _sidecar_pattern(split)
        sidecars = sorted(n for n in names if pattern.match(n))
        own = [n for n in sidecars if pattern.match(n).group(1) == self.prefix]
        has_index = f"{split}.index.json" in names
        task_indexes = [n for n in names if _is_task_index(split, n)]
        if sidecars or has_index or task_indexes:  # a settings file alone holds no data
            diff = self._settings_diff(index_path, settings_path)
            if diff:
                raise FileExistsError(
                    f"{out_dir} already holds split {split!r} built with other settings ({'; '.join(diff)}); "
                    "use another --out (or delete that split's files) instead of mixing two builds")
        if (own or has_index or fileio.basename(own_index) in names) and not resume:
            what = "" if self.num_tasks == 1 else f" (task {self.task_index} of {self.num_tasks})"
            raise FileExistsError(
                f"{out_dir} already holds split {split!r}{what} (same settings); pass --resume (resume=True) "
                "to keep its finished shards and convert the rest, or use another --out")
        if resume:
            for side in own:
                shard = fileio.read_json(fileio.join(out_dir, side))
                shard_path = fileio.join(out_dir, shard["file"])
                if fileio.isfile(shard_path) and fileio.getsize(shard_path) == shard["bytes"]:
                    self._shards.append(shard)
                    self._done_ids.update(v["id"] for v in shard["videos"])
            for path in dict.fromkeys([own_index, index_path]):  # the merged index is rewritten at the end
                if fileio.basename(path) in names:
                    fileio.remove(path)
        fileio.atomic_write_json(settings_path, self.settings)
        self._closed = False

    def _settings_diff(self, index_path: str, settings_path: str) -> list[str]:
        """How the settings of the split already in ``out_dir`` differ from this build's."""
        if fileio.isfile(settings_path):
            old = {**_SETTING_DEFAULTS, **fileio.read_json(settings_path)}
            keys = sorted(set(old) | set(self.settings))
        elif fileio.isfile(index_path):  # a store written before settings files existed
            old = fileio.read_json(index_path)
            keys = ["source", "feature_dim", "metadata"]
        else:
            return []
        return _describe_diff(old, self.settings, keys)

    def has(self, video_id: str) -> bool:
        """True if ``video_id`` is already in a finished shard (resume)."""
        return video_id in self._done_ids

    def _skip(self, err: DataError) -> None:
        self.skipped[err.reason] = self.skipped.get(err.reason, 0) + 1
        self.skipped_videos.append((err.video_id, str(err), err.reason))

    def skipped_by_reason(self) -> dict[str, list[str]]:
        """Ids of the skipped videos per reason, in the order they were skipped."""
        out: dict[str, list[str]] = {}
        for vid, _, reason in self.skipped_videos:
            out.setdefault(reason, []).append(vid)
        return out

    def skip_examples(self) -> dict[str, str]:
        """The first error message of every skip reason (which file, video and value)."""
        out: dict[str, str] = {}
        for _, msg, reason in self.skipped_videos:
            out.setdefault(reason, msg)
        return out

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
            late = validate_record(rec, path=path, feature_dim=self.feature_dim,
                                   time_tolerance=self.time_tolerance, strict=self.strict)
        except DataError as err:
            self.report_error(err)
            return False
        payload = serialize_record(rec)
        self._buf.append((rec.video_id, payload, rec.num_frames, rec.num_captions, late))
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
        name = f"{self.prefix}-{num:05d}.tfrecord"
        final = fileio.join(self.out_dir, name)
        tmp = final + ".tmp"
        if fileio.isfile(tmp):  # left by an interrupted run (a writer on ram:// would append to it)
            fileio.remove(tmp)
        videos = []
        offset = 0
        with tf.io.TFRecordWriter(tmp) as w:
            for vid, payload, t, n, late in self._buf:
                w.write(payload)
                entry = {"id": vid, "offset": offset, "length": len(payload),
                         "crc32": zlib.crc32(payload), "num_frames": t, "num_captions": n}
                if late:
                    entry["clamped_captions"] = late
                videos.append(entry)
                offset += len(payload) + 16
        size = fileio.getsize(tmp)
        if size != offset:
            raise IOError(f"{tmp}: wrote {size} bytes, expected {offset}")
        fileio.replace(tmp, final)
        shard = {"file": name, "bytes": offset, "videos": videos}
        fileio.atomic_write_json(final + ".json", shard)
        self._shards.append(shard)
        self._buf = []

    def close(self) -> dict:
        """Flush the last shard and write the index. Returns the index dict.

        One task: ``<split>.index.json``.  Task ``i`` of ``N``: its partial index, then (with
        ``auto_merge``, when all ``N`` partial indexes exist) the merged ``<split>.index.json``,
        also returned in :attr:`merged`.
        """
        if self._closed:
            return self.index
        self._flush()
        self._shards.sort(key=lambda s: s["file"])
        index = _make_index(
            split=self.split, feature_dim=self.feature_dim, source=self.source, metadata=self.metadata,
            late_policy=self.settings["late_captions"], shards=self._shards, skipped=dict(self.skipped),
            skipped_videos=self.skipped_by_reason(), skipped_examples=self.skip_examples())
        if self.num_tasks == 1:
            fileio.atomic_write_json(fileio.join(self.out_dir, f"{self.split}.index.json"), index)
        else:
            index.update(task_index=self.task_index, num_tasks=self.num_tasks, settings=self.settings)
            fileio.atomic_write_json(
                fileio.join(self.out_dir, task_index_name(self.split, self.task_index, self.num_tasks)), index)
            if self.auto_merge and not missing_tasks(self.out_dir, self.split, self.num_tasks):
                self.merged = merge_task_indexes(self.out_dir, self.split, self.num_tasks)
        self.index = index
        self._closed = True
        return index

    def __enter__(self) -> "FeatureStoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def check_tasks(num_tasks, task_index) -> None:
    """``ValueError`` unless ``num_tasks >= 1`` and ``0 <= task_index < num_tasks`` (integers)."""
    for name, flag, value in (("num_tasks", "--num-tasks", num_tasks), ("task_index", "--task-index", task_index)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} ({flag}) must be an integer, got {value!r}")
    if num_tasks < 1:
        raise ValueError(f"num_tasks (--num-tasks) must be >= 1, got {num_tasks}")
    if not 0 <= task_index < num_tasks:
        raise ValueError(f"task_index (--task-index) must be in [0, {num_tasks - 1}] for {num_tasks} task(s), "
                         f"got {task_index}")


def task_range(num_items: int, num_tasks: int, task_index: int) -> range:
    """The contiguous share ``[a, b)`` of ``num_items`` ordered items that task ``task_index`` converts.

    Shares differ in size by at most one item, and task order is item order, so the tasks'
    shards read one after the other list the items in the same order as one task would.
    """
    check_tasks(num_tasks, task_index)
    return range(task_index * num_items // num_tasks, (task_index + 1) * num_items // num_tasks)


def _make_index(*, split, feature_dim, source, metadata, late_policy, shards, skipped, skipped_videos,
                skipped_examples) -> dict:
    videos = [v for s in shards for v in s["videos"]]
    return {
        "version": INDEX_VERSION, "split": split, "feature_dim": feature_dim,
        "feature_dtype": "float16", "source": source,
        "num_videos": len(videos),
        "num_frames": sum(v["num_frames"] for v in videos),
        "num_captions": sum(v["num_captions"] for v in videos),
        "late_captions": late_policy,
        "clamped_captions": sum(v.get("clamped_captions", 0) for v in videos),
        "clamped_videos": sum(1 for v in videos if v.get("clamped_captions", 0)),
        "skipped": skipped, "skipped_videos": skipped_videos, "skipped_examples": skipped_examples,
        "metadata": metadata, "shards": shards,
    }


def missing_tasks(store_dir: str, split: str, num_tasks: int) -> list[int]:
    """Tasks of a ``num_tasks``-task conversion whose partial index is not (yet) in ``store_dir``."""
    names = set(fileio.listdir(store_dir)) if fileio.isdir(store_dir) else set()
    return [i for i in range(num_tasks) if task_index_name(split, i, num_tasks) not in names]


def merge_task_indexes(store_dir: str, split: str, num_tasks: int) -> dict:
    """Write ``<split>.index.json`` from the partial indexes of all ``num_tasks`` tasks.

    Checks that every partial index exists, that all were written with the same settings
    (and for this number of tasks), that no video is in two tasks and that every shard has
    the size its index records.  Shards are listed task after task, so the merged store holds
    the videos in the same order (same positions) as a conversion in one task.  Skip counts
    are summed and the skipped ids concatenated in task order.  Returns the merged index.
    """
    store_dir = os.fspath(store_dir)
    check_tasks(num_tasks, 0)
    missing = missing_tasks(store_dir, split, num_tasks)
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise DataError(f"{len(missing)} of {num_tasks} tasks have no partial index "
                        f"({task_index_name(split, missing[0], num_tasks)}, ...): task(s) {shown} not finished; "
                        "run them (--resume continues an interrupted one), then merge",
                        path=store_dir, reason="missing_task")
    parts = []
    for i in range(num_tasks):
        path = fileio.join(store_dir, task_index_name(split, i, num_tasks))
        try:
            part = fileio.read_json(path)
        except json.JSONDecodeError as e:
            raise DataError(f"partial index is not valid JSON ({e})", path=path, reason="corrupt_index") from e
        if part.get("task_index") != i or part.get("num_tasks") != num_tasks or part.get("split") != split:
            raise DataError(f"holds task {part.get('task_index')!r} of {part.get('num_tasks')!r} of split "
                            f"{part.get('split')!r}, expected task {i} of {num_tasks} of {split!r}",
                            path=path, reason="corrupt_index")
        if i:
            ref = parts[0]["settings"]
            diff = _describe_diff(ref, part["settings"], sorted(set(ref) | set(part["settings"])))
            if diff:
                said = [d.replace("in the existing store", "in task 0").replace(" now", f" in task {i}") for d in diff]
                raise DataError(f"task converted with other settings than task 0 ({'; '.join(said)}); "
                                "convert all tasks with the same flags", path=path, reason="task_settings")
        parts.append(part)
    seen: dict[str, int] = {}
    for i, part in enumerate(parts):
        for shard in part["shards"]:
            for v in shard["videos"]:
                if v["id"] in seen:
                    raise DataError(f"is in task {seen[v['id']]} and in task {i} (the tasks overlap)",
                                    path=store_dir, video_id=v["id"], reason="duplicate_video")
                seen[v["id"]] = i
    shards = [shard for part in parts for shard in part["shards"]]
    _check_shard_sizes([fileio.join(store_dir, s["file"]) for s in shards], shards)
    skipped: dict[str, int] = {}
    skipped_videos: dict[str, list[str]] = {}
    examples: dict[str, str] = {}
    for part in parts:
        for reason, count in part["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + count
        for reason, ids in part["skipped_videos"].items():
            skipped_videos.setdefault(reason, []).extend(ids)
        for reason, msg in part["skipped_examples"].items():
            examples.setdefault(reason, msg)
    first = parts[0]
    index = _make_index(split=split, feature_dim=first["feature_dim"], source=first["source"],
                        metadata=first["metadata"], late_policy=first["late_captions"], shards=shards,
                        skipped=skipped, skipped_videos=skipped_videos, skipped_examples=examples)
    index["num_tasks"] = num_tasks
    fileio.atomic_write_json(fileio.join(store_dir, f"{split}.index.json"), index)
    return index


def _describe_diff(old: dict, new: dict, keys) -> list[str]:
    """``["key: OLD in the existing store, NEW now", ...]`` for the keys whose values differ."""
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k}.{d}" for d in _describe_diff(a, b, sorted(set(a) | set(b)))]
        else:
            out.append(f"{k}: {a!r} in the existing store, {b!r} now")
    return out


def _check_shard_sizes(paths: list[str], shards: list[dict]) -> None:
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
                             if _is_task_index(split, n))
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
            _check_shard_sizes(self.paths, self.index["shards"])
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
