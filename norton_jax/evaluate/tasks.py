"""The downstream tasks (spec §5) behind one registry: name -> :class:`Task`.

A task knows how to find its data (:mod:`norton_jax.evaluate.sources`), how to score an
:class:`~norton_jax.inference.Encoder` on it (the functions ``eval_*`` below) and how to print
its metrics.  The evaluation CLI, :func:`norton_jax.evaluate.run.evaluate_checkpoint`, the
fine-tuning evaluation (``norton_jax.finetune.evaluate``) and the report
(:func:`norton_jax.evaluate.report.format_table`) all go through :data:`TASKS`.

=========================  ==================================================  ========
task                       scores                                              spec
=========================  ==================================================  ========
``youcook2_clip``          R@1/5/10, MR of ``pooled_text @ pooled_video^T``    5.1
``youcook2_paragraph``     Cap. Avg. / DTW / OTAM R@1/5/10 (background off)    5.2, 5.4
``youcook2_paragraph_bg``  Cap. Avg. / DTW / OTAM R@1/5/10 (16 s windows)      5.3, 5.4
``msrvtt``                 R@1/5/10, MR (1k-A)                                 5.5
``msrvtt_qa``              multiple-choice accuracy (first 16 s)               5.6
``coin``                   zero-shot frame accuracy                            5.7
``htm_align``              alignment recall, ROC-AUC                           5.8
=========================  ==================================================  ========
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from norton_jax.evaluate import loaders as L
from norton_jax.evaluate import metrics as M
from norton_jax.evaluate.caption_similarity import htm_align_similarity
from norton_jax.evaluate.sources import (
    AlignSet,
    ClipSet,
    check_nonempty,
    coin_data,
    htm_align_set,
    msrvtt_data,
    youcook_clip_set,
)
from norton_jax.inference import QA_LAYOUT, RETRIEVAL_LAYOUT, Encoder

PathLike = str | os.PathLike
METHOD_NAMES = {"cap_avg": "Cap. Avg.", "dtw": "DTW", "otam": "OTAM"}


# ---------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------


def clip_similarity_matrix(encoder: Encoder, clip_set: ClipSet) -> np.ndarray:
    """``sim [captions, clips]`` = raw dot products of pooled embeddings (spec §5.1, T20).

    Clip = ``feat[start:end]``, first 32 s (``DSAligner``); caption <= 61 words.
    """
    cache: dict[str, np.ndarray] = {}

    def feats(vid: str) -> np.ndarray:
        if vid not in cache:
            cache.clear()  # clips of a video are contiguous: keep one video in memory
            cache[vid] = clip_set.load(vid)
        return cache[vid]

    segments = [np.asarray(feats(c.video_id)[c.start : c.end][: RETRIEVAL_LAYOUT.max_video_len], np.float32)
                for c in clip_set.clips]
    text = encoder.texts([c.text for c in clip_set.clips])
    video, _ = encoder.segments(segments, RETRIEVAL_LAYOUT.max_video_len)
    return text @ video.T


def eval_youcook_clip(encoder: Encoder, clip_set: ClipSet) -> dict[str, Any]:
    """Spec §5.1: R@1/5/10 and MR of every caption against every clip."""
    check_nonempty(len(clip_set.clips), "YouCookII clips", clip_set.missing)
    sim = clip_similarity_matrix(encoder, clip_set)
    return {
        "metrics": M.retrieval_metrics(sim),
        "counts": {"videos": len(clip_set.video_ids), "clips": len(clip_set.clips)},
    }


def eval_youcook_paragraph(encoder: Encoder, clip_set: ClipSet, *, otam_variant: str = "reference") -> dict[str, Any]:
    """Spec §5.2: video-paragraph retrieval with the background removed (Cap. Avg., DTW, OTAM)."""
    check_nonempty(len(clip_set.clips), "YouCookII clips", clip_set.missing)
    sim = clip_similarity_matrix(encoder, clip_set)
    ids = [c.video_id for c in clip_set.clips]
    metrics = {
        method: M.paragraph_retrieval(sim, ids, ids, method=method, background=False, otam_variant=otam_variant)
        for method in M.PARAGRAPH_METHODS
    }
    return {"metrics": metrics, "counts": {"videos": len(clip_set.video_ids), "clips": len(clip_set.clips)}}


def eval_youcook_paragraph_bg(encoder: Encoder, clip_set: ClipSet, *, otam_variant: str = "reference") -> dict[str, Any]:
    """Spec §5.3 (trap T23): whole videos in 16 s windows padded to 32 frames with [CLS]
    masked; captions = every annotated sentence of the video; Cap. Avg. / DTW / OTAM."""
    check_nonempty(len(clip_set.clips), "YouCookII clips", clip_set.missing)
    videos = sorted(clip_set.video_ids)
    segments, window_ids = [], []
    for vid in videos:
        feat = clip_set.load(vid)
        for a, b in L.youcook_background_windows(int(feat.shape[0])):
            segments.append(np.asarray(feat[a:b], np.float32))
            window_ids.append(vid)
    by_video: dict[str, list[L.YouCookClip]] = {}
    for c in clip_set.clips:
        by_video.setdefault(c.video_id, []).append(c)
    captions = [c for vid in videos for c in by_video[vid]]
    text = encoder.texts([c.text for c in captions])
    video, _ = encoder.segments(segments, RETRIEVAL_LAYOUT.max_video_len, mask_cls=True)
    sim = text @ video.T  # [captions, windows]
    caption_ids = [c.video_id for c in captions]
    metrics = {
        method: M.paragraph_retrieval(sim, caption_ids, window_ids, method=method, background=True,
                                      otam_variant=otam_variant)
        for method in M.PARAGRAPH_METHODS
    }
    return {
        "metrics": metrics,
        "counts": {"videos": len(videos), "captions": len(captions), "windows": len(segments)},
    }


def eval_msrvtt(encoder: Encoder, data: L.MSRVTTRetrieval) -> dict[str, Any]:
    """Spec §5.5: text-to-video retrieval, caption i <-> video i, first 32 s."""
    check_nonempty(len(data.video_ids), "MSR-VTT pairs", data.missing)
    segments = [np.asarray(data.features.load(v)[: RETRIEVAL_LAYOUT.max_video_len], np.float32) for v in data.video_ids]
    text = encoder.texts(data.sentences)
    video, _ = encoder.segments(segments, RETRIEVAL_LAYOUT.max_video_len)
    return {"metrics": M.retrieval_metrics(text @ video.T), "counts": {"pairs": len(data.video_ids)}}


def eval_msrvtt_qa(encoder: Encoder, data: L.MSRVTTMultipleChoice) -> dict[str, Any]:
    """Spec §5.6: ``argmax_k <pooled_video, pooled_text(option k)>``; video = first 16 s,
    options <= 77 words (max_video_len 16, max_len 96)."""
    check_nonempty(len(data.video_ids), "MSR-VTT questions", data.missing)
    segments = [np.asarray(data.features.load(v)[: QA_LAYOUT.max_video_len], np.float32) for v in data.video_ids]
    video, _ = encoder.segments(segments, QA_LAYOUT.max_video_len)  # [Q, D]
    k = len(data.options[0])
    text = encoder.texts([o for opts in data.options for o in opts], QA_LAYOUT).reshape(len(data.options), k, -1)
    scores = np.einsum("qd,qkd->qk", video, text)  # [Q, options]
    return {"metrics": M.multiple_choice_accuracy(scores, data.answers), "counts": {"questions": len(data.video_ids)}}


def eval_coin(encoder: Encoder, data: L.COINData, *, stride: int = 16, size: int = 32) -> dict[str, Any]:
    """Spec §5.7, zero-shot (trap T24): label embeddings = pooled text of the label names;
    ``lbd`` = largest off-diagonal label-label dot product; frame scores = frame outputs of
    16 s-stride windows of 32 frames ([CLS] masked) @ labels, averaged over windows;
    prediction ``argmax + 1`` where the best score > ``lbd``, else background."""
    check_nonempty(len(data.videos), "COIN videos", data.missing)
    labels = encoder.texts(data.label_names)  # [L, D]
    threshold = M.coin_zero_shot_threshold(labels)
    preds, targets = [], []
    for video in data.videos:
        feat = data.features.load(video.video_id)
        t = int(feat.shape[0])
        windows = M.coin_windows(t, stride=stride, size=size)
        _, frames = encoder.segments([np.asarray(feat[a:b], np.float32) for a, b in windows], size,
                                     mask_cls=True, frames=True)  # [W, 32, D]
        scores = M.merge_window_scores(t, list(frames @ labels.T), stride=stride, size=size)  # [T, L]
        preds.append(M.coin_zero_shot_predictions(scores, threshold))
        targets.append(M.coin_video_targets(t, video.segments))
    metrics = M.frame_accuracy(preds, targets)
    metrics["threshold"] = threshold
    return {"metrics": metrics, "counts": {"videos": len(data.videos), "labels": len(data.label_names)}}


def eval_htm_align(encoder: Encoder, align_set: AlignSet) -> dict[str, Any]:
    """Spec §5.8: recall of ``argmax_t S[c, t]`` inside the annotated segment, ROC-AUC of the
    alignable flags; on youcook2-mnc also the recall of the original (noisy) timestamps.

    ``recall``/``auc`` follow the reference's window choice; ``dense_recall``/``dense_auc``
    score every caption on every second (``active="dense"``), which does not depend on
    where the unalignable captions are.
    """
    check_nonempty(len(align_set.videos), "HTM-Align videos", align_set.missing)
    modes = (("reference", ""), ("dense", "dense_"))
    sims: dict[str, list[np.ndarray]] = {active: [] for active, _ in modes}
    for v in align_set.videos:
        feat = align_set.load(v.video_id)  # read once, scored by both window choices
        for active, _ in modes:
            sims[active].append(htm_align_similarity(encoder, feat, v.texts, v.starts, v.ends, v.aligned,
                                                     active=active))
    starts = [v.starts for v in align_set.videos]
    ends = [v.ends for v in align_set.videos]
    flags = [v.aligned for v in align_set.videos]
    metrics: dict[str, Any] = {}
    for active, prefix in modes:
        found = M.htm_align_metrics(sims[active], starts, ends, flags)
        if prefix:
            found = {f"{prefix}{k}": found[k] for k in ("recall", "auc")}
        metrics.update(found)
    if align_set.records is not None:
        metrics["timestamp_recall"] = store_timestamp_recall(align_set.records)
    return {"metrics": metrics, "counts": {"videos": len(align_set.videos), "captions": metrics["num_captions"]}}


def store_timestamp_recall(records: Sequence) -> float:
    """Recall of the original caption times (midpoint) against the truth, youcook2-mnc."""
    points, gs, ge, flags = [], [], [], []
    for r in records:
        points.append((np.asarray(r.starts) + np.asarray(r.ends)) / 2)
        gs.append(r.gt_start)
        ge.append(r.gt_end)
        flags.append(r.gt_alignable)
    return M.alignment_recall(points, gs, ge, flags)["recall"]


# ---------------------------------------------------------------------------------------
# Table lines
# ---------------------------------------------------------------------------------------


def pct(x: Any) -> str:
    """A fraction as a percentage with one decimal (``-`` for None / NaN)."""
    return "   -" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:5.1f}"


def _paragraph_lines(m: Mapping[str, Any]) -> list[str]:
    lines = [f"  {'method':<10} {'R@1':>5} {'R@5':>5} {'R@10':>5}"]
    for method in M.PARAGRAPH_METHODS:
        r = m[method]
        lines.append(f"  {METHOD_NAMES[method]:<10} {pct(r['R1'])} {pct(r['R5'])} {pct(r['R10'])}")
    return lines


def _retrieval_lines(m: Mapping[str, Any]) -> list[str]:
    return [f"  {'R@1':>5} {'R@5':>5} {'R@10':>5} {'MR':>6}",
            f"  {pct(m['R1'])} {pct(m['R5'])} {pct(m['R10'])} {m['MR']:6.1f}"]


def _qa_lines(m: Mapping[str, Any]) -> list[str]:
    return [f"  accuracy {pct(m['acc'])}"]


def _coin_lines(m: Mapping[str, Any]) -> list[str]:
    return [f"  frame accuracy {pct(m['frame_acc'])} over {m['num_frames']} frames "
            f"(zero-shot threshold {m['threshold']:.4f})"]


def _htm_align_lines(m: Mapping[str, Any]) -> list[str]:
    lines = [f"  recall {pct(m['recall'])}  ROC-AUC {pct(m['auc'])}  "
             f"({m['num_alignable']} alignable of {m['num_captions']} captions)"]
    if "dense_recall" in m:
        lines.append(f"  dense windows (every caption on every second): recall {pct(m['dense_recall'])}  "
                     f"ROC-AUC {pct(m['dense_auc'])}")
    if "timestamp_recall" in m:
        lines.append(f"  original (noisy) timestamps: recall {pct(m['timestamp_recall'])}")
    return lines


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalOptions:
    """What a task's data and scoring may depend on besides the model (CLI flags)."""

    features: PathLike | None = None  # feature folder overriding the default place in the data
    split: str = "val"  # feature-store split
    max_videos: int | None = None  # first N videos only (quick checks, not the protocol)
    coin_split: str = "testing"
    otam_variant: str = "reference"


