"""Converters into the feature store (see :mod:`data_pipeline.feature_store`).

(a) :func:`convert_reference_howto100m`: the reference HowTo100M layout (spec §4.1)::

        <vfeat_dir>/<split>_meta.pkl                     pickle {shard_idx: [video_id, ...]}
        <vfeat_dir>/<split>_<s>_starts.npy               int64 [n+1]  (ShardedTensor offsets)
        <vfeat_dir>/<split>_<s>_data.npy                 float16 [sum T, 512]
        <tfeat_prefix><split>_<s>.startends_starts.npy   int64 [n+1]
        <tfeat_prefix><split>_<s>.startends_data.npy     float32 [n_captions, 2]
        <tfeat_prefix><split>_<s>.caps_ids_starts.npy    int64 [n+1]
        <tfeat_prefix><split>_<s>.caps_ids_data.npy      int32 [n_captions, 32], pad -1

    with ``tfeat_prefix = <vfeat_dir>/sentencified_htm_1200k.bert-base-uncased.`` by default.

(b) :func:`convert_per_video`: ``<feature_dir>/<video_id>.npy`` ``[T, 512]`` plus
    ``<caption_dir>/<video_id>.csv`` with header ``start,end,text`` (the format of HowTo100M's
    ``small_train_captions``); the text is tokenised here (bert-base-uncased, 96 chars, 32 ids).

Bad inputs (unreadable/truncated ``.npy``, inconsistent ShardedTensor offsets, wrong feature
width, NaN/inf, captions with end < start or outside the video, missing captions, a caption
whose text is empty or tokenises to no ids, a video id listed twice) raise
:class:`~data_pipeline.feature_store.DataError` naming the file and the video (and the CSV line
for captions read from a CSV), unless ``on_error="skip"`` (``--skip-bad``): then the whole
video is skipped, counted per reason (``skipped``) and its id listed per reason
(``skipped_videos``) in the index and in the returned summary.  Nothing is dropped silently:
a video with one empty caption is skipped as a whole (reason ``empty_caption``), never stored
with a 0-token caption and never stored with that caption left out.

Inputs that would give an empty store are errors whatever ``on_error`` says: a missing
features or captions folder, a features folder without ``.npy`` files, a meta pickle that lists
no shard.  ``<split>_meta.pkl`` is read with :func:`data_pipeline.safe_pickle.load_plain_pickle`:
a pickle that names anything but plain containers and numpy arrays is refused (DataError
``unsafe_pickle``), so opening a downloaded meta file cannot run code.

Late captions (starting at or after the last feature second, or ending more than
``time_tolerance`` seconds after it) are kept with their times unchanged and counted
(``clamped_captions``, ``clamped_videos``): the sampler clamps the clip centre into the video.
``strict=True`` (``--strict``) makes them errors (reason ``caption_outside_video``) as before.

Inputs and outputs may be local folders or URLs (``gs://...``): every file goes through
:mod:`data_pipeline.fileio`.  A reference ``*_data.npy`` on a URL is read row range by row
range (ranged reads), never loaded whole.

Conversion in parts (``num_tasks``, ``task_index``): task ``i`` of ``N`` converts one
contiguous share (:func:`~data_pipeline.feature_store.task_range`) of the videos (per-video
layout: of the ordered video ids; reference layout: of the input shards in meta order) into its
own shards and partial index; the last task to finish merges the partial indexes into
``<split>.index.json`` (or call :func:`~data_pipeline.feature_store.merge_task_indexes`).  The
merged store lists the videos in the order a single task would, and duplicate ids and skips
are decided over the whole input, so it reads the same videos at the same positions.
"""
from __future__ import annotations

import csv
import math
import os
import pickle
from typing import Optional, Sequence

import numpy as np

from data_pipeline import fileio
from data_pipeline.feature_store import DataError, FeatureStoreWriter, VideoRecord, task_range
from data_pipeline.safe_pickle import load_plain_pickle
from data_pipeline.tokenization import tokenize_captions

DEFAULT_TFEAT_NAME = "sentencified_htm_1200k.bert-base-uncased."


