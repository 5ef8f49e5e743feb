"""Subtitle files in and out: WebVTT (YouTube auto-captions too), SRT and Whisper JSON.

:func:`read_subtitles` reads a file into :class:`Cue` rows (start and end in seconds, one
line of text each) by its suffix:

``.vtt``
    WebVTT, parsed by ``webvtt-py`` in strict mode.  Cue tags (``<c>``, ``<i>``, ``<v Name>``)
    and the inline word timings of YouTube auto-captions (``<00:00:01.234>``) are removed,
    character references (``&amp;``, ``&gt;&gt;``) decoded, and the lines of a cue joined with
    one space.  **Rolling captions** (YouTube's auto-captions show each line twice: first as the
    bottom line of the cue that introduces it, then as the top line of the next cues, with a
    10 ms cue in between that repeats it alone) are reduced to what each cue adds: the lines at
    the top of a cue that repeat the last lines of the cue before it are dropped; a cue left with
    nothing new that starts where the last kept cue ends extends that cue's end; any other cue
    left empty is dropped.  A cue that only repeats the cue before it after a pause is kept (a
    phrase said twice).
``.srt``
    SubRip, parsed by ``srt``; formatting tags (``<i>``, ``<b>``, ``<u>``, ``<s>``, ``<font ...>``,
    ``{\\an8}``) removed; other text kept as written (SubRip has no character references).
``.json``
    Whisper output (``{"text": ..., "segments": [{"start", "end", "text", ...}]}``), or a plain
    list of ``{"start", "end", "text"}``; the text is kept as written (spaces collapsed).

The rolling clean-up runs on every format (a file without repeats passes unchanged).

:func:`write_subtitles` writes ``.vtt``, ``.srt``, ``.json`` (Whisper layout, so it reads
back) or ``.csv`` (``start,end,text``: the per-video caption file of ``data_pipeline.convert``
and ``norton_jax.align --captions``), atomically (a temporary name, then a rename).
:func:`caption_table` gives the columns ``(texts, starts, ends, where)`` that
``norton_jax.align.Captions`` takes (``Captions(*caption_table(cues))``).

A malformed file raises :class:`SubtitleError` (a :class:`norton_jax.cli.UserError`: one error
line from a command) naming the file and the line (JSON: the segment).  Times must be finite,
``start >= 0`` and ``end >= start``.  Cues whose text is empty after the clean-up are dropped
and counted (pass ``counts={}`` to :func:`read_subtitles` to get the counts).  Files are read
and written through :mod:`data_pipeline.fileio` (local paths and ``gs://`` alike).
"""
from __future__ import annotations

import csv
import datetime
import html
import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import numpy as np
import srt
import webvtt
from webvtt.errors import MalformedCaptionError, MalformedFileError

from data_pipeline import fileio
from norton_jax.cli import UserError

__all__ = ["Cue", "SubtitleError", "CaptionTable", "SUFFIXES", "read_subtitles", "write_subtitles",
           "caption_table", "clean_rolling_cues"]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
SUFFIXES = (".vtt", ".srt", ".json")  # what read_subtitles reads; write_subtitles also writes .csv
# a cue with nothing new extends the last kept cue when it starts within this many seconds of its end
CONTIGUOUS_S = 0.05

_TAG = re.compile(r"<[^>]*>")  # WebVTT: '<' in text is always written &lt;, so any <...> is a tag
_SRT_TAG = re.compile(r"</?(?:i|b|u|s|font)(?:\s[^>]*)?>", re.IGNORECASE)  # SubRip's formatting tags
_ASS_TAG = re.compile(r"\{\\[^}]*\}")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class SubtitleError(UserError):
    """A subtitle file that cannot be read; the message names the file and the line."""

    def __init__(self, path: PathLike, message: str, line: int | None = None):
        self.path, self.line = os.fspath(path), line
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"{self.path}: {where}{message}")


@dataclass(frozen=True)
class Cue:
    """One caption: ``text`` spoken over ``[start, end]`` seconds.

    ``line`` (not compared) is the line of the file the cue came from (its timing line), or the
    segment index for JSON; ``None`` for cues made in code.
    """

    start: float
    end: float
    text: str
    line: int | None = field(default=None, compare=False)


class CaptionTable(NamedTuple):
    """The caption columns of ``norton_jax.align.Captions`` (same names, same order)."""

    texts: list[str]
    starts: np.ndarray  # [M] float64 seconds
    ends: np.ndarray  # [M] float64 seconds
    where: list[str]  # [M] e.g. "talk.vtt line 12" or "talk.json segment 3", for error messages


