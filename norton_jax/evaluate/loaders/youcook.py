"""YouCookII loaders (spec §5.1-5.3): annotations, MIL-NCE csv / reference pickle, background windows."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np

from norton_jax.evaluate.windows import sliding_windows
from norton_jax.evaluate.loaders.files import (EvalDataError, FeatureDir, MissingFeatures, PathLike, as_feature_dir,
                                               check_features, parse_mapping, parse_number, parse_segment,
                                               parse_string, read_csv_rows, read_json_file)



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
    data = parse_mapping(path, "top level", read_json_file(path))
    if "database" not in data:
        raise EvalDataError(path, "missing field 'database'")
    database = parse_mapping(path, "database", data["database"])
    for vid, rec in database.items():
        rec = parse_mapping(path, f"database[{vid!r}]", rec)
        if "annotations" not in rec or not isinstance(rec["annotations"], list):
            raise EvalDataError(path, f"database[{vid!r}].annotations: missing or not a list")
    return database


def _youcook_annotation(path, database, vid: str, k: int) -> tuple[int, int, str]:
    if vid not in database:
        raise EvalDataError(path, f"database has no video {vid!r}")
    anns = database[vid]["annotations"]
    if not 0 <= k < len(anns):
        raise EvalDataError(path, f"database[{vid!r}].annotations has no entry {k} (has {len(anns)})")
    ann = parse_mapping(path, f"database[{vid!r}].annotations[{k}]", anns[k])
    where = f"database[{vid!r}].annotations[{k}]"
    if "segment" not in ann or "sentence" not in ann:
        raise EvalDataError(path, f"{where}: needs 'segment' and 'sentence'")
    start, end = parse_segment(path, f"{where}.segment", ann["segment"])
    return int(start), int(end), parse_string(path, f"{where}.sentence", ann["sentence"])


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
            rid = parse_string(clips, f"record {i}.id", rec["id"])
            vid, sep, k = rid.rpartition("_")
            if not sep or not k.isdigit():
                raise EvalDataError(clips, f"record {i}.id: expected '<video_id>_<k>', got {rid!r}")
            start, end, sentence = _youcook_annotation(annotations, database, vid, int(k))
            if use_annotation_text:
                text = sentence
            else:
                if "caption" not in rec:
                    raise EvalDataError(clips, f"record {i}: missing field 'caption'")
                text = parse_string(clips, f"record {i}.caption", rec["caption"])
            records.append(YouCookClip(vid, int(k), start, end, text))
    else:
        source = "csv"
        rows = read_csv_rows(clips, delimiter=",", required=("start", "end", "text", "video_id"))
        seen: dict[str, int] = {}
        for line, row in enumerate(rows, start=2):
            vid = row["video_id"].strip()
            if not vid:
                raise EvalDataError(clips, f"line {line}: empty video_id")
            start = parse_number(clips, f"line {line} field 'start'", row["start"], integer=True)
            end = parse_number(clips, f"line {line} field 'end'", row["end"], integer=True)
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
    features = as_feature_dir(feature_dir)
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
    return sliding_windows(num_frames, stride=stride, size=size)
