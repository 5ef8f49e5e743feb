"""Checks a user's downstream files before a long run: presence, shapes, dtypes, times, ids.

    python -m data_pipeline.check --task msrvtt --data D/msrvtt [--features DIR]

Tasks and the files they read (the authors' layout, ``docs/reproduce.md``, spec §5.9):

===============  =========================================================  ==============================
task             annotation files in ``--data``                             default feature folder
===============  =========================================================  ==============================
``youcook2``     ``youcookii_annotations_trainval.json`` (validation split)  ``youcook_validation_feature_fps30_512``
``msrvtt``       ``MSRVTT_JSFUSION_test.csv`` (key, vid_key, video_id, sentence)  ``msrvtt_feature_fps30_512``
``msrvtt_qa``    ``MSR_MC_test.csv`` (tab-separated vid_key, a1..a5, answer)  ``msrvtt_feature_fps30_512``
``msrvtt_train`` ``MSRVTT_data.json`` + ``MSRVTT_train.9k.csv``              ``msrvtt_feature_fps30_512``
``coin``         ``COIN.json``                                              ``coin_feature_fps30_512``
``htm_align``    ``htm_align.json``                                         ``how2-align`` (or next to the JSON)
===============  =========================================================  ==============================

(``features/`` inside ``--data`` is accepted for every task.)  Features: one
``<video_id>.npy`` per video, floating ``[T, 512]``, one row per second.  Every problem
is printed on its own line (``file: what is wrong``); the exit status is 2 when there is
any, 0 with a one-line summary otherwise.  Feature files that no annotation names are
counted in the summary (not a problem: the authors' folders hold every split).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from typing import Any, Iterable, Sequence

import numpy as np

from data_pipeline import fileio
from norton_jax.cli import UserError, run

FEATURE_DIM = 512
FEATURE_DIRS = {
    "youcook2": "youcook_validation_feature_fps30_512",
    "msrvtt": "msrvtt_feature_fps30_512",
    "msrvtt_qa": "msrvtt_feature_fps30_512",
    "msrvtt_train": "msrvtt_feature_fps30_512",
    "coin": "coin_feature_fps30_512",
    "htm_align": "how2-align",
}
TASKS = tuple(FEATURE_DIRS)

#: One video's needs: ``(video_id, [(start_s, end_s, where), ...])`` (times may be empty).
Needs = list[tuple[str, list[tuple[float, float, str]]]]


def _read_json(path: str, problems: list[str]) -> Any:
    if not fileio.exists(path):
        problems.append(f"{path}: missing file")
        return None
    try:
        return fileio.read_json(path)
    except ValueError as err:
        problems.append(f"{path}: not valid JSON ({err})")
        return None


def _read_csv(path: str, delimiter: str, required: Sequence[str], problems: list[str]) -> list[dict[str, str]]:
    if not fileio.exists(path):
        problems.append(f"{path}: missing file")
        return []
    with fileio.open(path, "r", encoding="utf-8") as fh:
        reader = csv.DictReader(io.StringIO(fh.read()), delimiter=delimiter)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            problems.append(f"{path}: missing column(s) {', '.join(missing)} (has {reader.fieldnames})")
            return []
        return list(reader)


def _segment(value: Any, where: str, problems: list[str], path: str) -> tuple[float, float] | None:
    try:
        start, end = (float(v) for v in value)
    except (TypeError, ValueError):
        problems.append(f"{path}: {where}: segment {value!r} is not [start, end] seconds")
        return None
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
        problems.append(f"{path}: {where}: segment [{start}, {end}] is not 0 <= start <= end")
        return None
    return start, end


def _database_segments(path: str, field: str, problems: list[str], *, subset: str | None = None) -> Needs:
    """The videos of a ``{"database": {vid: {"subset", field: [{"segment": [s, e]}, ...]}}}`` file
    (YouCookII, COIN) with their segment times; only ``subset`` videos when given."""
    db = (_read_json(path, problems) or {}).get("database", {})
    needs = []
    for vid, rec in sorted(db.items()):
        if subset is not None and rec.get("subset") != subset:
            continue
        times = []
        for k, ann in enumerate(rec.get(field, [])):
            where = f"database[{vid}].{field}[{k}]"
            seg = _segment(ann.get("segment"), where, problems, path)
            if seg:
                times.append((*seg, f"{path}: {where}"))
        needs.append((vid, times))
    return needs


def youcook2_needs(data: str, problems: list[str]) -> Needs:
    return _database_segments(fileio.join(data, "youcookii_annotations_trainval.json"), "annotations", problems,
                              subset="validation")


def msrvtt_needs(data: str, problems: list[str]) -> Needs:
    rows = _read_csv(fileio.join(data, "MSRVTT_JSFUSION_test.csv"), ",", ("key", "vid_key", "video_id", "sentence"),
                     problems)
    return [(r["video_id"], []) for r in rows]


def msrvtt_qa_needs(data: str, problems: list[str]) -> Needs:
    path = fileio.join(data, "MSR_MC_test.csv")
    rows = _read_csv(path, "\t", ("vid_key", "a1", "a2", "a3", "a4", "a5", "answer"), problems)
    for n, r in enumerate(rows, start=2):
        if r["answer"] not in {"0", "1", "2", "3", "4"}:
            problems.append(f"{path}: line {n}: answer {r['answer']!r} is not 0-4")
    return [(r["vid_key"].replace("msr", "video"), []) for r in rows]


def msrvtt_train_needs(data: str, problems: list[str]) -> Needs:
    rows = _read_csv(fileio.join(data, "MSRVTT_train.9k.csv"), ",", ("video_id",), problems)
    path = fileio.join(data, "MSRVTT_data.json")
    meta = _read_json(path, problems) or {}
    captioned = {s.get("video_id") for s in meta.get("sentences", [])}
    if meta:
        for r in rows:
            if r["video_id"] not in captioned:
                problems.append(f"{path}: no sentence of training video {r['video_id']}")
    return [(r["video_id"], []) for r in rows]


def coin_needs(data: str, problems: list[str]) -> Needs:
    return _database_segments(fileio.join(data, "COIN.json"), "annotation", problems)


def htm_align_needs(data: str, problems: list[str]) -> Needs:
    path = fileio.join(data, "htm_align.json")
    db = _read_json(path, problems) or {}
    needs = []
    for vid, lines in sorted(db.items()):
        times = []
        for k, line in enumerate(lines if isinstance(lines, list) else []):
            if not isinstance(line, (list, tuple)) or len(line) != 4:
                problems.append(f"{path}: [{vid}][{k}]: expected [aligned, start, end, text], got {line!r}")
                continue
            seg = _segment(line[1:3], f"[{vid}][{k}]", problems, path)
            if seg and line[0]:
                times.append((*seg, f"{path}: [{vid}][{k}]"))
        needs.append((vid, times))
    return needs


NEEDS = {"youcook2": youcook2_needs, "msrvtt": msrvtt_needs, "msrvtt_qa": msrvtt_qa_needs,
         "msrvtt_train": msrvtt_train_needs, "coin": coin_needs, "htm_align": htm_align_needs}


def feature_dir(task: str, data: str, features: str | None) -> str:
    """The folder of ``<video_id>.npy`` files ``task`` reads (``--features`` wins)."""
    if features:
        return features
    for name in (FEATURE_DIRS[task], "features"):
        if fileio.isdir(fileio.join(data, name)):
            return fileio.join(data, name)
    return data if task == "htm_align" else fileio.join(data, FEATURE_DIRS[task])


def check_features(needs: Needs, folder: str, problems: list[str], *, dim: int = FEATURE_DIM) -> int:
    """Appends one line per bad/missing feature file or caption past the features; videos checked."""
    if not fileio.isdir(folder):
        problems.append(f"{folder}: missing feature folder")
        return 0
    checked = 0
    for vid, times in needs:
        path = fileio.join(folder, f"{vid}.npy")
        if not fileio.exists(path):
            problems.append(f"{path}: missing feature file of video {vid}")
            continue
        try:
            with fileio.open(path, "rb") as fh:
                feat = np.load(io.BytesIO(fh.read()), allow_pickle=False)
        except (OSError, ValueError) as err:
            problems.append(f"{path}: not a readable .npy array ({err})")
            continue
        checked += 1
        if not np.issubdtype(feat.dtype, np.floating):
            problems.append(f"{path}: dtype {feat.dtype}, expected float16 or float32")
            continue
        if feat.ndim != 2 or feat.shape[1] != dim or feat.shape[0] == 0:
            problems.append(f"{path}: shape {tuple(feat.shape)}, expected [T > 0, {dim}] (one row per second)")
            continue
        if not np.isfinite(feat).all():
            problems.append(f"{path}: {int((~np.isfinite(feat)).sum())} non-finite values")
        seconds = feat.shape[0]
        for start, end, where in times:
            if start >= seconds:
                problems.append(f"{where}: caption starts at {start:g} s, features of {vid} have {seconds} s")
            elif math.floor(end) > seconds:
                problems.append(f"{where}: caption ends at {end:g} s, features of {vid} have {seconds} s")
    return checked


def check(task: str, data: str, features: str | None = None) -> tuple[list[str], str]:
    """``(problems, summary)`` of ``task``'s files in ``data``."""
    if task not in NEEDS:
        raise UserError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")
    if not fileio.isdir(data):
        raise UserError(f"--data {data}: no such folder")
    problems: list[str] = []
    needs = NEEDS[task](data, problems)
    folder = feature_dir(task, data, features)
    checked = check_features(needs, folder, problems)
    named = {f"{vid}.npy" for vid, _ in needs}
    extra = 0
    if fileio.isdir(folder):
        extra = sum(1 for f in fileio.listdir(folder) if f.endswith(".npy") and f not in named)
    captions = sum(len(t) for _, t in needs)
    summary = (f"{task}: {len(needs)} videos in the annotations, {checked} feature files read from {folder}, "
               f"{captions} timed captions; {extra} feature files no annotation names")
    return problems, summary


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_pipeline.check",
        description="Checks a user's downstream files before a long run: presence, shapes and dtypes of "
                    "the features, caption times against feature seconds, ids between annotation and "
                    "feature files. One line per problem; exit 2 if any.")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--data", required=True, help="folder with the task's annotation files")
    parser.add_argument("--features", default=None, help="folder of <video_id>.npy (default: see the table)")
    args = parser.parse_args(None if argv is None else list(argv))
    problems, summary = check(args.task, args.data, args.features)
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} problem(s); {summary}")
        return 2
    print(f"ok: {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main, prog="python -m data_pipeline.check"))