def caption_table(cues: Sequence[Cue], source: PathLike | None = None) -> CaptionTable:
    """Cues as the columns ``align.Captions`` takes: ``Captions(*caption_table(cues, path))``."""
    name = os.path.basename(os.fspath(source)) + " " if source is not None else ""
    unit = "segment" if source is not None and os.fspath(source).lower().endswith(".json") else "line"
    where = [f"{name}{unit} {c.line}" if c.line is not None else f"{name}cue {i}" for i, c in enumerate(cues)]
    return CaptionTable([c.text for c in cues], np.asarray([c.start for c in cues], np.float64),
                        np.asarray([c.end for c in cues], np.float64), where)


# ---------------------------------------------------------------------------------------- reading

def _suffix(path: PathLike, allowed: Sequence[str]) -> str:
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in allowed:
        raise SubtitleError(path, f"unknown subtitle format {suffix or '(no suffix)'!r}; expected one of "
                                  f"{', '.join(allowed)}")
    return suffix


def _read_text(path: PathLike) -> str:
    if not fileio.isfile(path):
        raise SubtitleError(path, "subtitle file not found")
    data = fileio.read_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise SubtitleError(path, f"not UTF-8 text (byte {err.start})", line) from None
    return text


def _clean_text(text: str, *, tags: re.Pattern | None = _TAG, unescape: bool = True) -> list[str]:
    """The non-empty lines of a cue's text: ``tags`` removed, character references decoded
    (``unescape``), spaces collapsed."""
    out = []
    for raw in _LINE_BREAK.split(text):
        if tags is not None:
            raw = _ASS_TAG.sub("", tags.sub("", raw))
        line = " ".join((html.unescape(raw) if unescape else raw).split())
        if line:
            out.append(line)
    return out


def _check_times(path: PathLike, start: float, end: float, line: int | None, what: str = "") -> None:
    if not (math.isfinite(start) and math.isfinite(end)):
        raise SubtitleError(path, f"{what}times must be finite numbers, got start={start!r} end={end!r}", line)
    if start < 0:
        raise SubtitleError(path, f"{what}start {start:g} s is negative", line)
    if end < start:
        raise SubtitleError(path, f"{what}end {end:.3f} s is before start {start:.3f} s", line)


def _timing_lines(lines: Sequence[str]) -> list[int]:
    """1-based numbers of the lines holding ``-->`` (one per cue in a valid file)."""
    return [i + 1 for i, line in enumerate(lines) if "-->" in line]


_VTT_TIMING = re.compile(r"^\s*((?:\d+:)?\d{2}:\d{2}\.\d{3})\s*-->\s*((?:\d+:)?\d{2}:\d{2}\.\d{3})(?=\s|$)")


def _vtt_locate_error(lines: Sequence[str]) -> tuple[int, str] | None:
    """The first line that makes a WebVTT file malformed and why (``None``: none found).

    Blocks end at empty lines; a cue block is an optional identifier line, the timing line, then
    text; ``NOTE``, ``STYLE`` and ``REGION`` blocks are skipped."""
    if not lines or not lines[0].startswith("WEBVTT"):
        return 1, f"a WebVTT file starts with 'WEBVTT', found {lines[0][:40]!r}" if lines else "empty file"
    blocks: list[tuple[int, list[str]]] = []  # (0-based first line, lines)
    for i, line in enumerate(lines):
        if not line:
            continue
        if i > 0 and lines[i - 1] and blocks:
            blocks[-1][1].append(line)
        else:
            blocks.append((i, [line]))
    seen_cue = False
    for b, (first, block) in enumerate(blocks):
        timing = [j for j, text in enumerate(block) if "-->" in text]
        head = block[0].split()[0] if block[0].split() else ""
        for j in timing:
            match = _VTT_TIMING.match(block[j])
            if not match:
                return first + j + 1, (f"bad cue timing {block[j].strip()[:60]!r} "
                                       "(expected HH:MM:SS.mmm --> HH:MM:SS.mmm)")
            for stamp in match.groups():
                *_, minutes, seconds = stamp.split(":")
                if int(minutes) > 59 or float(seconds) >= 60:
                    return first + j + 1, f"bad timestamp {stamp!r} (minutes and seconds must be below 60)"
        if b == 0:
            if timing:
                return first + timing[0] + 1, "a cue timing line needs an empty line before it"
            continue
        if not timing:
            if head in ("STYLE", "REGION") and seen_cue:
                return first + 1, f"a {head} block must come before the first cue"
            if not "".join(block).strip() or head in ("NOTE", "STYLE", "REGION"):
                continue  # blank (whitespace-only) block, comment, style or region
            return first + 1, f"text {block[0].strip()[:40]!r} is not under a cue timing line"
        if timing[0] > 1 or len(timing) > 1:
            j = timing[0] if timing[0] > 1 else timing[1]
            return first + j + 1, "a cue timing line needs an empty line before it"
        seen_cue = True
    return None


