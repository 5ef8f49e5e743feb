"""COIN action segmentation (spec §5.7) and MSR-VTT multiple-choice (§5.6) metrics."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from norton_jax.evaluate.metrics.retrieval import as_matrix
from norton_jax.evaluate.windows import sliding_windows, stitch_windows



def multiple_choice_accuracy(scores: np.ndarray, answers: Sequence[int]) -> dict[str, float]:
    """Multiple-choice accuracy (spec §5.6, ``QAPredictor`` + ``QAMetric``).

    ``scores [questions, options]`` (the reference: raw dot product of the pooled video with
    each option's pooled text); prediction = ``argmax`` (first on ties); ``answers`` 0-based.
    Returns ``{"acc"}``.
    """
    scores = as_matrix("scores", scores)
    answers = np.asarray(answers)
    if answers.shape != (scores.shape[0],):
        raise ValueError(f"answers must be [{scores.shape[0]}], got {answers.shape}")
    if np.any(answers < 0) or np.any(answers >= scores.shape[1]):
        raise ValueError(f"answers must be in [0, {scores.shape[1]})")
    return {"acc": float(np.mean(np.argmax(scores, axis=1) == answers))}





def coin_windows(num_frames: int, *, stride: int = 16, size: int = 32) -> list[tuple[int, int]]:
    """Sliding windows ``[(start, stop), ...]`` of the COIN aligner/predictor (spec §5.7).

    Starts ``0, stride, 2*stride, ...``; ``stop = start + min(T - start, size)``; stops after
    the window that reaches the end.  ``stride`` 16 for testing (8 for training).
    """
    return sliding_windows(num_frames, stride=stride, size=size)


def coin_video_targets(num_frames: int, segments: Sequence[tuple[float, float, int]]) -> np.ndarray:
    """Per-second targets ``[T]`` (spec §5.7): 0 = background, then each segment in order
    writes its label id on ``[floor(start), ceil(end))`` clipped to the video."""
    targets = np.zeros(num_frames, dtype=np.int64)
    for start, end, label in segments:
        lo = max(0, math.floor(start))
        hi = min(num_frames, math.ceil(end))
        if hi > lo:
            targets[lo:hi] = int(label)
    return targets


def merge_window_scores(
    num_frames: int,
    window_scores: Sequence[np.ndarray],
    *,
    stride: int = 16,
    size: int = 32,
) -> np.ndarray:
    """Average per-frame scores of overlapping windows -> ``[T, classes]`` (``_merge_windows``).

    ``window_scores[w] [L_w, classes]`` with ``L_w >= stop - start`` of window ``w`` of
    :func:`coin_windows` (padded frame slots beyond are ignored); every frame's scores are
    summed over the windows covering it and divided by their number.
    """
    windows = coin_windows(num_frames, stride=stride, size=size)
    if len(window_scores) != len(windows):
        raise ValueError(f"{num_frames} frames make {len(windows)} windows, got {len(window_scores)} score blocks")
    blocks = [np.asarray(b, dtype=np.float64) for b in window_scores]
    classes = blocks[0].shape[-1]
    for (start, stop), block in zip(windows, blocks):
        if block.ndim != 2 or block.shape[0] < stop - start or block.shape[1] != classes:
            raise ValueError(f"window at {start}s needs [>={stop - start}, {classes}] scores, got {block.shape}")
    total, count = stitch_windows(classes, num_frames, windows, [b.T for b in blocks])  # [classes, T]
    return (total / count).T


def coin_zero_shot_threshold(label_embeddings: np.ndarray) -> float:
    """``lbd`` = largest off-diagonal entry of ``Lab Lab^T`` (raw dot products; spec §5.7, T24)."""
    lab = as_matrix("label_embeddings", label_embeddings).astype(np.float64)
    if lab.shape[0] < 2:
        raise ValueError("need at least two labels for the zero-shot threshold")
    gram = lab @ lab.T
    np.fill_diagonal(gram, -np.inf)
    return float(gram.max())


def coin_zero_shot_predictions(frame_scores: np.ndarray, threshold: float) -> np.ndarray:
    """Zero-shot frame labels ``[T]``: ``argmax + 1`` where the best score ``> threshold``, else 0.

    ``frame_scores [T, labels]`` are merged (:func:`merge_window_scores`) raw dot products of
    the frame hidden states with the label embeddings (trap T24).
    """
    frame_scores = as_matrix("frame_scores", frame_scores)
    best = frame_scores.max(axis=1)
    return np.where(best > threshold, np.argmax(frame_scores, axis=1) + 1, 0).astype(np.int64)


def frame_accuracy(predictions: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> dict[str, float]:
    """Frame accuracy over all test frames concatenated (``COINActionSegmentationMetric``).

    ``predictions[v]``/``targets[v]`` are per-frame class ids of video ``v`` (or one
    concatenated array each).  Returns ``{"frame_acc", "num_frames"}``.
    """
    pred = np.concatenate([np.atleast_1d(np.asarray(p)) for p in predictions]) if len(predictions) else np.zeros(0)
    true = np.concatenate([np.atleast_1d(np.asarray(t)) for t in targets]) if len(targets) else np.zeros(0)
    if pred.shape != true.shape:
        raise ValueError(f"{pred.size} predicted frames but {true.size} target frames")
    if pred.size == 0:
        raise ValueError("no frames to score")
    return {"frame_acc": 1.0 - float(np.sum(pred != true)) / pred.size, "num_frames": int(pred.size)}