def _load_npy(path: str, video_id: str = "", *, lazy: bool = False):
    """A ``.npy`` file as an array: memory-mapped when local; on a URL read whole, or with
    ``lazy`` a :class:`RemoteNpy` that reads only the rows asked for."""
    if not fileio.isfile(path):
        raise DataError("file missing", path=path, video_id=video_id, reason="missing_file")
    try:
        if not fileio.is_url(path):
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if lazy:
            arr = RemoteNpy(path)
            if arr.usable:
                return arr
        with fileio.open(path, "rb") as fh:
            return np.load(fh, allow_pickle=False)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy raises ValueError/OSError/EOFError on bad files
        raise DataError(f"cannot read .npy ({type(e).__name__}: {e}); truncated or corrupt?",
                        path=path, video_id=video_id, reason="corrupt_file") from e


class RemoteNpy:
    """Read-only, row-sliceable view of a ``.npy`` file on a URL (like ``np.load(mmap_mode="r")``).

    Only the header is read when opened; ``x[a:b]`` is one ranged read of rows ``a..b-1``.
    ``usable`` is False for layouts it does not handle (Fortran order, object arrays, format
    version 3); read those whole instead.
    """

    def __init__(self, path: str):
        self.path = path
        with fileio.open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                self.usable = False
                return
            self.data_offset = fh.tell()
        self.usable = not (fortran and len(shape) > 1) and not dtype.hasobject and len(shape) >= 1
        if not self.usable:
            return
        self.shape, self.dtype = tuple(shape), dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        expected = self.data_offset + shape[0] * self.row_bytes
        size = fileio.getsize(path)
        if size < expected:
            raise DataError(f"cannot read .npy: {size} bytes, its header describes {expected} "
                            f"(shape {tuple(shape)}, {dtype}); truncated?", path=path, reason="corrupt_file")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("RemoteNpy supports contiguous row slices x[a:b] only")
        a, b, _ = key.indices(self.shape[0])
        b = max(a, b)
        data = fileio.read_range(self.path, self.data_offset + a * self.row_bytes, (b - a) * self.row_bytes)
        if len(data) != (b - a) * self.row_bytes:
            raise DataError(f"rows {a}..{b} end after the file (truncated?)", path=self.path, reason="corrupt_file")
        return np.frombuffer(data, self.dtype).reshape((b - a,) + self.shape[1:])


class ShardedTensor:
    """Read-only view of a reference ShardedTensor (``<prefix>_starts.npy`` + ``<prefix>_data.npy``)."""

    def __init__(self, prefix: str, *, sep: str = "_"):
        self.starts_path = f"{prefix}{sep}starts.npy"
        self.data_path = f"{prefix}{sep}data.npy"
        self.starts = np.asarray(_load_npy(self.starts_path))
        self.data = _load_npy(self.data_path, lazy=True)
        s = self.starts
        if s.ndim != 1 or len(s) < 1 or s[0] != 0 or np.any(np.diff(s) < 0):
            raise DataError(f"offsets must start at 0 and not decrease, got {s[:5].tolist()}...",
                            path=self.starts_path, reason="corrupt_file")
        if s[-1] != len(self.data):
            raise DataError(f"last offset is {int(s[-1])} but {self.data_path} has {len(self.data)} rows "
                            "(truncated or mismatched shard)", path=self.starts_path, reason="corrupt_file")

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, k: int) -> np.ndarray:
        return np.asarray(self.data[self.starts[k]:self.starts[k + 1]])


