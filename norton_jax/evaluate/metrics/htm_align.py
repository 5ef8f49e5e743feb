"""HTM-Align metrics (spec §5.8): the reference's windows, the stitched caption-by-second
similarity, recall, ROC-AUC and the recall of point predictions (:func:`alignment_recall`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from norton_jax.evaluate.windows import stitch_windows, window_grid


UNCOVERED = -6e4  # value given to never-covered cells (trap T25)


@dataclass(frozen=True)
class AlignWindow:
    """One sliding window of the HTM-Align protocol and its active captions."""

    index: int  # position among all window starts (the reference's ``idx``)
    start: int  # first frame (second)
    stop: int  # one past the last frame: min(T, start + seq_len)
    captions: np.ndarray  # ascending indices of the active captions


def htm_align_windows(
    num_frames: int,
    starts: Sequence[float],
    ends: Sequence[float],
    aligned: Sequence[bool],
    *,
    seq_len: int = 32,
    edge_windows: int = 4,
    active: str = "reference",
) -> list[AlignWindow]:
    """The windows of ``eval_zeroshot_align.py`` (spec §5.8) and their active captions.

    ``active="reference"`` (default) chooses the captions as below; ``active="dense"``
    keeps every window with every caption active, so each caption is scored on every
    second.  The reference's choice depends on where the *non*-alignable captions are: a
    video without any gets no window at all (every cell uncovered, recall 0), and alignable
    captions far from non-alignable ones are never scored, so its recall also measures how
    densely a corpus interleaves unalignable lines (see ``docs/evaluation.md``).

    Window starts ``arange(0, T - seq_len // 2, seq_len // 4)`` (0, 8, 16, ... for 32 s);
    window = frames ``[start, min(T, start + seq_len))``.  Active captions, chosen without
    the annotated times: the *non*-alignable captions whose mid-time lies in
    ``[start - seq_len, start + 2 * seq_len]``; none -> the window is skipped; else every
    caption between the smallest and largest such index (inclusive).  The first
    ``edge_windows`` windows start the range at caption 0; otherwise (``elif``, as the
    reference) the last ``edge_windows`` windows extend it to the last caption.
    """
    starts_a = np.asarray(starts, dtype=np.float64)
    ends_a = np.asarray(ends, dtype=np.float64)
    aligned_a = np.asarray(aligned).astype(bool)
    if not (starts_a.shape == ends_a.shape == aligned_a.shape) or starts_a.ndim != 1:
        raise ValueError("starts, ends and aligned must be 1-D and of equal length")
    if active not in ("reference", "dense"):
        raise ValueError(f"active must be 'reference' or 'dense', got {active!r}")
    mid = (starts_a + ends_a) / 2
    candidates = np.flatnonzero(~aligned_a)
    grid = window_grid(num_frames, stride=seq_len // 4, size=seq_len)
    if active == "dense":
        every = np.arange(len(starts_a))
        return [AlignWindow(idx, st, stop, every) for idx, (st, stop) in enumerate(grid)]
    windows = []
    for idx, (st, stop) in enumerate(grid):
        near = candidates[(st - seq_len <= mid[candidates]) & (mid[candidates] <= st + 2 * seq_len)]
        if len(near) == 0:
            continue
        left, right = int(near.min()), int(near.max())
        if idx <= edge_windows - 1:
            left = 0
        elif idx >= len(grid) - edge_windows:
            right = len(starts_a) - 1
        windows.append(AlignWindow(idx, st, stop, np.arange(left, right + 1)))
    return windows


def htm_align_stitch(
    num_frames: int,
    num_captions: int,
    windows: Sequence[AlignWindow],
    window_sims: Sequence[np.ndarray],
) -> np.ndarray:
    """Caption-by-second similarity ``S [captions, T]`` of one video (spec §5.8).

    ``window_sims[w] [len(windows[w].captions), L]`` (``L >= stop - start``; the reference
    passes all 32 frame slots) are cosine similarities of the active captions to the
    window's frames; the first ``stop - start`` columns are summed into ``S`` and divided by
    the coverage count (``max(count, 1e-5)``); cells that end up exactly 0 (never covered)
    become ``-6e4``.
    """
    if len(windows) != len(window_sims):
        raise ValueError(f"{len(windows)} windows but {len(window_sims)} similarity blocks")
    total, count = stitch_windows(num_captions, num_frames, [(w.start, w.stop) for w in windows], window_sims,
                                  [w.captions for w in windows])
    sim = total / np.maximum(count, 1e-5)
    return np.where(sim == 0, UNCOVERED, sim)


def htm_align_video(
    num_frames: int,
    starts: Sequence[float],
    ends: Sequence[float],
    aligned: Sequence[bool],
    window_similarity: Callable[[int, int, np.ndarray], np.ndarray],
    *,
    seq_len: int = 32,
) -> np.ndarray:
    """:func:`htm_align_windows` + a model callback + :func:`htm_align_stitch` -> ``S [captions, T]``.

    ``window_similarity(start, stop, caption_indices)`` returns the ``[len(captions), >= stop-start]``
    cosine similarities of those captions to the frames ``[start, stop)``.
    """
    windows = htm_align_windows(num_frames, starts, ends, aligned, seq_len=seq_len)
    sims = [window_similarity(w.start, w.stop, w.captions) for w in windows]
    return htm_align_stitch(num_frames, len(starts), windows, sims)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of binary ``labels`` ranked by ``scores`` (ties count half).

    Equal to ``sklearn.metrics.roc_auc_score`` for binary labels (Mann-Whitney U with
    average ranks).  ``nan`` when only one class is present (sklearn raises instead).
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # average 1-based rank of each run of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    run_starts = np.concatenate([[0], boundaries])
    run_ends = np.concatenate([boundaries, [scores.size]])
    run_rank = (run_starts + run_ends + 1) / 2.0
    ranks[order] = np.repeat(run_rank, run_ends - run_starts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def htm_align_metrics(
    sims: Sequence[np.ndarray],
    starts: Sequence[Sequence[float]],
    ends: Sequence[Sequence[float]],
    aligned: Sequence[Sequence[bool]],
) -> dict[str, float]:
    """HTM-Align recall and ROC-AUC over videos (spec §5.8, trap T25).

    ``sims[v] [captions, T]`` from :func:`htm_align_stitch`.  An alignable caption is a hit
    when ``floor(start) <= argmax_t S[c, t] <= ceil(end)`` (annotated times, inclusive);
    ``recall`` is the mean over all alignable captions of all videos.  ``auc`` is
    :func:`roc_auc` of the alignable flags against ``max_t S[c, t]`` over all captions.
    Returns ``{"recall", "auc", "num_alignable", "num_captions"}``.
    """
    if not (len(sims) == len(starts) == len(ends) == len(aligned)):
        raise ValueError("sims, starts, ends and aligned need one entry per video")
    hits, labels, best = [], [], []
    for v, s in enumerate(sims):
        s = np.asarray(s)
        flags = np.asarray(aligned[v]).astype(bool)
        if s.ndim != 2 or s.shape[0] != len(flags):
            raise ValueError(f"video {v}: sims {s.shape} does not match {len(flags)} captions")
        argmax = np.argmax(s, axis=1)
        for c in np.flatnonzero(flags):
            hits.append(math.floor(starts[v][c]) <= argmax[c] <= math.ceil(ends[v][c]))
        labels.append(flags)
        best.append(s.max(axis=1))
    labels_a = np.concatenate(labels) if labels else np.zeros(0, bool)
    return {
        "recall": float(np.mean(hits)) if hits else float("nan"),
        "auc": roc_auc(labels_a, np.concatenate(best)) if best else float("nan"),
        "num_alignable": len(hits),
        "num_captions": int(labels_a.size),
    }



def alignment_recall(points: Sequence[np.ndarray], gt_starts: Sequence[np.ndarray], gt_ends: Sequence[np.ndarray],
                     alignable: Sequence[np.ndarray]) -> dict[str, float]:
    """HTM-Align hit rule (spec §5.8) for point predictions: an alignable caption is a hit
    when ``floor(gt_start) <= point <= ceil(gt_end)``; recall = mean over all alignable
    captions of all videos.  Returns ``{"recall", "num_alignable"}``."""
    hits = []
    for pts, gs, ge, flags in zip(points, gt_starts, gt_ends, alignable):
        flags = np.asarray(flags).astype(bool)
        pts, gs, ge = (np.asarray(x, np.float64) for x in (pts, gs, ge))
        ok = (np.floor(gs) <= pts) & (pts <= np.ceil(ge))
        hits.extend(ok[flags].tolist())
    return {"recall": float(np.mean(hits)) if hits else float("nan"), "num_alignable": len(hits)}
