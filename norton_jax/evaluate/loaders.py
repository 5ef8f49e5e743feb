"""Loaders for the official evaluation files (spec §5.9).

Each loader reads one benchmark's annotation file(s), checks every field it uses (errors
name the file and the field), and optionally pairs every item with the per-video feature
file ``<feature_dir>/<video_id>.npy`` (``[T, 512]`` S3D features, one row per second).
Items whose video has no feature file are dropped, as the reference does, but never
silently: the returned :class:`MissingFeatures` report lists them by count and id and a
warning is logged (``missing="error"`` raises instead).

===========================  ===============================================  =========
loader                       files                                            spec
===========================  ===============================================  =========
:func:`load_youcook`         ``youcookii_annotations_trainval.json``, and/or  5.1-5.3
                             MIL-NCE ``validation_youcook.csv`` or the
                             reference's ``youcook_val.pkl``
:func:`load_msrvtt`          ``MSRVTT_JSFUSION_test.csv`` / ``msrvtt_test.csv``  5.5
:func:`load_msrvtt_mc`       ``MSR_MC_test.csv`` (tab-separated) or           5.6
                             ``msrvtt_mc_test.jsonl``
:func:`load_coin`            ``COIN.json``                                    5.7
:func:`load_htm_align`       ``htm_align.json``                               5.8
===========================  ===============================================  =========
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


class EvalDataError(ValueError):
    """An evaluation file is missing, unreadable or has a broken field."""

    def __init__(self, path: PathLike, message: str):
        super().__init__(f"{os.fspath(path)}: {message}")
        self.path = os.fspath(path)


# ---------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MissingFeatures:
    """Videos of a test set without a feature file (and how many items that removed)."""

    feature_dir: str | None
    video_ids: list[str] = field(default_factory=list)  # sorted
    total_videos: int = 0
    dropped_items: int = 0

    @property
    def count(self) -> int:
        return len(self.video_ids)

    def __bool__(self) -> bool:
        return bool(self.video_ids)

    def summary(self) -> str:
        shown = ", ".join(self.video_ids[:10]) + (" ..." if self.count > 10 else "")
        return (
            f"{self.count} of {self.total_videos} videos have no features in {self.feature_dir} "
            f"({self.dropped_items} items dropped): {shown}"
        )


class FeatureDir:
    """A directory of per-video feature files ``<video_id>.npy``, each ``[T, D]``."""

    def __init__(self, root: PathLike, *, suffix: str = ".npy", mmap: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise EvalDataError(root, "feature directory does not exist")
        self.suffix = suffix
        self.mmap = mmap
        self._ids = {p.name[: -len(suffix)] for p in self.root.iterdir() if p.name.endswith(suffix)}

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._ids

    def path(self, video_id: str) -> Path:
        return self.root / f"{video_id}{self.suffix}"

    def load(self, video_id: str, *, check_finite: bool = True) -> np.ndarray:
        """Features ``[T, D]`` of one video (float32 unless stored as float64).

        Every value must be finite: a NaN or inf anywhere raises :class:`EvalDataError`
        naming the file, the video and the first bad frame (``check_finite=False`` skips
        that scan, for callers that only read the shape).
        """
        path = self.path(video_id)
        try:
            feat = np.load(path, mmap_mode="r" if self.mmap else None, allow_pickle=False)
        except FileNotFoundError:
            raise EvalDataError(path, "feature file not found") from None
        except (OSError, ValueError) as err:
            raise EvalDataError(path, f"not a readable .npy array ({err})") from None
        if feat.ndim != 2 or feat.shape[0] == 0 or not np.issubdtype(feat.dtype, np.floating):
            raise EvalDataError(path, f"features must be a non-empty float [T, D] array, got {feat.dtype} {feat.shape}")
        if check_finite:
            check_finite_features(feat, path, video_id)
        return feat

    def num_frames(self, video_id: str) -> int:
        """Rows of the video's features (reads the file header only)."""
        return int(self.load(video_id, check_finite=False).shape[0])