def convert_reference_howto100m(vfeat_dir: str, out_dir: str, *, split: str = "train",
                                tfeat_prefix: Optional[str] = None, videos_per_shard: int = 512,
                                on_error: str = "raise", time_tolerance: float = 2.0,
                                resume: bool = False, progress: bool = False, strict: bool = False,
                                num_tasks: int = 1, task_index: int = 0) -> dict:
    """Convert one split of the reference HowTo100M layout into a feature store.

    Returns the written index summary (``num_videos``, ``num_frames``, ``num_captions``,
    ``clamped_captions``, ``clamped_videos``, ``skipped``, ``skipped_videos``; for task ``i`` of
    ``N`` the task's share, plus ``merged`` when this task wrote the merged index).
    """
    vfeat_dir = os.fspath(vfeat_dir)
    if not fileio.isdir(vfeat_dir):
        raise FileNotFoundError(f"features folder (--vfeat-dir) {vfeat_dir} does not exist or is not a folder")
    meta_path = fileio.join(vfeat_dir, f"{split}_meta.pkl")
    meta = _load_meta(meta_path)
    if tfeat_prefix is None:
        tfeat_prefix = fileio.join(vfeat_dir, DEFAULT_TFEAT_NAME)
    writer = FeatureStoreWriter(out_dir, split, videos_per_shard=videos_per_shard, on_error=on_error,
                                time_tolerance=time_tolerance, resume=resume, strict=strict,
                                num_tasks=num_tasks, task_index=task_index,
                                source=f"reference HowTo100M layout {fileio.abspath(vfeat_dir)}")
    shard_ids = list(meta)
    mine = set(shard_ids[j] for j in task_range(len(shard_ids), num_tasks, task_index))
    first_shard: dict[str, object] = {}  # video id -> the shard that lists it first (over all tasks)
    bar = None
    if progress:
        from tqdm import tqdm
        desc = f"convert {split}" + (f" task {task_index}/{num_tasks}" if num_tasks > 1 else "")
        bar = tqdm(total=sum(len(meta[s]) for s in mine), desc=desc, unit="video")
    try:
        for s in shard_ids:
            ids = meta[s]
            dup = set()  # positions of ids listed earlier (in this or a previous shard)
            for k, v in enumerate(ids):
                if v in first_shard:
                    dup.add(k)
                    if s in mine:
                        writer.report_error(DataError(
                            f"listed again in shard {s} (first in shard {first_shard[v]}); the later copy is "
                            "not converted", path=meta_path, video_id=v, reason="duplicate_video"))
                else:
                    first_shard[v] = s
            if s not in mine:
                continue
            _convert_reference_shard(writer, s, ids, dup, vfeat_dir, tfeat_prefix, split, meta_path, on_error, bar)
    finally:
        if bar is not None:
            bar.close()
    return _summary(writer)


def _convert_reference_shard(writer, s, ids, dup, vfeat_dir, tfeat_prefix, split, meta_path, on_error, bar) -> None:
    """The videos of input shard ``s`` (``ids``; positions ``dup`` are duplicates) into ``writer``."""
    todo = [k for k, v in enumerate(ids) if not (writer.has(v) or k in dup)]
    if not todo:
        if bar is not None:
            bar.update(len(ids))
        return
    try:
        vf = ShardedTensor(fileio.join(vfeat_dir, f"{split}_{s}"))
        se = ShardedTensor(f"{tfeat_prefix}{split}_{s}.startends", sep="_")
        ci = ShardedTensor(f"{tfeat_prefix}{split}_{s}.caps_ids", sep="_")
        for st in (vf, se, ci):
            if len(st) != len(ids):
                raise DataError(f"has {len(st)} items but {meta_path} lists {len(ids)} videos for shard {s}",
                                path=st.starts_path, reason="corrupt_file")
    except DataError as err:
        # a whole input shard is unusable: skip all its videos (counted) or raise
        if on_error == "raise":
            raise
        for k in todo:
            writer.report_error(DataError(str(err), video_id=ids[k], reason=err.reason))
        if bar is not None:
            bar.update(len(ids))
        return
    if bar is not None:
        bar.update(len(ids) - len(todo))
    for k in todo:
        vid = ids[k]
        try:
            feats = vf[k]
            startends = se[k].astype(np.float32)
            caps = ci[k]
            if startends.ndim != 2 or startends.shape[1:] != (2,):
                raise DataError(f"startends item has shape {startends.shape}, expected [n, 2]",
                                path=se.data_path, video_id=vid, reason="corrupt_file")
            if caps.ndim != 2:
                raise DataError(f"caps_ids item has shape {caps.shape}, expected [n, 32]",
                                path=ci.data_path, video_id=vid, reason="corrupt_file")
            tokens = [row[row != -1].astype(np.int32) for row in caps]
        except DataError as err:
            writer.report_error(err)
        else:
            rec = VideoRecord(video_id=vid, features=feats, starts=startends[:, 0],
                              ends=startends[:, 1], tokens=tokens)
            writer.add(rec, path=f"{vf.data_path} / {se.data_path}")
        if bar is not None:
            bar.update(1)