@dataclass(frozen=True)
class Task:
    """One downstream protocol: ``load(data, options)`` -> its data (with ``.missing``),
    ``score(encoder, data, options)`` -> ``{"metrics", "counts"}``, ``table(metrics)`` -> lines."""

    name: str
    spec: str  # section of docs/reference.md
    load: Callable[[PathLike, EvalOptions], Any]
    score: Callable[[Encoder, Any, EvalOptions], dict[str, Any]]
    table: Callable[[Mapping[str, Any]], list[str]]
    on_store: bool  # runs on a youcook2-mnc feature store too

    def evaluate(self, encoder: Encoder, data: PathLike, options: EvalOptions = EvalOptions()) -> dict[str, Any]:
        """``load`` then ``score``; the result also has ``source`` and ``missing`` (a report)."""
        loaded = self.load(data, options)
        result = self.score(encoder, loaded, options)
        return {**result, "source": getattr(loaded, "source", "official"), "missing": loaded.missing}


def _clips(data: PathLike, o: EvalOptions) -> ClipSet:
    return youcook_clip_set(data, o.features, split=o.split, max_videos=o.max_videos)


TASKS: dict[str, Task] = {task.name: task for task in (
    Task("youcook2_clip", "5.1", _clips, lambda e, d, o: eval_youcook_clip(e, d), _retrieval_lines, True),
    Task("youcook2_paragraph", "5.2", _clips,
         lambda e, d, o: eval_youcook_paragraph(e, d, otam_variant=o.otam_variant), _paragraph_lines, True),
    Task("youcook2_paragraph_bg", "5.3", _clips,
         lambda e, d, o: eval_youcook_paragraph_bg(e, d, otam_variant=o.otam_variant), _paragraph_lines, True),
    Task("msrvtt", "5.5", lambda d, o: msrvtt_data(d, o.features, max_videos=o.max_videos),
         lambda e, d, o: eval_msrvtt(e, d), _retrieval_lines, False),
    Task("msrvtt_qa", "5.6", lambda d, o: msrvtt_data(d, o.features, multiple_choice=True, max_videos=o.max_videos),
         lambda e, d, o: eval_msrvtt_qa(e, d), _qa_lines, False),
    Task("coin", "5.7", lambda d, o: coin_data(d, o.features, split=o.coin_split, max_videos=o.max_videos),
         lambda e, d, o: eval_coin(e, d), _coin_lines, False),
    Task("htm_align", "5.8", lambda d, o: htm_align_set(d, o.features, split=o.split, max_videos=o.max_videos),
         lambda e, d, o: eval_htm_align(e, d), _htm_align_lines, True),
)}
STORE_TASKS = tuple(name for name, task in TASKS.items() if task.on_store)  # tasks that run on a store