def _read_vtt(path: PathLike, text: str) -> list[tuple]:
    lines = _LINE_BREAK.split(text)
    found = _vtt_locate_error(lines)
    if found is not None:
        raise SubtitleError(path, found[1], found[0])
    try:
        parsed = webvtt.from_string(text, strict=True)
    except (MalformedFileError, MalformedCaptionError) as err:
        raise SubtitleError(path, f"malformed WebVTT ({err})") from None
    where = _timing_lines(lines)
    if len(where) != len(parsed.captions):  # cannot happen in a file the scan accepted; be safe
        where = [None] * len(parsed.captions)
    cues = []
    for cap, line in zip(parsed.captions, where):
        start, end = cap.start_time.in_milliseconds() / 1000.0, cap.end_time.in_milliseconds() / 1000.0
        _check_times(path, start, end, line)
        cues.append((start, end, _clean_text(cap.raw_text), line))
    return cues


def _read_srt(path: PathLike, text: str) -> list[tuple]:
    try:
        subs = list(srt.parse(text))
    except srt.SRTParseError as err:
        bad = err.unmatched_content
        # the unmatched part starts with the blank lines that ended the last good block
        line = text.count("\n", 0, err.expected_start) + 1 + bad[:len(bad) - len(bad.lstrip())].count("\n")
        snippet = err.unmatched_content.strip().splitlines()[0][:60] if err.unmatched_content.strip() else ""
        raise SubtitleError(path, f"not an SRT block (index, 'HH:MM:SS,mmm --> HH:MM:SS,mmm', text): "
                                  f"{snippet!r}", line) from None
    except srt.TimestampParseError as err:
        raise SubtitleError(path, f"bad SRT timestamp ({err})") from None
    where = _timing_lines(_LINE_BREAK.split(text))
    if len(where) != len(subs):
        where = [None] * len(subs)
    cues = []
    for sub, line in zip(subs, where):
        start, end = sub.start.total_seconds(), sub.end.total_seconds()
        _check_times(path, start, end, line)
        cues.append((start, end, _clean_text(sub.content, tags=_SRT_TAG, unescape=False), line))
    return cues


def _read_json(path: PathLike, text: str) -> list[tuple]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SubtitleError(path, f"not valid JSON ({err.msg}, column {err.colno})", err.lineno) from None
    if isinstance(data, dict):
        if "segments" not in data:
            raise SubtitleError(path, f"a Whisper JSON file has a 'segments' list; found keys {sorted(data)[:8]}")
        data = data["segments"]
    if not isinstance(data, list):
        raise SubtitleError(path, "expected Whisper output ({'segments': [...]}) or a list of "
                                  "{'start', 'end', 'text'}")
    cues = []
    for i, seg in enumerate(data):
        what = f"segment {i}: "
        if not isinstance(seg, dict) or any(k not in seg for k in ("start", "end", "text")):
            raise SubtitleError(path, f"{what}needs 'start', 'end' and 'text', got {str(seg)[:60]}")
        try:
            start, end = float(seg["start"]), float(seg["end"])
        except (TypeError, ValueError):
            raise SubtitleError(path, f"{what}times must be numbers, got start={seg['start']!r} "
                                      f"end={seg['end']!r}") from None
        if isinstance(seg["start"], bool) or isinstance(seg["end"], bool) or not isinstance(seg["text"], str):
            raise SubtitleError(path, f"{what}start/end must be numbers and text a string")
        _check_times(path, start, end, None, what)
        cues.append((start, end, _clean_text(seg["text"], tags=None, unescape=False), i))
    return cues