def check_finite_features(features: np.ndarray, path: PathLike, video_id: str = "") -> None:
    """Raises :class:`EvalDataError` (naming ``path``, the video and the first bad frame) when
    ``features [T, D]`` hold a NaN or an infinity.

    A single bad value is enough to turn every similarity of its window into NaN, which
    the ranking metrics would then score silently as a miss (or a hit), so features are
    refused instead.
    """
    finite = np.isfinite(features)
    if finite.all():
        return
    bad = np.argwhere(~finite)
    frame, dim = (int(x) for x in bad[0][:2]) if bad.shape[1] >= 2 else (int(bad[0][0]), 0)
    value = features[tuple(bad[0])]
    who = f"video {video_id!r}: " if video_id else ""
    raise EvalDataError(
        path, f"{who}features contain {len(bad)} non-finite values (NaN/inf), first at frame {frame} "
        f"(dim {dim}: {float(value)!r}); fix or re-extract these features"
    )


def _feature_dir(features: FeatureDir | PathLike | None) -> FeatureDir | None:
    if features is None or isinstance(features, FeatureDir):
        return features
    return FeatureDir(features)


def check_features(
    video_ids: Iterable[str],
    features: FeatureDir | None,
    *,
    item_video_ids: Sequence[str] | None = None,
    missing: str = "drop",
    what: str = "test set",
) -> tuple[set[str], MissingFeatures]:
    """Which ``video_ids`` have features; the report of those that do not.

    ``missing="drop"`` logs a warning naming the count and ids; ``"error"`` raises.
    """
    if missing not in ("drop", "error"):
        raise ValueError(f"missing must be 'drop' or 'error', got {missing!r}")
    ids = list(dict.fromkeys(video_ids))
    if features is None:
        return set(ids), MissingFeatures(None, [], len(ids), 0)
    absent = sorted(v for v in ids if v not in features)
    items = item_video_ids if item_video_ids is not None else ids
    absent_set = set(absent)
    report = MissingFeatures(str(features.root), absent, len(ids), sum(v in absent_set for v in items))
    if absent:
        if missing == "error":
            raise EvalDataError(features.root, f"{what}: {report.summary()}")
        log.warning("%s: %s", what, report.summary())
    return set(ids) - absent_set, report


# ---------------------------------------------------------------------------------------
# Small parsing helpers
# ---------------------------------------------------------------------------------------