def _load_meta(meta_path: str) -> dict:
    """``<split>_meta.pkl`` -> ``{shard: [video id (str), ...]}`` in shard order (plain data only)."""
    if not fileio.isfile(meta_path):
        raise DataError("meta pickle missing", path=meta_path, reason="missing_file")
    try:
        with fileio.open(meta_path, "rb") as fh:
            raw = load_plain_pickle(fh)
    except pickle.UnpicklingError as e:
        raise DataError(f"refused to unpickle: {e}", path=meta_path, reason="unsafe_pickle") from e
    except Exception as e:  # noqa: BLE001 - truncated/corrupt pickles raise many types
        raise DataError(f"cannot unpickle ({type(e).__name__}: {e})", path=meta_path, reason="corrupt_file") from e
    if not isinstance(raw, dict):
        raise DataError(f"holds a {type(raw).__name__}, expected a dict {{shard index: [video id, ...]}}",
                        path=meta_path, reason="corrupt_file")
    if not raw:
        raise DataError("lists no shards (the split would have 0 videos)", path=meta_path, reason="no_videos")
    meta = {}
    for key, ids in raw.items():
        shard = int(key) if isinstance(key, (int, np.integer)) and not isinstance(key, bool) else key
        if not isinstance(shard, (int, str)):
            raise DataError(f"shard key {key!r} is a {type(key).__name__}, expected an integer",
                            path=meta_path, reason="corrupt_file")
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise DataError(f"shard {shard} maps to {type(ids).__name__}, expected a list of video ids",
                            path=meta_path, reason="corrupt_file")
        out = []
        for v in ids:
            if isinstance(v, (bytes, np.bytes_)):
                v = bytes(v).decode("utf-8", "replace")
            if not isinstance(v, str) or not v:
                raise DataError(f"shard {shard} lists the video id {v!r}, expected a non-empty string",
                                path=meta_path, reason="corrupt_file")
            out.append(str(v))
        meta[shard] = out
    try:
        return {k: meta[k] for k in sorted(meta)}
    except TypeError:
        raise DataError(f"shard keys mix types: {list(meta)[:5]}", path=meta_path, reason="corrupt_file") from None


CSV_HEADER = ("start", "end", "text")


def read_captions_csv(path: str, video_id: str = "") -> tuple[np.ndarray, np.ndarray, list]:
    """Read a ``start,end,text`` captions CSV. Returns starts [n], ends [n] (float32), texts.

    UTF-8, with or without a byte-order mark. Every error is a :class:`DataError` naming the
    file and the CSV line (line 1 is the header): a missing column, a row with more fields than
    the header (unquoted commas in the text), a time that is not a finite number, a negative
    start, end < start, an empty or missing text (reason ``empty_caption``).
    """
    starts, ends, texts, _ = read_captions_csv_lines(path, video_id)
    return starts, ends, texts


