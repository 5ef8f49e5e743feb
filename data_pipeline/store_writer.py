"""Writing a feature store: :class:`FeatureStoreWriter` (shards, sidecars, the split index,
``--resume``), and conversions split into tasks (``--num-tasks N --task-index i``) with the
final merge of their partial indexes.

The layout it writes is described in :mod:`data_pipeline.feature_store`.
"""
from __future__ import annotations

import json
import os
import zlib
from typing import Optional

import numpy as np

from data_pipeline import fileio
from data_pipeline.store_format import (
    FEATURE_DIM,
    INDEX_VERSION,
    DataError,
    VideoRecord,
    check_shard_sizes,
    is_task_index,
    serialize_record,
    shard_prefix,
    sidecar_pattern,
    task_index_name,
    validate_record,
)



# ----------------------------------------------------------------------------- writer

# Settings that builds made before they were recorded had implicitly (for --resume checks).
_SETTING_DEFAULTS = {"late_captions": "reject", "num_tasks": 1}


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
        pattern = sidecar_pattern(split)
        sidecars = sorted(n for n in names if pattern.match(n))
        own = [n for n in sidecars if pattern.match(n).group(1) == self.prefix]
        has_index = f"{split}.index.json" in names
        task_indexes = [n for n in names if is_task_index(split, n)]
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
    check_shard_sizes([fileio.join(store_dir, s["file"]) for s in shards], shards)
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