def _read_json(path: PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise EvalDataError(path, "file not found") from None
    except json.JSONDecodeError as err:
        raise EvalDataError(path, f"not valid JSON ({err})") from None


def _read_csv(path: PathLike, *, delimiter: str, required: Sequence[str]) -> list[dict[str, str]]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except FileNotFoundError:
        raise EvalDataError(path, "file not found") from None
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    absent = [c for c in required if c not in header]
    if absent:
        raise EvalDataError(path, f"missing column(s) {absent}; header is {header}")
    rows = []
    for line, row in enumerate(reader, start=2):
        if None in row or any(row.get(c) is None for c in required):
            raise EvalDataError(path, f"line {line}: expected {len(header)} fields, got a malformed row")
        rows.append(row)
    return rows


def _number(path: PathLike, where: str, value: Any, *, integer: bool = False) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise EvalDataError(path, f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise EvalDataError(path, f"{where}: expected a finite number, got {value!r}")
    if integer and number != int(number):
        raise EvalDataError(path, f"{where}: expected an integer, got {value!r}")
    return int(number) if integer else number


def _segment(path: PathLike, where: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise EvalDataError(path, f"{where}: expected [start, end], got {value!r}")
    start = _number(path, f"{where}[0]", value[0])
    end = _number(path, f"{where}[1]", value[1])
    if end < start:
        raise EvalDataError(path, f"{where}: end {end} < start {start}")
    return start, end


def _string(path: PathLike, where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise EvalDataError(path, f"{where}: expected a string, got {type(value).__name__}")
    return value


def _mapping(path: PathLike, where: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise EvalDataError(path, f"{where}: expected an object, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------------------
# YouCookII (§5.1-5.3)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class YouCookClip:
    """One annotated YouCookII segment (one caption, one clip)."""

    video_id: str
    index: int  # k: position in the video's annotation list
    start: int  # seconds (feature rows)
    end: int
    text: str


@dataclass
class YouCookData:
    """The YouCookII test set in reference order (a video's clips are contiguous)."""

    clips: list[YouCookClip]
    features: FeatureDir | None
    missing: MissingFeatures
    source: str  # "pkl" | "csv" | "json"

    @property
    def video_ids(self) -> list[str]:
        """Distinct videos in clip order."""
        return list(dict.fromkeys(c.video_id for c in self.clips))

    @property
    def clip_video_ids(self) -> list[str]:
        """Video of every clip/caption row (the ids :func:`paragraph_retrieval` takes)."""
        return [c.video_id for c in self.clips]

    def captions(self, video_id: str) -> list[str]:
        return [c.text for c in self.clips if c.video_id == video_id]

    def clip_features(self, clip: YouCookClip, *, max_len: int = 32) -> np.ndarray:
        """``feat[start:end]`` truncated to its first ``max_len`` seconds (§5.1, DSAligner)."""
        if self.features is None:
            raise ValueError("no feature_dir was given")
        return np.asarray(self.features.load(clip.video_id)[clip.start : clip.end][:max_len])


def _load_pkl(path: PathLike) -> Any:
    """A test-set pickle of plain records (lists, dicts, strings, numbers, numpy arrays);
    anything that would need other code to unpickle is refused."""
    from data_pipeline.safe_pickle import load_plain_pickle  # noqa: PLC0415

    try:
        return load_plain_pickle(path)
    except FileNotFoundError:
        raise EvalDataError(path, "file not found") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise EvalDataError(path, f"not a readable pickle of plain records ({err})") from None


def _youcook_annotations(path: PathLike) -> dict[str, dict]:
    data = _mapping(path, "top level", _read_json(path))
    if "database" not in data:
        raise EvalDataError(path, "missing field 'database'")
    database = _mapping(path, "database", data["database"])
    for vid, rec in database.items():
        rec = _mapping(path, f"database[{vid!r}]", rec)
        if "annotations" not in rec or not isinstance(rec["annotations"], list):
            raise EvalDataError(path, f"database[{vid!r}].annotations: missing or not a list")
    return database


def _youcook_annotation(path, database, vid: str, k: int) -> tuple[int, int, str]:
    if vid not in database:
        raise EvalDataError(path, f"database has no video {vid!r}")
    anns = database[vid]["annotations"]
    if not 0 <= k < len(anns):
        raise EvalDataError(path, f"database[{vid!r}].annotations has no entry {k} (has {len(anns)})")
    ann = _mapping(path, f"database[{vid!r}].annotations[{k}]", anns[k])
    where = f"database[{vid!r}].annotations[{k}]"
    if "segment" not in ann or "sentence" not in ann:
        raise EvalDataError(path, f"{where}: needs 'segment' and 'sentence'")
    start, end = _segment(path, f"{where}.segment", ann["segment"])
    return int(start), int(end), _string(path, f"{where}.sentence", ann["sentence"])


def load_youcook(
    annotations: PathLike | None = None,
    clips: PathLike | None = None,
    feature_dir: FeatureDir | PathLike | None = None,
    *,
    split: str = "validation",
    use_annotation_text: bool = True,
    missing: str = "drop",
) -> YouCookData:
    """YouCookII clips for clip retrieval and video-paragraph retrieval (spec §5.1-5.3).

    * ``clips`` = the reference's ``youcook_val.pkl`` (list of ``{"id": "<vid>_<k>",
      "caption"}``; needs ``annotations`` for the times), or MIL-NCE's
      ``validation_youcook.csv`` (``end,start,task,text,video_id``; the ``k``-th row of a
      video is annotation ``k``, checked against ``annotations`` when given).  Row order
      is kept: it is the order of the reference's similarity matrix.
    * ``annotations`` alone: every segment of every ``split`` video in file order (457
      validation videos, a superset of the 436 that have public features).
    * ``use_annotation_text`` (reference: true) takes the sentence from the JSON.
    * Clips of videos without ``<feature_dir>/<vid>.npy`` are dropped and reported.
    """
    if annotations is None and clips is None:
        raise ValueError("give the annotations JSON, a clip list (csv/pkl), or both")
    database = _youcook_annotations(annotations) if annotations is not None else None
    records: list[YouCookClip] = []
    if clips is None:
        source = "json"
        for vid, rec in database.items():
            if rec.get("subset") != split:
                continue
            for k in range(len(rec["annotations"])):
                start, end, text = _youcook_annotation(annotations, database, vid, k)
                records.append(YouCookClip(vid, k, start, end, text))
        if not records:
            raise EvalDataError(annotations, f"no video has subset == {split!r}")
    elif str(clips).endswith(".pkl"):
        source = "pkl"
        if database is None:
            raise ValueError(f"{clips}: the pkl has no segment times; pass the annotations JSON too")
        data = _load_pkl(clips)
        if not isinstance(data, list):
            raise EvalDataError(clips, f"expected a list of records, got {type(data).__name__}")
        for i, rec in enumerate(data):
            if not isinstance(rec, dict) or "id" not in rec:
                raise EvalDataError(clips, f"record {i}: expected a dict with field 'id'")
            rid = _string(clips, f"record {i}.id", rec["id"])
            vid, sep, k = rid.rpartition("_")
            if not sep or not k.isdigit():
                raise EvalDataError(clips, f"record {i}.id: expected '<video_id>_<k>', got {rid!r}")
            start, end, sentence = _youcook_annotation(annotations, database, vid, int(k))
            if use_annotation_text:
                text = sentence
            else:
                if "caption" not in rec:
                    raise EvalDataError(clips, f"record {i}: missing field 'caption'")
                text = _string(clips, f"record {i}.caption", rec["caption"])
            records.append(YouCookClip(vid, int(k), start, end, text))
    else:
        source = "csv"
        rows = _read_csv(clips, delimiter=",", required=("start", "end", "text", "video_id"))
        seen: dict[str, int] = {}
        for line, row in enumerate(rows, start=2):
            vid = row["video_id"].strip()
            if not vid:
                raise EvalDataError(clips, f"line {line}: empty video_id")
            start = _number(clips, f"line {line} field 'start'", row["start"], integer=True)
            end = _number(clips, f"line {line} field 'end'", row["end"], integer=True)
            if end < start:
                raise EvalDataError(clips, f"line {line}: end {end} < start {start}")
            k = seen.get(vid, 0)
            seen[vid] = k + 1
            text = row["text"]
            if database is not None:
                a_start, a_end, sentence = _youcook_annotation(annotations, database, vid, k)
                if (a_start, a_end) != (start, end):
                    raise EvalDataError(
                        clips, f"line {line}: segment [{start}, {end}] of {vid} is not annotation {k} "
                        f"[{a_start}, {a_end}] of {os.fspath(annotations)}"
                    )
                if use_annotation_text:
                    text = sentence
            records.append(YouCookClip(vid, k, int(start), int(end), text))
        if not records:
            raise EvalDataError(clips, "no rows")
    features = _feature_dir(feature_dir)
    keep, report = check_features(
        (c.video_id for c in records), features,
        item_video_ids=[c.video_id for c in records], missing=missing, what="YouCookII",
    )
    records = [c for c in records if c.video_id in keep]
    return YouCookData(records, features, report, source)


def youcook_background_windows(num_frames: int, *, stride: int = 16, size: int = 16) -> list[tuple[int, int]]:
    """Whole-video windows of the background-kept protocol (spec §5.3, trap T23).

    Starts ``0, 16, 32, ...``; window ``[start, start + min(T - start, 16))`` (the model pads
    each to 32 frames); stops after the window that reaches the end.
    """
    windows = []
    for start in range(0, num_frames, stride):
        windows.append((start, start + min(num_frames - start, size)))
        if num_frames - start <= size:
            break
    return windows


# ---------------------------------------------------------------------------------------
# MSR-VTT (§5.5, §5.6)
# ---------------------------------------------------------------------------------------


@dataclass
class MSRVTTRetrieval:
    """MSR-VTT 1k-A text-to-video retrieval: caption ``i`` belongs to video ``i``."""

    video_ids: list[str]
    sentences: list[str]
    keys: list[str]
    features: FeatureDir | None
    missing: MissingFeatures


def load_msrvtt(
    path: PathLike, feature_dir: FeatureDir | PathLike | None = None, *, missing: str = "drop"
) -> MSRVTTRetrieval:
    """``MSRVTT_JSFUSION_test.csv`` / ``msrvtt_test.csv`` (``key,vid_key,video_id,sentence``; spec §5.5)."""
    rows = _read_csv(path, delimiter=",", required=("video_id", "sentence"))
    if not rows:
        raise EvalDataError(path, "no rows")
    vids, sents, keys = [], [], []
    for line, row in enumerate(rows, start=2):
        vid = row["video_id"].strip()
        if not vid:
            raise EvalDataError(path, f"line {line}: empty field 'video_id'")
        vids.append(vid)
        sents.append(row["sentence"])
        keys.append(row.get("key", "") or "")
    features = _feature_dir(feature_dir)
    keep, report = check_features(vids, features, item_video_ids=vids, missing=missing, what="MSR-VTT")
    idx = [i for i, v in enumerate(vids) if v in keep]
    return MSRVTTRetrieval([vids[i] for i in idx], [sents[i] for i in idx], [keys[i] for i in idx], features, report)


@dataclass
class MSRVTTMultipleChoice:
    """MSR-VTT multiple-choice test: ``options[q]`` (5 captions), ``answers[q]`` 0-based."""

    video_ids: list[str]
    options: list[list[str]]
    answers: np.ndarray  # [questions] int64
    features: FeatureDir | None
    missing: MissingFeatures


def load_msrvtt_mc(
    path: PathLike,
    feature_dir: FeatureDir | PathLike | None = None,
    *,
    num_options: int = 5,
    missing: str = "drop",
) -> MSRVTTMultipleChoice:
    """MSR-VTT multiple choice (spec §5.6) from either layout.

    * ``*.jsonl`` (ClipBERT layout): one ``{"clip_name", "answer", "options": [5]}`` per line.
    * otherwise the reference's **tab-separated** ``MSR_MC_test.csv`` with columns
      ``vid_key, a1..a5, answer``; video id = ``vid_key`` with "msr" replaced by "video".
    """
    vids, options, answers = [], [], []
    if str(path).endswith(".jsonl"):
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            raise EvalDataError(path, "file not found") from None
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise EvalDataError(path, f"line {n}: not valid JSON ({err})") from None
            rec = _mapping(path, f"line {n}", rec)
            for key in ("clip_name", "answer", "options"):
                if key not in rec:
                    raise EvalDataError(path, f"line {n}: missing field {key!r}")
            opts = rec["options"]
            if not isinstance(opts, list) or len(opts) != num_options or not all(isinstance(o, str) for o in opts):
                raise EvalDataError(path, f"line {n} field 'options': expected {num_options} strings")
            vids.append(_string(path, f"line {n} field 'clip_name'", rec["clip_name"]))
            options.append(list(opts))
            answers.append(_number(path, f"line {n} field 'answer'", rec["answer"], integer=True))
    else:
        cols = [f"a{i}" for i in range(1, num_options + 1)]
        rows = _read_csv(path, delimiter="\t", required=("vid_key", *cols, "answer"))
        for line, row in enumerate(rows, start=2):
            vids.append(row["vid_key"].strip().replace("msr", "video"))
            options.append([row[c] for c in cols])
            answers.append(_number(path, f"line {line} field 'answer'", row["answer"], integer=True))
    if not vids:
        raise EvalDataError(path, "no questions")
    bad = [i for i, a in enumerate(answers) if not 0 <= a < num_options]
    if bad:
        raise EvalDataError(path, f"field 'answer' out of range [0, {num_options}) for question {bad[0]}")
    features = _feature_dir(feature_dir)
    keep, report = check_features(vids, features, item_video_ids=vids, missing=missing, what="MSR-VTT MC")
    idx = [i for i, v in enumerate(vids) if v in keep]
    return MSRVTTMultipleChoice(
        [vids[i] for i in idx], [options[i] for i in idx],
        np.asarray([answers[i] for i in idx], dtype=np.int64), features, report,
    )


# ---------------------------------------------------------------------------------------
# COIN (§5.7)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class COINVideo:
    video_id: str
    segments: list[tuple[float, float, int]]  # (start s, end s, label id >= 1), file order


@dataclass
class COINData:
    """COIN action segmentation: videos of one subset and the label names."""

    videos: list[COINVideo]
    label_names: list[str]  # label_names[id - 1]; class 0 is background "O"
    features: FeatureDir | None
    missing: MissingFeatures

    @property
    def num_classes(self) -> int:
        return len(self.label_names) + 1


_COIN_SPLITS = {"train": "training", "training": "training", "valid": "testing", "test": "testing", "testing": "testing"}


def load_coin(
    path: PathLike,
    feature_dir: FeatureDir | PathLike | None = None,
    *,
    split: str = "testing",
    missing: str = "drop",
) -> COINData:
    """``COIN.json`` (spec §5.7): ``database[vid].{subset, annotation[].{segment, id, label}}``.

    The label set is the ids seen in the *testing* subset (as the reference, whatever the
    split); ``label_names[id - 1]`` (missing ids -> ``"none"``, as the reference's list).
    """
    if split not in _COIN_SPLITS:
        raise ValueError(f"split must be one of {sorted(_COIN_SPLITS)}, got {split!r}")
    subset = _COIN_SPLITS[split]
    data = _mapping(path, "top level", _read_json(path))
    if "database" not in data:
        raise EvalDataError(path, "missing field 'database'")
    database = _mapping(path, "database", data["database"])
    parsed: dict[str, tuple[str, list[tuple[float, float, int, str]]]] = {}
    for vid, rec in database.items():
        rec = _mapping(path, f"database[{vid!r}]", rec)
        if "subset" not in rec or "annotation" not in rec:
            raise EvalDataError(path, f"database[{vid!r}]: needs 'subset' and 'annotation'")
        if not isinstance(rec["annotation"], list):
            raise EvalDataError(path, f"database[{vid!r}].annotation: expected a list")
        segs = []
        for j, ann in enumerate(rec["annotation"]):
            where = f"database[{vid!r}].annotation[{j}]"
            ann = _mapping(path, where, ann)
            for key in ("segment", "id", "label"):
                if key not in ann:
                    raise EvalDataError(path, f"{where}: missing field {key!r}")
            start, end = _segment(path, f"{where}.segment", ann["segment"])
            label = _number(path, f"{where}.id", ann["id"], integer=True)
            if label < 1:
                raise EvalDataError(path, f"{where}.id: label ids start at 1 (0 is background), got {label}")
            segs.append((start, end, label, _string(path, f"{where}.label", ann["label"])))
        parsed[vid] = (str(rec["subset"]), segs)
    id2label = {lab: name for sub, segs in parsed.values() if sub == "testing" for _, _, lab, name in segs}
    if not id2label:
        raise EvalDataError(path, "no labelled segment in the 'testing' subset")
    names = ["none"] * max(id2label)
    for lab, name in id2label.items():
        names[lab - 1] = name
    if len(id2label) != len(names):
        log.warning("%s: label ids are not contiguous (%d ids, max %d)", os.fspath(path), len(id2label), len(names))
    chosen = [vid for vid, (sub, _) in parsed.items() if sub == subset]
    features = _feature_dir(feature_dir)
    keep, report = check_features(chosen, features, missing=missing, what=f"COIN {subset}")
    videos = [COINVideo(v, [(s, e, lab) for s, e, lab, _ in parsed[v][1]]) for v in chosen if v in keep]
    return COINData(videos, names, features, report)


# ---------------------------------------------------------------------------------------
# HTM-Align (§5.8)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HTMAlignVideo:
    video_id: str
    aligned: np.ndarray  # [captions] bool: alignable (times human-corrected)
    starts: np.ndarray  # [captions] float seconds
    ends: np.ndarray  # [captions]
    texts: list[str]


@dataclass
class HTMAlignData:
    videos: list[HTMAlignVideo]  # sorted by id
    features: FeatureDir | None
    missing: MissingFeatures


def load_htm_align(
    path: PathLike, feature_dir: FeatureDir | PathLike | None = None, *, missing: str = "drop"
) -> HTMAlignData:
    """``htm_align.json`` (spec §5.8): ``{vid: [[aligned 0/1, start, end, text], ...]}``, sorted ids."""
    data = _mapping(path, "top level", _read_json(path))
    videos = []
    for vid in sorted(data):
        entries = data[vid]
        if not isinstance(entries, list) or not entries:
            raise EvalDataError(path, f"[{vid!r}]: expected a non-empty list of [aligned, start, end, text]")
        flags, starts, ends, texts = [], [], [], []
        for j, entry in enumerate(entries):
            where = f"[{vid!r}][{j}]"
            if not isinstance(entry, list) or len(entry) != 4:
                raise EvalDataError(path, f"{where}: expected [aligned, start, end, text], got {entry!r}")
            flag = _number(path, f"{where}[0] (aligned)", entry[0], integer=True)
            if flag not in (0, 1):
                raise EvalDataError(path, f"{where}[0] (aligned): expected 0 or 1, got {entry[0]!r}")
            start, end = _segment(path, f"{where}[1:3] (start, end)", entry[1:3])
            flags.append(bool(flag))
            starts.append(start)
            ends.append(end)
            texts.append(_string(path, f"{where}[3] (text)", entry[3]))
        videos.append(HTMAlignVideo(vid, np.asarray(flags), np.asarray(starts), np.asarray(ends), texts))
    if not videos:
        raise EvalDataError(path, "no videos")
    features = _feature_dir(feature_dir)
    keep, report = check_features([v.video_id for v in videos], features, missing=missing, what="HTM-Align")
    return HTMAlignData([v for v in videos if v.video_id in keep], features, report)