def clean_rolling_cues(raw: Sequence[tuple[float, float, list[str], int | None]],
                       counts: dict | None = None) -> list[Cue]:
    """Reduces rolling captions to what each cue adds (the rule in the module docstring).

    ``raw`` holds ``(start, end, cleaned lines, line)`` in file order.  ``counts`` (if given)
    gets ``repeated`` (cues that only repeated the cue before and were merged or dropped) and
    ``empty`` (cues without text).
    """
    out: list[Cue] = []
    prev: list[str] = []
    repeated = empty = 0
    for start, end, lines, line in raw:
        if not lines:
            empty += 1
            continue
        # drop the longest run of top lines that repeats the bottom lines of the previous cue
        carried = 0
        for k in range(min(len(lines), len(prev)), 0, -1):
            if lines[:k] == prev[-k:]:
                carried = k
                break
        new = lines[carried:]
        prev = lines
        if not new:
            if out and start <= out[-1].end + CONTIGUOUS_S:
                last = out[-1]
                out[-1] = Cue(last.start, max(last.end, end), last.text, last.line)
                repeated += 1
                continue
            new = lines  # the same words again after a pause: said twice
        out.append(Cue(float(start), float(end), " ".join(new), line))
    if counts is not None:
        counts.update({"cues_in_file": len(raw), "repeated": repeated, "empty": empty, "cues": len(out)})
    return out


def read_subtitles(path: PathLike, *, counts: dict | None = None) -> list[Cue]:
    """The cues of a ``.vtt``, ``.srt`` or Whisper ``.json`` file (see the module docstring).

    Raises :class:`SubtitleError` naming the file and line for a malformed file, and for a file
    without any cue text.  ``counts`` (a dict, optional) receives ``cues_in_file``, ``cues``,
    ``repeated`` (rolling repeats merged or dropped) and ``empty`` (cues without text, dropped).
    """
    suffix = _suffix(path, SUFFIXES)
    text = _read_text(path)
    reader = {".vtt": _read_vtt, ".srt": _read_srt, ".json": _read_json}[suffix]
    raw = reader(path, text)
    stats: dict = {}
    cues = clean_rolling_cues(raw, stats)
    if counts is not None:
        counts.update(stats)
    if not cues:
        raise SubtitleError(path, f"no cue with text ({stats['cues_in_file']} cues in the file)")
    if stats["repeated"] or stats["empty"]:
        log.info("%s: %d cues from %d (%d rolling repeats merged, %d without text dropped)", os.fspath(path),
                 stats["cues"], stats["cues_in_file"], stats["repeated"], stats["empty"])
    return cues


# ---------------------------------------------------------------------------------------- writing

def _vtt_timestamp(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _vtt_content(cues: Sequence[Cue]) -> str:
    caps = [webvtt.Caption(_vtt_timestamp(c.start), _vtt_timestamp(c.end),
                           html.escape(_one_line(c.text), quote=False)) for c in cues]
    buf = io.StringIO()
    webvtt.WebVTT(captions=caps).write(buf)
    return buf.getvalue()


def _srt_content(cues: Sequence[Cue]) -> str:
    subs = [srt.Subtitle(i + 1, datetime.timedelta(milliseconds=round(c.start * 1000)),
                         datetime.timedelta(milliseconds=round(c.end * 1000)), _one_line(c.text))
            for i, c in enumerate(cues)]
    return srt.compose(subs, reindex=False)


def _json_obj(cues: Sequence[Cue]) -> dict[str, Any]:
    segments = [{"id": i, "start": round(float(c.start), 3), "end": round(float(c.end), 3),
                 "text": _one_line(c.text)} for i, c in enumerate(cues)]
    return {"text": " ".join(s["text"] for s in segments), "segments": segments}


def _csv_content(cues: Sequence[Cue]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("start", "end", "text"))
    for c in cues:
        writer.writerow((f"{float(c.start):.3f}", f"{float(c.end):.3f}", _one_line(c.text)))
    return buf.getvalue()


def write_subtitles(path: PathLike, cues: Sequence[Cue]) -> None:
    """Writes ``cues`` as ``.vtt``, ``.srt``, ``.json`` (Whisper layout) or ``.csv``
    (``start,end,text``) by the suffix of ``path``, atomically.  Times are written to the
    millisecond; each text on one line."""
    suffix = _suffix(path, SUFFIXES + (".csv",))
    for i, c in enumerate(cues):
        _check_times(path, float(c.start), float(c.end), None, f"cue {i} to write: ")
        if not _one_line(c.text):
            raise SubtitleError(path, f"cue {i} to write has no text")
    if suffix == ".json":
        fileio.atomic_write_json(path, _json_obj(cues), indent=1)
        return
    content = {".vtt": _vtt_content, ".srt": _srt_content, ".csv": _csv_content}[suffix](cues)
    with fileio.atomic_output(os.fspath(path), "w", encoding="utf-8", newline="") as fh:
        fh.write(content)
