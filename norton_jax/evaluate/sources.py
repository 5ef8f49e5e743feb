"""Where the evaluation data comes from (spec §5.9): the official files or a feature store.

:class:`ClipSet` (YouCookII-style clips) and :class:`AlignSet` (HTM-Align-style videos) come
from the official files in a folder (:mod:`norton_jax.evaluate.loaders`) or from a
``youcook2-mnc`` feature store (``python -m data_pipeline.build youcook2-mnc``).  Stores are
read through :mod:`data_pipeline.fileio`, so a store on ``gs://`` or ``ram://`` works;
:func:`msrvtt_data` and :func:`coin_data` find the MSR-VTT and COIN files in a folder.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from data_pipeline import fileio
from norton_jax.evaluate import loaders as L

PathLike = str | os.PathLike


@dataclass
class ClipSet:
    """YouCookII-style clips (one caption per annotated segment), from files or the store."""

    clips: list[L.YouCookClip]  # a video's clips contiguous, in temporal order
    load: Callable[[str], np.ndarray]  # video id -> features [T, D]
    missing: L.MissingFeatures
    source: str

    @property
    def video_ids(self) -> list[str]:
        return list(dict.fromkeys(c.video_id for c in self.clips))


@dataclass
class AlignSet:
    """HTM-Align-style videos (all narration lines, alignable flags, annotated times)."""

    videos: list[L.HTMAlignVideo]
    load: Callable[[str], np.ndarray]
    missing: L.MissingFeatures
    source: str
    records: list | None = None  # the store's VideoRecords (youcook2-mnc), for the timestamp baseline


def is_feature_store(path: PathLike) -> bool:
    """True for a feature-store folder (``<split>.index.json``), e.g. a youcook2-mnc build."""
    p = os.fspath(path)
    if not fileio.isdir(p):
        return False
    return bool(fileio.glob(fileio.join(p, "*.index.json"))) or fileio.exists(fileio.join(p, "youcook2_mnc.json"))


def read_store(store_dir: PathLike, split: str = "val", *, max_videos: int | None = None) -> list:
    """``VideoRecord``s of one split of a feature store, with ground truth checked present."""
    from data_pipeline.feature_store import FeatureStore  # noqa: PLC0415

    store = FeatureStore(os.fspath(store_dir), split)
    try:
        n = len(store) if max_videos is None else min(len(store), max_videos)
        records = [checked_store_record(store, i) for i in range(n)]
    finally:
        store.close()
    return records


def checked_store_record(store, i: int):
    """Record ``i`` of an open ``FeatureStore``, its features checked finite (the error names
    the shard file, the video and the first bad frame)."""
    rec = store[i]
    L.check_finite_features(np.asarray(rec.features), _shard_path(store, i), rec.video_id)
    return rec


def _shard_path(store, i: int) -> str:
    """The shard file holding record ``i`` (the store folder if the store hides it)."""
    try:
        return store.paths[store._entries[i][0]]  # noqa: SLF001 - for the error message only
    except (AttributeError, IndexError, TypeError):
        return fileio.join(os.fspath(store.store_dir), f"{store.split}.index.json")


def _require_gt(records: Sequence, store_dir: PathLike, split: str) -> None:
    absent = [r.video_id for r in records if r.gt_start is None or r.gt_alignable is None]
    if absent:
        raise L.EvalDataError(
            store_dir,
            f"split {split!r}: {len(absent)} of {len(records)} videos have no ground-truth fields "
            f"(gt_start, gt_end, gt_alignable), e.g. {absent[:5]}; the youcook2 and htm_align tasks "
            "on a store need a youcook2-mnc build (python -m data_pipeline.build youcook2-mnc)",
        )


def _store_loader(records: Sequence) -> Callable[[str], np.ndarray]:
    by_id = {r.video_id: r for r in records}
    return lambda vid: np.asarray(by_id[vid].features, np.float32)


def store_clips(records: Sequence) -> list[L.YouCookClip]:
    """youcook2-mnc ``val`` clips: the true segment of every alignable caption (spec §5.1 analogue).

    Clip = ``feat[int(gt_start):int(gt_end)]`` (integer seconds as the YouCookII annotations);
    caption = the clean step sentence (``gt_text``; the caption text if the store has none).
    A video's clips are in the temporal order of the true segments.
    """
    clips = []
    for rec in records:
        flags = np.asarray(rec.gt_alignable).astype(bool)
        idx = [int(i) for i in np.flatnonzero(flags)]
        idx.sort(key=lambda i: (float(rec.gt_start[i]), float(rec.gt_end[i]), i))
        for i in idx:
            text = rec.gt_text[i] if rec.gt_text is not None and rec.gt_text[i] else (rec.texts[i] if rec.texts else "")
            start = max(0, int(rec.gt_start[i]))
            end = min(rec.num_frames, max(start, int(rec.gt_end[i])))
            clips.append(L.YouCookClip(rec.video_id, i, start, end, text))
    return clips


def store_htm_align(records: Sequence) -> list[L.HTMAlignVideo]:
    """youcook2-mnc as HTM-Align (spec §5.8): every narration line (the noisy caption text) in
    store order; alignable = ``gt_alignable``; times = the true segment for alignable lines and
    the original (noisy) times for the others, as ``htm_align.json``."""
    videos = []
    for rec in records:
        flags = np.asarray(rec.gt_alignable).astype(bool)
        starts = np.where(flags, rec.gt_start, rec.starts).astype(np.float64)
        ends = np.where(flags, rec.gt_end, rec.ends).astype(np.float64)
        texts = list(rec.texts) if rec.texts is not None else [""] * len(flags)
        videos.append(L.HTMAlignVideo(rec.video_id, flags, starts, ends, texts))
    return sorted(videos, key=lambda v: v.video_id)


def no_missing(n: int) -> L.MissingFeatures:
    return L.MissingFeatures(None, [], n, 0)


def _first(data: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (data / name).exists():
            return data / name
    return None


def features_dir(data: Path, features: PathLike | None, names: Sequence[str], *, allow_data_dir: bool = False) -> L.FeatureDir:
    if features is not None:
        return L.FeatureDir(features)
    found = _first(data, names)
    if found is not None and found.is_dir():
        return L.FeatureDir(found)
    if allow_data_dir and any(data.glob("*.npy")):
        return L.FeatureDir(data)
    raise L.EvalDataError(
        data, f"no feature directory: expected one of {list(names)} under it (or pass --features DIR)"
    )


def main_file(data: Path, names: Sequence[str], what: str) -> tuple[Path, Path]:
    """(data folder, the task's file): ``data`` may also be the file itself."""
    if data.is_file():
        return data.parent, data
    if not data.is_dir():
        raise L.EvalDataError(data, "data folder does not exist")
    found = _first(data, names)
    if found is None:
        raise L.EvalDataError(data, f"no {what} file: expected one of {list(names)}")
    return data, found


YOUCOOK_FEATURES = ("youcook_validation_feature_fps30_512", "features")
MSRVTT_FEATURES = ("msrvtt_feature_fps30_512", "features")
COIN_FEATURES = ("coin_feature_fps30_512", "features")
HTM_FEATURES = ("features", "how2-align")


def youcook_clip_set(data: PathLike, features: PathLike | None = None, *, split: str = "val",
                     max_videos: int | None = None) -> ClipSet:
    """YouCookII clips from the official files in ``data`` or from a youcook2-mnc store."""
    if is_feature_store(data):
        records = read_store(data, split, max_videos=max_videos)
        _require_gt(records, data, split)
        return ClipSet(store_clips(records), _store_loader(records), no_missing(len(records)), "youcook2-mnc")
    data = Path(data)
    folder = data.parent if data.is_file() else data
    if not folder.is_dir():
        raise L.EvalDataError(data, "data folder does not exist")
    annotations = _first(folder, ("youcookii_annotations_trainval.json",))
    clips = data if data.is_file() else _first(folder, ("youcook_val.pkl", "validation_youcook.csv"))
    if annotations is None and clips is None:
        raise L.EvalDataError(
            folder, "no YouCookII files: expected youcookii_annotations_trainval.json and/or "
            "youcook_val.pkl / validation_youcook.csv"
        )
    fdir = features_dir(folder, features, YOUCOOK_FEATURES)
    yc = L.load_youcook(annotations, clips, fdir)
    if max_videos is not None:
        keep = set(yc.video_ids[:max_videos])
        yc.clips = [c for c in yc.clips if c.video_id in keep]
    return ClipSet(yc.clips, fdir.load, yc.missing, f"official ({yc.source})")


def htm_align_set(data: PathLike, features: PathLike | None = None, *, split: str = "val",
                  max_videos: int | None = None) -> AlignSet:
    """HTM-Align videos from ``htm_align.json`` + features, or from a youcook2-mnc store."""
    if is_feature_store(data):
        records = read_store(data, split, max_videos=max_videos)
        _require_gt(records, data, split)
        return AlignSet(store_htm_align(records), _store_loader(records), no_missing(len(records)), "youcook2-mnc",
                        records)
    folder, path = main_file(Path(data), ("htm_align.json",), "HTM-Align")
    fdir = features_dir(folder, features, HTM_FEATURES, allow_data_dir=True)
    ha = L.load_htm_align(path, fdir)
    videos = ha.videos[:max_videos] if max_videos is not None else ha.videos
    return AlignSet(videos, fdir.load, ha.missing, "official")


def msrvtt_data(data: PathLike, features: PathLike | None = None, *, multiple_choice: bool = False,
                max_videos: int | None = None) -> L.MSRVTTRetrieval | L.MSRVTTMultipleChoice:
    """MSR-VTT 1k-A retrieval pairs (spec §5.5) or multiple-choice questions (§5.6) of ``data``
    (a folder with the official file, or the file itself), first ``max_videos`` items."""
    names = ("MSR_MC_test.csv", "msrvtt_mc_test.jsonl") if multiple_choice else (
        "MSRVTT_JSFUSION_test.csv", "msrvtt_test.csv")
    folder, path = main_file(Path(data), names, "MSR-VTT")
    fdir = features_dir(folder, features, MSRVTT_FEATURES)
    loaded = L.load_msrvtt_mc(path, fdir) if multiple_choice else L.load_msrvtt(path, fdir)
    return loaded if max_videos is None else truncate(loaded, max_videos)


def coin_data(data: PathLike, features: PathLike | None = None, *, split: str = "testing",
              max_videos: int | None = None) -> L.COINData:
    """COIN videos of ``split`` (spec §5.7) from ``COIN.json`` in ``data`` (or the file itself)."""
    folder, path = main_file(Path(data), ("COIN.json",), "COIN")
    loaded = L.load_coin(path, features_dir(folder, features, COIN_FEATURES), split=split)
    if max_videos is not None:
        loaded.videos = loaded.videos[:max_videos]
    return loaded


def truncate(loaded: Any, n: int) -> Any:
    """First ``n`` items of an MSR-VTT dataclass (quick checks)."""
    fields = {f.name: getattr(loaded, f.name) for f in dataclasses.fields(loaded)}
    for name, value in fields.items():
        if isinstance(value, (list, np.ndarray)) and name not in ("features", "missing"):
            fields[name] = value[:n]
    return type(loaded)(**fields)


def missing_dict(missing: L.MissingFeatures) -> dict[str, Any]:
    """The JSON form of a missing-features report."""
    return {
        "count": missing.count,
        "video_ids": missing.video_ids,
        "total_videos": missing.total_videos,
        "dropped_items": missing.dropped_items,
    }


def check_nonempty(n: int, what: str, missing: L.MissingFeatures) -> None:
    """EvalDataError naming the feature folder when nothing is left to evaluate."""
    if n == 0:
        detail = f"; {missing.summary()}" if missing else ""
        raise L.EvalDataError(missing.feature_dir or "<data>", f"no {what} left to evaluate{detail}")
