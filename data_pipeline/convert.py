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
width, NaN/inf, captions with end < start or outside the video, missing captions) raise
:class:`~data_pipeline.feature_store.DataError` naming the file and the video, unless
``on_error="skip"``: then the video is skipped and counted per reason in the index
(``skipped``) and in the returned summary.
"""
from __future__ import annotations

import csv
import os
import pickle
from typing import Optional, Sequence

import numpy as np

from data_pipeline.feature_store import DataError, FeatureStoreWriter, VideoRecord
from data_pipeline.tokenization import tokenize_captions

DEFAULT_TFEAT_NAME = "sentencified_htm_1200k.bert-base-uncased."


def _load_npy(path: str, video_id: str = "") -> np.ndarray:
    if not os.path.exists(path):
        raise DataError("file missing", path=path, video_id=video_id, reason="missing_file")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy raises ValueError/OSError/EOFError on bad files
        raise DataError(f"cannot read .npy ({type(e).__name__}: {e}); truncated or corrupt?",
                        path=path, video_id=video_id, reason="corrupt_file") from e


class ShardedTensor:
    """Read-only view of a reference ShardedTensor (``<prefix>_starts.npy`` + ``<prefix>_data.npy``)."""

    def __init__(self, prefix: str, *, sep: str = "_"):
        self.starts_path = f"{prefix}{sep}starts.npy"
        self.data_path = f"{prefix}{sep}data.npy"
        self.starts = np.asarray(_load_npy(self.starts_path))
        self.data = _load_npy(self.data_path)
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
                                resume: bool = False, progress: bool = False) -> dict:
    """Convert one split of the reference HowTo100M layout into a feature store.

    Returns the written index summary (``num_videos``, ``num_frames``, ``num_captions``, ``skipped``).
    """
    meta_path = os.path.join(vfeat_dir, f"{split}_meta.pkl")
    if not os.path.exists(meta_path):
        raise DataError("meta pickle missing", path=meta_path, reason="missing_file")
    try:
        with open(meta_path, "rb") as fh:
            meta = pickle.load(fh)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot unpickle ({type(e).__name__}: {e})", path=meta_path, reason="corrupt_file") from e
    if tfeat_prefix is None:
        tfeat_prefix = os.path.join(vfeat_dir, DEFAULT_TFEAT_NAME)
    writer = FeatureStoreWriter(out_dir, split, videos_per_shard=videos_per_shard, on_error=on_error,
                                time_tolerance=time_tolerance, resume=resume,
                                source=f"reference HowTo100M layout {os.path.abspath(vfeat_dir)}")
    shard_ids = sorted(meta)
    it = shard_ids
    if progress:
        from tqdm import tqdm
        it = tqdm(shard_ids, desc=f"convert {split}", unit="shard")
    for s in it:
        ids = list(meta[s])
        if all(writer.has(v) for v in ids):
            continue
        try:
            vf = ShardedTensor(os.path.join(vfeat_dir, f"{split}_{s}"))
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
            for v in ids:
                writer.report_error(DataError(str(err), video_id=v, reason=err.reason))
            continue
        for k, vid in enumerate(ids):
            if writer.has(vid):
                continue
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
                continue
            rec = VideoRecord(video_id=str(vid), features=feats, starts=startends[:, 0],
                              ends=startends[:, 1], tokens=tokens)
            writer.add(rec, path=f"{vf.data_path} / {se.data_path}")
    return _summary(writer.close())


def read_captions_csv(path: str, video_id: str = "") -> tuple[np.ndarray, np.ndarray, list]:
    """Read a ``start,end,text`` captions CSV. Returns starts [n], ends [n] (float32), texts."""
    starts, ends, texts = [], [], []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"start", "end", "text"} <= set(reader.fieldnames):
                raise DataError(f"header is {reader.fieldnames}, expected start,end,text", path=path,
                                video_id=video_id, reason="corrupt_file")
            for line, row in enumerate(reader, start=2):
                try:
                    starts.append(float(row["start"]))
                    ends.append(float(row["end"]))
                except (TypeError, ValueError) as e:
                    raise DataError(f"line {line}: bad time ({row['start']!r}, {row['end']!r})", path=path,
                                    video_id=video_id, reason="caption_time") from e
                texts.append(row["text"] if row["text"] is not None else None)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot parse CSV ({e})", path=path, video_id=video_id, reason="corrupt_file") from e
    return np.asarray(starts, np.float32), np.asarray(ends, np.float32), texts


def convert_per_video(feature_dir: str, caption_dir: str, out_dir: str, *, split: str = "train",
                      video_ids: Optional[Sequence[str]] = None, videos_per_shard: int = 512,
                      on_error: str = "raise", time_tolerance: float = 2.0, resume: bool = False,
                      keep_text: bool = True, progress: bool = False) -> dict:
    """Convert ``<feature_dir>/<id>.npy`` + ``<caption_dir>/<id>.csv`` pairs into a feature store.

    ``video_ids`` defaults to every ``*.npy`` in ``feature_dir`` (sorted). Features are cast to
    float16 after the checks (values beyond the float16 range raise, they would become inf).
    """
    if video_ids is None:
        video_ids = sorted(f[:-4] for f in os.listdir(feature_dir) if f.endswith(".npy"))
    writer = FeatureStoreWriter(out_dir, split, videos_per_shard=videos_per_shard, on_error=on_error,
                                time_tolerance=time_tolerance, resume=resume,
                                source=f"per-video npy {os.path.abspath(feature_dir)} + csv "
                                       f"{os.path.abspath(caption_dir)}")
    it = video_ids
    if progress:
        from tqdm import tqdm
        it = tqdm(video_ids, desc=f"convert {split}", unit="video")
    for vid in it:
        if writer.has(vid):
            continue
        fpath = os.path.join(feature_dir, f"{vid}.npy")
        cpath = os.path.join(caption_dir, f"{vid}.csv")
        try:
            feats = np.asarray(_load_npy(fpath, vid))
            if not os.path.exists(cpath):
                raise DataError("captions CSV missing", path=cpath, video_id=vid, reason="no_captions")
            starts, ends, texts = read_captions_csv(cpath, vid)
        except DataError as err:
            writer.report_error(err)
            continue
        rec = VideoRecord(video_id=vid, features=feats,
                          starts=starts, ends=ends, tokens=tokenize_captions(texts),
                          texts=[t if isinstance(t, str) else "" for t in texts] if keep_text else None)
        writer.add(rec, path=f"{fpath} / {cpath}")
    return _summary(writer.close())


def _summary(index: dict) -> dict:
    return {k: index[k] for k in ("split", "num_videos", "num_frames", "num_captions", "skipped")}
