"""MSR-VTT (spec §5.5, §5.6), COIN (§5.7) and HTM-Align (§5.8) loaders."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import numpy as np

from norton_jax.evaluate.loaders.files import (EvalDataError, FeatureDir, MissingFeatures, PathLike, as_feature_dir,
                                               check_features, parse_mapping, parse_number, parse_segment,
                                               parse_string, read_csv_rows, read_json_file)

log = logging.getLogger(__name__)

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
    rows = read_csv_rows(path, delimiter=",", required=("video_id", "sentence"))
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
    features = as_feature_dir(feature_dir)
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
            rec = parse_mapping(path, f"line {n}", rec)
            for key in ("clip_name", "answer", "options"):
                if key not in rec:
                    raise EvalDataError(path, f"line {n}: missing field {key!r}")
            opts = rec["options"]
            if not isinstance(opts, list) or len(opts) != num_options or not all(isinstance(o, str) for o in opts):
                raise EvalDataError(path, f"line {n} field 'options': expected {num_options} strings")
            vids.append(parse_string(path, f"line {n} field 'clip_name'", rec["clip_name"]))
            options.append(list(opts))
            answers.append(parse_number(path, f"line {n} field 'answer'", rec["answer"], integer=True))
    else:
        cols = [f"a{i}" for i in range(1, num_options + 1)]
        rows = read_csv_rows(path, delimiter="\t", required=("vid_key", *cols, "answer"))
        for line, row in enumerate(rows, start=2):
            vids.append(row["vid_key"].strip().replace("msr", "video"))
            options.append([row[c] for c in cols])
            answers.append(parse_number(path, f"line {line} field 'answer'", row["answer"], integer=True))
    if not vids:
        raise EvalDataError(path, "no questions")
    bad = [i for i, a in enumerate(answers) if not 0 <= a < num_options]
    if bad:
        raise EvalDataError(path, f"field 'answer' out of range [0, {num_options}) for question {bad[0]}")
    features = as_feature_dir(feature_dir)
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
    data = parse_mapping(path, "top level", read_json_file(path))
    if "database" not in data:
        raise EvalDataError(path, "missing field 'database'")
    database = parse_mapping(path, "database", data["database"])
    parsed: dict[str, tuple[str, list[tuple[float, float, int, str]]]] = {}
    for vid, rec in database.items():
        rec = parse_mapping(path, f"database[{vid!r}]", rec)
        if "subset" not in rec or "annotation" not in rec:
            raise EvalDataError(path, f"database[{vid!r}]: needs 'subset' and 'annotation'")
        if not isinstance(rec["annotation"], list):
            raise EvalDataError(path, f"database[{vid!r}].annotation: expected a list")
        segs = []
        for j, ann in enumerate(rec["annotation"]):
            where = f"database[{vid!r}].annotation[{j}]"
            ann = parse_mapping(path, where, ann)
            for key in ("segment", "id", "label"):
                if key not in ann:
                    raise EvalDataError(path, f"{where}: missing field {key!r}")
            start, end = parse_segment(path, f"{where}.segment", ann["segment"])
            label = parse_number(path, f"{where}.id", ann["id"], integer=True)
            if label < 1:
                raise EvalDataError(path, f"{where}.id: label ids start at 1 (0 is background), got {label}")
            segs.append((start, end, label, parse_string(path, f"{where}.label", ann["label"])))
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
    features = as_feature_dir(feature_dir)
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
    data = parse_mapping(path, "top level", read_json_file(path))
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
            flag = parse_number(path, f"{where}[0] (aligned)", entry[0], integer=True)
            if flag not in (0, 1):
                raise EvalDataError(path, f"{where}[0] (aligned): expected 0 or 1, got {entry[0]!r}")
            start, end = parse_segment(path, f"{where}[1:3] (start, end)", entry[1:3])
            flags.append(bool(flag))
            starts.append(start)
            ends.append(end)
            texts.append(parse_string(path, f"{where}[3] (text)", entry[3]))
        videos.append(HTMAlignVideo(vid, np.asarray(flags), np.asarray(starts), np.asarray(ends), texts))
    if not videos:
        raise EvalDataError(path, "no videos")
    features = as_feature_dir(feature_dir)
    keep, report = check_features([v.video_id for v in videos], features, missing=missing, what="HTM-Align")
    return HTMAlignData([v for v in videos if v.video_id in keep], features, report)
