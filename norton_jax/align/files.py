"""Files of the alignment tool: captions and features in, the aligned transcript out.

In: :func:`read_captions` (``start,end,text`` CSV, JSON, and through
:mod:`norton_jax.subtitles` WebVTT / SRT / Whisper JSON), :func:`read_features` (``.npy``).
Out: :func:`write_alignment` by the suffix of the output path:

* ``.json``: the alignment report (settings, bucket value, every caption with its original
  and re-aligned span, alignability and rejection), which is also a Whisper-layout subtitle
  file: its ``"segments"`` hold the re-timed transcript (:func:`aligned_cues`), so
  ``norton_jax.subtitles.read_subtitles`` reads it back;
* ``.vtt``, ``.srt``, ``.csv``: the re-timed transcript (:func:`aligned_cues`) written by
  :func:`norton_jax.subtitles.write_subtitles`.

All reads and writes go through :mod:`data_pipeline.fileio` (local paths and ``gs://``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any

import numpy as np

from data_pipeline import fileio
from norton_jax.align.algorithm import Captions, VideoAlignment
from norton_jax.evaluate.loaders import check_finite_features
from norton_jax.subtitles import Cue, read_subtitles, write_subtitles

PathLike = str | os.PathLike

__all__ = ["OUTPUT_SUFFIXES", "REJECTED_MARK", "aligned_cues", "read_captions", "read_features",
           "write_alignment"]

OUTPUT_SUFFIXES = (".json", ".vtt", ".srt", ".csv")
SUBTITLE_SUFFIXES = (".vtt", ".srt")
REJECTED_MARK = "[rejected] "  # text prefix of a caption the bucket rejected, kept with --keep-rejected


def _suffix(path: PathLike) -> str:
    return os.path.splitext(os.fspath(path))[1].lower()


def _captions_from_subtitles(path: PathLike) -> Captions:
    cues = read_subtitles(path)
    unit = "segment" if _suffix(path) == ".json" else "line"
    where = [f"{unit} {c.line}" if c.line is not None else f"cue {i}" for i, c in enumerate(cues)]
    return Captions([c.text for c in cues], [c.start for c in cues], [c.end for c in cues], where)


def _number(path: PathLike, value: Any, where: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{os.fspath(path)}: {where}: expected a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{os.fspath(path)}: {where}: expected a finite number, got {value!r}")
    return x


def _json_rows(path: PathLike, data: Any) -> list[dict]:
    if isinstance(data, dict):
        missing = [k for k in ("start", "end", "text") if k not in data]
        if missing:
            raise ValueError(f"{os.fspath(path)}: missing field(s) {missing}")
        if not (len(data["start"]) == len(data["end"]) == len(data["text"])):
            raise ValueError(f"{os.fspath(path)}: start, end and text must have the same length")
        return [{"start": s, "end": e, "text": t} for s, e, t in zip(data["start"], data["end"], data["text"])]
    if isinstance(data, list):
        return data
    raise ValueError(f"{os.fspath(path)}: expected a list of captions, a dict of lists or Whisper output")


def read_captions(path: PathLike) -> Captions:
    """One video's captions from a file, by its suffix.

    * ``.vtt``, ``.srt``: :func:`norton_jax.subtitles.read_subtitles` (YouTube rolling lines
      cleaned); errors name the file and line.
    * ``.json``: Whisper output (``{"segments": [...]}``, read by ``read_subtitles``), a list of
      ``{start, end, text}`` or a dict of three lists; errors name the caption index.
    * anything else: ``start,end,text`` CSV (the header is line 1); errors name the CSV line.

    A UTF-8 byte-order mark is accepted.
    """
    name = os.fspath(path)
    suffix = _suffix(path)
    if not fileio.exists(path):
        raise FileNotFoundError(f"captions file not found: {name}")
    if suffix in SUBTITLE_SUFFIXES:
        return _captions_from_subtitles(path)
    texts, starts, ends, where = [], [], [], []
    try:
        text = fileio.read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{name}: not UTF-8 text ({err})") from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{name}: not valid JSON ({err})") from None
        if isinstance(data, dict) and "segments" in data:
            return _captions_from_subtitles(path)
        for i, row in enumerate(_json_rows(path, data)):
            if not isinstance(row, dict) or any(k not in row for k in ("start", "end", "text")):
                raise ValueError(f"{name}: caption {i}: needs 'start', 'end' and 'text'")
            starts.append(_number(path, row["start"], f"caption {i} start"))
            ends.append(_number(path, row["end"], f"caption {i} end"))
            texts.append(str(row["text"]))
            where.append(f"caption {i}")
    else:
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            missing = [k for k in ("start", "end", "text") if k not in header]
            if missing:
                raise ValueError(f"{name}: missing column(s) {missing}; header is {header}")
            for row in reader:
                line = reader.line_num  # physical line of the row's end (quoted newlines count)
                if None in row or any(row.get(k) is None for k in ("start", "end", "text")):
                    raise ValueError(f"{name}: line {line}: expected {len(header)} fields, got a malformed row")
                starts.append(_number(path, row["start"], f"line {line} start"))
                ends.append(_number(path, row["end"], f"line {line} end"))
                texts.append(row["text"] or "")
                where.append(f"line {line}")
        except csv.Error as err:
            raise ValueError(f"{name}: not a readable CSV file ({err})") from None
    if not texts:
        raise ValueError(f"{name}: no captions")
    try:
        return Captions(texts, np.asarray(starts), np.asarray(ends), where)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def read_features(path: PathLike, feature_dim: int | None = None) -> np.ndarray:
    """One video's features ``[T, D]`` from a ``.npy`` file; errors name the file (missing,
    unreadable, wrong shape, NaN/inf values with the first bad frame)."""
    name = os.fspath(path)
    if not fileio.exists(path):
        raise FileNotFoundError(f"features file not found: {name}")
    try:
        with fileio.open(path, "rb") as fh:
            features = np.load(fh, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{name}: not a readable .npy array ({err})") from None
    want = f"[T, {feature_dim}]" if feature_dim else "[T, D]"
    if (not isinstance(features, np.ndarray) or features.ndim != 2 or features.shape[0] == 0
            or (feature_dim and features.shape[1] != feature_dim) or not np.issubdtype(features.dtype, np.number)):
        raise ValueError(f"{name}: expected {want} numeric features, got {features.dtype} {features.shape}")
    check_finite_features(features, path, os.path.splitext(os.path.basename(name))[0])
    return features


def _transcript(result: VideoAlignment, keep_rejected: bool) -> list[tuple[float, float, int, str]]:
    """``(start, end, caption index, text)`` of the transcript rows, sorted (:func:`aligned_cues`)."""
    caps = result.captions
    rows = []
    for i, text in enumerate(caps.texts):
        if not result.rejected[i]:
            rows.append((float(result.aligned_starts[i]), float(result.aligned_ends[i]), i, text))
        elif keep_rejected:
            rows.append((float(caps.starts[i]), float(caps.ends[i]), i, REJECTED_MARK + text))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return rows


def aligned_cues(result: VideoAlignment, *, keep_rejected: bool = False) -> list[Cue]:
    """The re-timed transcript: each caption the bucket kept at its re-aligned span; the
    rejected ones dropped, or (``keep_rejected``) kept at their original span with the text
    prefixed by :data:`REJECTED_MARK`.  Sorted by start (then end, then caption order)."""
    return [Cue(start, end, text) for start, end, _, text in _transcript(result, keep_rejected)]


def _segments(result: VideoAlignment, keep_rejected: bool) -> list[dict[str, Any]]:
    """Whisper-layout segments of :func:`aligned_cues`, with the caption index and its scores."""
    return [{"id": k, "start": round(start, 3), "end": round(end, 3), "text": text, "caption": i,
             "alignability": round(float(result.alignability[i]), 6), "rejected": bool(result.rejected[i])}
            for k, (start, end, i, text) in enumerate(_transcript(result, keep_rejected))]


def write_alignment(path: PathLike, result: VideoAlignment, *, keep_rejected: bool = False,
                    extra: dict[str, Any] | None = None) -> int:
    """Writes ``result`` by the suffix of ``path`` (module docstring); ``extra`` adds top-level
    fields to the JSON report.  Returns the number of transcript cues written."""
    suffix = _suffix(path)
    if suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"{os.fspath(path)}: unknown output format {suffix or '(no suffix)'!r}; "
                         f"expected one of {', '.join(OUTPUT_SUFFIXES)}")
    folder = fileio.dirname(os.fspath(path))
    if folder:
        fileio.makedirs(folder)
    if suffix == ".json":
        payload = result.to_json()
        payload.update(extra or {})
        segments = _segments(result, keep_rejected)
        payload["kept_rejected"] = keep_rejected
        payload["text"] = " ".join(s["text"] for s in segments)
        payload["segments"] = segments
        fileio.atomic_write_json(path, payload, indent=1, nan_as_null=True)
        return len(segments)
    cues = aligned_cues(result, keep_rejected=keep_rejected)
    if not cues:
        raise ValueError(f"{os.fspath(path)}: every caption was rejected by the bucket, nothing to write; "
                         "pass --keep-rejected to keep them marked, or write the .json report")
    write_subtitles(path, cues)
    return len(cues)