def read_captions_csv_lines(path: str, video_id: str = "") -> tuple[np.ndarray, np.ndarray, list, list]:
    """:func:`read_captions_csv` that also returns the CSV line number of every caption."""
    starts, ends, texts, lines = [], [], [], []

    def bad(line, message, reason):
        return DataError(f"line {line}: {message}", path=path, video_id=video_id, reason=reason)

    try:
        with fileio.open(path, "r", newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None:
                raise bad(1, "the file is empty, expected the header start,end,text", "corrupt_file")
            if not set(CSV_HEADER) <= set(reader.fieldnames):
                raise bad(1, f"header is {','.join(reader.fieldnames)}, expected start,end,text", "corrupt_file")
            for row in reader:
                line = reader.line_num
                if row.get(None):
                    raise bad(line, f"{len(reader.fieldnames) + len(row[None])} fields, the header has "
                                    f"{len(reader.fieldnames)} (quote a text that contains commas)", "corrupt_file")
                try:
                    s, e = float(row["start"]), float(row["end"])
                except (TypeError, ValueError) as err:
                    raise bad(line, f"bad time ({row['start']!r}, {row['end']!r})", "caption_time") from err
                if not (math.isfinite(s) and math.isfinite(e)):
                    raise bad(line, f"non-finite caption time (start={s!r}, end={e!r})", "caption_time")
                if s < 0:
                    raise bad(line, f"caption start < 0 (start={s!r}, end={e!r})", "caption_time")
                if e < s:
                    raise bad(line, f"caption end < start (start={s!r}, end={e!r})", "caption_end_before_start")
                text = row["text"]
                if text is None or not text.strip():
                    raise bad(line, "empty caption text" if text is not None else "no text field",
                              "empty_caption")
                starts.append(s)
                ends.append(e)
                texts.append(text)
                lines.append(line)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot parse CSV ({e})", path=path, video_id=video_id, reason="corrupt_file") from e
    return np.asarray(starts, np.float32), np.asarray(ends, np.float32), texts, lines


def convert_per_video(feature_dir: str, caption_dir: str, out_dir: str, *, split: str = "train",
                      video_ids: Optional[Sequence[str]] = None, videos_per_shard: int = 512,
                      on_error: str = "raise", time_tolerance: float = 2.0, resume: bool = False,
                      keep_text: bool = True, progress: bool = False, strict: bool = False,
                      num_tasks: int = 1, task_index: int = 0) -> dict:
    """Convert ``<feature_dir>/<id>.npy`` + ``<caption_dir>/<id>.csv`` pairs into a feature store.

    ``video_ids`` defaults to every ``*.npy`` in ``feature_dir`` (sorted). Features are cast to
    float16 after the checks (values beyond the float16 range raise, they would become inf).
    A caption whose text is empty, or cut to 96 characters tokenises to no ids, makes its video
    bad (reason ``empty_caption``, naming the CSV line): raised, or skipped and listed with
    ``on_error="skip"``.  With ``num_tasks > 1`` only task ``task_index``'s contiguous share of
    ``video_ids`` is converted (see the module docstring).
    """
    feature_dir, caption_dir = os.fspath(feature_dir), os.fspath(caption_dir)
    for name, flag, d in (("features", "--features", feature_dir), ("captions", "--captions", caption_dir)):
        if not fileio.isdir(d):
            raise FileNotFoundError(f"{name} folder ({flag}) {d} does not exist or is not a folder")
    if video_ids is None:
        video_ids = sorted(f[:-4] for f in fileio.listdir(feature_dir) if f.endswith(".npy"))
        if not video_ids:
            raise DataError("no <video id>.npy feature files in this folder (--features)", path=feature_dir,
                            reason="no_videos")
    else:
        video_ids = [str(v) for v in video_ids]
        if not video_ids:
            raise DataError("video_ids is empty: nothing to convert", path=feature_dir, reason="no_videos")
    writer = FeatureStoreWriter(out_dir, split, videos_per_shard=videos_per_shard, on_error=on_error,
                                time_tolerance=time_tolerance, resume=resume, strict=strict,
                                num_tasks=num_tasks, task_index=task_index,
                                source=f"per-video npy {fileio.abspath(feature_dir)} + csv "
                                       f"{fileio.abspath(caption_dir)}")
    first: dict[str, int] = {}  # video id -> its first position in video_ids (over all tasks)
    for p, vid in enumerate(video_ids):
        first.setdefault(vid, p)
    positions = task_range(len(video_ids), num_tasks, task_index)
    it = positions
    if progress:
        from tqdm import tqdm
        desc = f"convert {split}" + (f" task {task_index}/{num_tasks}" if num_tasks > 1 else "")
        it = tqdm(positions, desc=desc, unit="video")
    for p in it:
        vid = video_ids[p]
        if first[vid] != p:
            writer.report_error(DataError("listed twice in video_ids; the second copy is not converted",
                                          video_id=vid, reason="duplicate_video"))
            continue
        if writer.has(vid):
            continue
        fpath = fileio.join(feature_dir, f"{vid}.npy")
        cpath = fileio.join(caption_dir, f"{vid}.csv")
        try:
            feats = np.asarray(_load_npy(fpath, vid))
            if not fileio.isfile(cpath):
                raise DataError("captions CSV missing", path=cpath, video_id=vid, reason="no_captions")
            starts, ends, texts, lines = read_captions_csv_lines(cpath, vid)
            tokens = tokenize_captions(texts)
            for tk, line, text in zip(tokens, lines, texts):
                if len(tk) == 0:
                    raise DataError(f"line {line}: caption text {text[:40]!r} gives no tokens", path=cpath,
                                    video_id=vid, reason="empty_caption")
        except DataError as err:
            writer.report_error(err)
            continue
        rec = VideoRecord(video_id=vid, features=feats, starts=starts, ends=ends, tokens=tokens,
                          texts=list(texts) if keep_text else None)
        writer.add(rec, path=f"{fpath} / {cpath}")
    return _summary(writer)


SUMMARY_KEYS = ("split", "num_videos", "num_frames", "num_captions", "late_captions", "clamped_captions",
                "clamped_videos", "skipped", "skipped_videos", "skipped_examples")


def _summary(writer: FeatureStoreWriter) -> dict:
    """What a conversion reports: the index's counts (of this task's share, for one of several
    tasks, with ``task_index``, ``num_tasks`` and ``merged``: the merged index's counts if this
    task wrote it, else None)."""
    index = writer.close()
    out = {k: index[k] for k in SUMMARY_KEYS}
    if writer.num_tasks > 1:
        out["task_index"], out["num_tasks"] = writer.task_index, writer.num_tasks
        out["merged"] = None if writer.merged is None else {k: writer.merged[k] for k in SUMMARY_KEYS}
    return out
