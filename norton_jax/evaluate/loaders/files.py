"""Loaders for the official evaluation files (spec §5.9): features, reports and field parsing.

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

This module holds what every loader shares (:class:`FeatureDir`, :class:`MissingFeatures`,
the field parsers); the loaders are in :mod:`.youcook` and :mod:`.benchmarks`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from data_pipeline import fileio

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


def as_feature_dir(features: FeatureDir | PathLike | None) -> FeatureDir | None:
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


def read_json_file(path: PathLike) -> Any:
    """The JSON value in ``path`` (local or a :mod:`data_pipeline.fileio` URL); EvalDataError naming
    the file when it is missing or not valid JSON."""
    try:
        with fileio.open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise EvalDataError(path, "file not found") from None
    except json.JSONDecodeError as err:
        raise EvalDataError(path, f"not valid JSON ({err})") from None


def read_csv_rows(path: PathLike, *, delimiter: str, required: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a CSV file (header stripped) with the ``required`` columns checked present;
    errors name the file and the line."""
    try:
        with fileio.open(path, "r", encoding="utf-8", newline="") as f:
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


def parse_number(path: PathLike, where: str, value: Any, *, integer: bool = False) -> float:
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


def parse_segment(path: PathLike, where: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise EvalDataError(path, f"{where}: expected [start, end], got {value!r}")
    start = parse_number(path, f"{where}[0]", value[0])
    end = parse_number(path, f"{where}[1]", value[1])
    if end < start:
        raise EvalDataError(path, f"{where}: end {end} < start {start}")
    return start, end


def parse_string(path: PathLike, where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise EvalDataError(path, f"{where}: expected a string, got {type(value).__name__}")
    return value


def parse_mapping(path: PathLike, where: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise EvalDataError(path, f"{where}: expected an object, got {type(value).__name__}")
    return value
