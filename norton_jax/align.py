"""Re-align a noisy transcript to its long video with Norton's transport plan.

For one video (features ``[T, 512]``, one row per second) and its narration lines (text
with the original start/end seconds), :func:`align_video`:

1. **Similarity** ``S [captions, T]``: cosine between each caption's ``pooled_text`` and the
   video encoder's frame outputs, computed in 32 s windows with an 8 s stride and averaged
   where windows overlap: the HTM-Align protocol of the reference (spec §5.8), with every
   caption scored in every window (``DSAligner`` layout: max_video_len 32, max_len 96).
2. **Scores for the plan** ``Z = S' + epsilon * log pi``: ``S'`` is the similarity min-max
   normalised over the video (as Norton's ``C``, spec 2.4.1); ``pi_c(t)`` is a temporal
   prior, a distribution over the seconds for each caption, ``pi_c(t) ~ exp(-d^2 / (2
   sigma^2))`` with ``d`` the distance of second ``t`` from the caption's original span (0
   inside).  The plan is then ``exp(S'/epsilon) * pi`` up to the marginal scalings, and a
   caption goes to the bucket when ``p`` beats its prior-weighted soft-max similarity
   ``epsilon * log E_pi[exp(S'/epsilon)]``.  Normalising ``pi`` per caption matters: with
   ``T`` one-second columns against one bucket column, an unnormalised kernel would give every
   caption a ``log T`` entropic advantage over the bucket (the reference's problems are
   ``8 x 8``).  ``prior_sigma=None`` makes ``pi`` uniform over the video.
3. **Transport with the alignable prompt bucket** (paper Eq. 6, spec 2.4.4/2.4.6):
   ``norton_jax.ot.sinkhorn_with_bucket(Z, p, epsilon)`` with rows = captions and columns =
   seconds.  The bucket value ``p`` follows ``norton_jax.losses.prompt_bucket_value``: the
   ``int(prompt_ratio * M)``-th smallest *timestamp-paired* similarity (here: each caption's
   prior-weighted soft-max ``epsilon * log sum_t exp(Z[c, t] / epsilon)``, the quantity its
   row pits against the bucket), so about ``prompt_ratio`` of the captions score below the
   bucket.  The bucket row and column absorb background seconds and unalignable captions.
4. **Outputs per caption**: ``aligned_mass`` = the plan's row sum (1 - the bucket's share);
   ``alignability`` = ``min(1, aligned_mass / mean aligned_mass)``, the caption's weight after
   Norton's renormalisation of the plan to total mass ``L`` (spec 2.4.7; raw masses all drop
   when many captions align, because the bucket's corner absorbs their counterpart);
   ``rejected`` when ``alignability < 1 - reject_threshold`` (0.5); ``centre = the weighted median second of its
   plan row (``peak`` = the second with the most mass is reported too); the re-aligned span
   = the original duration re-centred on ``centre`` (clipped to the video).

Defaults and why: ``epsilon = 0.1`` and ``prompt_ratio = 0.3`` are Norton's video-level
settings (spec 2.4); ``window = 32``, ``stride = 8`` are HTM-Align's; ``prior_sigma = 10 s``
is a generic prior on how far narration drifts from what it describes, not fitted to
youcook2-mnc (whose shifts are N(0, 4 s) clipped at 12 s; on its *train* split a sweep gave
the best recall at 5 s, then 10 s, then 20 s: see ``docs/evaluation.md``); ``num_iters = 100``.
Problems are padded to ``[8k, 64k]`` (masked) so a corpus compiles only a few shapes.

Command line (one video)::

    python -m norton_jax.align --checkpoint WORKDIR --features video.npy \\
        --captions captions.csv --out aligned.json --plot aligned.png

``captions.csv`` has the header ``start,end,text`` (HowTo100M caption CSV, UTF-8 with or
without a byte-order mark); a JSON file is either a list of ``{"start", "end", "text"}`` or
``{"start": [...], "end": [...], "text": [...]}``.  Times must be finite, non-negative and
lie on the features: a caption that starts at or after the last feature second (or ends
more than 2 s after it) stops the run with an error naming its line, unless
``--clamp-to-video`` cuts it to the video (the count is printed).  Features holding NaN or
inf are refused.

Corpus (a feature store, e.g. to filter noisy pairs before training)::

    python -m norton_jax.align --checkpoint WORKDIR --store data/build/youcook2-mnc \\
        --split train --out train_alignment.jsonl [--filtered-store DIR]

or :func:`align_store` from Python.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax.numpy as jnp
import numpy as np

from norton_jax.losses import prompt_bucket_value
from norton_jax.ot import sinkhorn_with_bucket

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


@dataclass(frozen=True)
class AlignConfig:
    """Settings of :func:`align_video` (see the module docstring for the choices)."""

    window: int = 32  # frames per video window (max_video_len of the evaluation layout)
    stride: int = 8  # seconds between window starts
    epsilon: float = 0.1  # Sinkhorn entropy (Norton's video-level epsilon)
    prompt_ratio: float = 0.3  # bucket quantile r of the paired similarities
    prior_sigma: float | None = 10.0  # seconds; None = no temporal prior
    num_iters: int = 100
    reject_threshold: float = 0.5  # rejected when alignability < 1 - reject_threshold

    def __post_init__(self) -> None:
        if self.window < 1 or self.stride < 1:
            raise ValueError("window and stride must be >= 1")
        if not self.epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {self.epsilon}")
        if not 0 < self.prompt_ratio <= 1:
            raise ValueError(f"prompt_ratio must be in (0, 1], got {self.prompt_ratio}")
        if self.prior_sigma is not None and not self.prior_sigma > 0:
            raise ValueError(f"prior_sigma must be > 0 or None, got {self.prior_sigma}")
        if not 0 <= self.reject_threshold <= 1:
            raise ValueError(f"reject_threshold must be in [0, 1], got {self.reject_threshold}")


@dataclass
class Captions:
    """Narration of one video: ``texts[i]`` spoken over ``[starts[i], ends[i]]`` seconds.

    ``where[i]`` (optional) says where caption ``i`` came from, e.g. ``"line 3"`` of a CSV
    file; errors use it instead of the caption's index.
    """

    texts: list[str]
    starts: np.ndarray  # [M] float
    ends: np.ndarray  # [M] float
    where: list[str] | None = None

    def __post_init__(self) -> None:
        self.starts = np.asarray(self.starts, np.float64).reshape(-1)
        self.ends = np.asarray(self.ends, np.float64).reshape(-1)
        if not (len(self.texts) == len(self.starts) == len(self.ends)):
            raise ValueError(f"{len(self.texts)} texts, {len(self.starts)} starts, {len(self.ends)} ends")
        if self.where is not None and len(self.where) != len(self.texts):
            raise ValueError(f"{len(self.where)} caption places for {len(self.texts)} captions")
        if len(self.texts) == 0:
            raise ValueError("no captions")
        for name, values in (("start", self.starts), ("end", self.ends)):
            bad = np.flatnonzero(~np.isfinite(values))
            if len(bad):
                i = int(bad[0])
                raise ValueError(f"{self.label(i)}: {name} must be a finite number, got {values[i]}")
        bad = np.flatnonzero(self.starts < 0)
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"{self.label(i)}: start {self.starts[i]} is negative (times are seconds from 0)")
        bad = np.flatnonzero(self.ends < self.starts)
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"{self.label(i)}: end {self.ends[i]} < start {self.starts[i]}")

    def label(self, i: int) -> str:
        """Where caption ``i`` came from (``"line 3"``), or ``"caption i"``."""
        return self.where[i] if self.where is not None else f"caption {i}"


# ASR times may run a little past the last feature second (the feature store allows the same)
END_TOLERANCE = 2.0


def fit_captions_to_video(captions: Captions, num_frames: int, *, clamp: bool = False,
                          source: PathLike | None = None) -> tuple[Captions, int]:
    """Checks that every caption lies on the video's ``num_frames`` seconds of features.

    A caption runs past the features when it starts at or after ``num_frames`` or ends more
    than :data:`END_TOLERANCE` seconds after it.  Without ``clamp`` that is an error naming
    ``source`` and the caption's line; with ``clamp`` the times of those captions are cut
    to the video (``[0, num_frames]``), the others are left as they are.  Returns the (possibly clamped) captions and how many were cut.
    """
    t = float(num_frames)
    late = (captions.starts >= t) | (captions.ends > t + END_TOLERANCE)
    if not late.any():
        return captions, 0
    if not clamp:
        i = int(np.argmax(late))
        prefix = f"{os.fspath(source)}: " if source is not None else ""
        raise ValueError(
            f"{prefix}{captions.label(i)}: caption [{captions.starts[i]:g}, {captions.ends[i]:g}] s runs past the "
            f"video's {num_frames} s of features ({int(late.sum())} of {len(late)} captions do); check that the "
            "captions belong to these features, or pass --clamp-to-video to cut them to the video"
        )
    starts = np.where(late, np.minimum(captions.starts, t), captions.starts)
    ends = np.where(late, np.minimum(captions.ends, t), captions.ends)
    return Captions(list(captions.texts), starts, ends, captions.where), int(late.sum())


@dataclass
class VideoAlignment:
    """Result of :func:`align_video` for one video."""

    video_id: str
    num_frames: int
    captions: Captions
    similarity: np.ndarray  # [M, T] cosine, averaged over windows
    plan: np.ndarray  # [M, T] Norton plan (rows sum to the aligned mass)
    aligned_mass: np.ndarray  # [M] row sums of the plan in [0, 1] (1 - bucket share)
    alignability: np.ndarray  # [M] min(1, row sum / mean row sum): weight after Norton's renormalisation
    rejected: np.ndarray  # [M] bool: alignability < 1 - reject_threshold
    peak: np.ndarray  # [M] int: second with the most plan mass
    centre: np.ndarray  # [M] float: weighted median second of the plan row (+0.5)
    aligned_starts: np.ndarray  # [M] re-aligned span (original duration around the centre)
    aligned_ends: np.ndarray  # [M]
    bucket_value: float  # p, on the min-max normalised scale
    config: AlignConfig = field(default_factory=AlignConfig)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: settings, the bucket value and one entry per caption."""
        caps = []
        for i, text in enumerate(self.captions.texts):
            caps.append({
                "index": i,
                "text": text,
                "original": [float(self.captions.starts[i]), float(self.captions.ends[i])],
                "aligned": [float(self.aligned_starts[i]), float(self.aligned_ends[i])],
                "shift": float(self.aligned_starts[i] - self.captions.starts[i]),
                "centre": float(self.centre[i]),
                "peak": int(self.peak[i]),
                "alignability": round(float(self.alignability[i]), 6),
                "aligned_mass": round(float(self.aligned_mass[i]), 6),
                "rejected": bool(self.rejected[i]),
            })
        return {
            "video_id": self.video_id,
            "num_frames": self.num_frames,
            "settings": asdict(self.config),
            "bucket_value": self.bucket_value,
            "num_captions": len(caps),
            "num_rejected": int(np.sum(self.rejected)),
            "captions": caps,
        }


# ---------------------------------------------------------------------------------------
# Core
# ---------------------------------------------------------------------------------------


def frame_similarity(encoder, features: np.ndarray, texts: Sequence[str], *, window: int = 32,
                     stride: int = 8) -> np.ndarray:
    """``S [M, T]``: cosine of each caption's pooled text with the frame outputs, averaged
    over the overlapping windows covering each second (spec §5.8, all captions active)."""
    from norton_jax.evaluate.metrics import coin_windows, merge_window_scores  # noqa: PLC0415
    from norton_jax.evaluate.run import _unit  # noqa: PLC0415

    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty [T, D] array, got {features.shape}")
    t = int(features.shape[0])
    windows = coin_windows(t, stride=stride, size=window)  # [(start, stop)], last reaches the end
    text = _unit(encoder.texts(texts))  # [M, D]
    _, frames = encoder.segments([np.asarray(features[a:b], np.float32) for a, b in windows], window,
                                 frames=True)  # [W, window, D]
    frames = _unit(frames)
    blocks = list(frames @ text.T)  # W x [window, M]
    return merge_window_scores(t, blocks, stride=stride, size=window).T  # [M, T]


def _span_distance(t: int, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``d [M, T]``: seconds from the centre of second ``t`` to each original span (0 inside)."""
    centre = np.arange(t, dtype=np.float64)[None, :] + 0.5
    return np.maximum(0.0, np.maximum(starts[:, None] - centre, centre - ends[:, None]))


def paired_similarity(scores: np.ndarray, epsilon: float) -> np.ndarray:
    """``[M]`` timestamp-paired similarity of each caption: ``epsilon * log sum_t exp(Z[c, t] /
    epsilon)`` with ``Z = S' + epsilon * log pi``, i.e. the soft-max of its similarity weighted
    by its temporal prior (the mean over its original span as ``sigma -> 0``).  It plays the
    role of Norton's diagonal ``C_ii`` (the caption with its timestamp-paired clip) and is
    exactly the quantity each caption's row pits against the bucket in the plan."""
    z = np.asarray(scores, np.float64) / epsilon
    top = z.max(axis=1, keepdims=True)
    return epsilon * (top[:, 0] + np.log(np.exp(z - top).sum(axis=1)))


def bucket_value(paired: np.ndarray, prompt_ratio: float) -> float:
    """``p`` = the ``int(r * M)``-th smallest paired similarity (:func:`prompt_bucket_value`
    on the diagonal); with fewer than ``1/r`` captions the smallest one."""
    m = len(paired)
    if int(prompt_ratio * m) >= 1:
        return float(prompt_bucket_value(jnp.diag(jnp.asarray(paired, jnp.float32)), prompt_ratio))
    return float(np.min(paired))


def realign(similarity: np.ndarray, captions: Captions, config: AlignConfig = AlignConfig()) -> dict[str, Any]:
    """Steps 2-4 of the module docstring on a given ``S [M, T]`` (no model needed)."""
    sim = np.asarray(similarity, np.float64)
    m, t = sim.shape
    lo, hi = sim.min(), sim.max()
    norm = (sim - lo) / (hi - lo) if hi > lo else np.zeros_like(sim)  # Norton's min-max (T4)
    log_prior = np.zeros((m, t))  # uniform over the video without a prior
    if config.prior_sigma is not None:
        log_prior = -_span_distance(t, captions.starts, captions.ends) ** 2 / (2.0 * config.prior_sigma**2)
    # normalise each row's prior to a distribution over seconds: the bucket then competes with
    # the prior-weighted soft-max of the row, not with the number of seconds it can reach
    top = log_prior.max(axis=1, keepdims=True)
    log_prior = log_prior - (top + np.log(np.exp(log_prior - top).sum(axis=1, keepdims=True)))
    scores = norm + config.epsilon * log_prior  # [M, T]
    paired = paired_similarity(scores, config.epsilon)  # [M] each caption at its own time
    p = bucket_value(paired, config.prompt_ratio)
    # pad to [8k, 64k] with masks so that a corpus of different lengths compiles a few shapes
    mp, tp = -(-m // 8) * 8, -(-t // 64) * 64
    padded = np.zeros((mp, tp), np.float32)
    padded[:m, :t] = scores
    plan = np.asarray(sinkhorn_with_bucket(
        jnp.asarray(padded), jnp.float32(p), epsilon=config.epsilon, num_iters=config.num_iters,
        row_mask=jnp.asarray(np.arange(mp) < m), col_mask=jnp.asarray(np.arange(tp) < t),
    ), np.float64)[:m, :t]  # [M, T]
    mass = np.clip(plan.sum(axis=1), 0.0, 1.0)  # [M] share of each caption not sent to the bucket
    # Norton renormalises every plan to total mass L (spec 2.4.7): a caption's weight is its
    # mass relative to the mean caption's.  Raw masses are low whenever many captions are
    # aligned (the bucket's corner has to absorb their mass), the relative one is not.
    share = np.minimum(1.0, mass * m / max(float(mass.sum()), 1e-12))
    peak = np.argmax(plan, axis=1)
    cum = np.cumsum(plan, axis=1)
    centre = np.argmax(cum >= 0.5 * cum[:, -1:], axis=1) + 0.5  # weighted median second of each row
    duration = captions.ends - captions.starts
    new_start = np.clip(centre - duration / 2.0, 0.0, np.maximum(0.0, t - duration))
    return {
        "normalized": norm,
        "log_prior": log_prior,
        "plan": plan,
        "aligned_mass": mass,
        "alignability": share,
        "rejected": share < 1.0 - config.reject_threshold,
        "peak": peak.astype(np.int64),
        "centre": centre,
        "aligned_starts": new_start,
        "aligned_ends": new_start + duration,
        "bucket_value": p,
    }


def align_video(encoder, features: np.ndarray, captions: Captions, config: AlignConfig = AlignConfig(),
                *, video_id: str = "") -> VideoAlignment:
    """Aligns one video's narration (module docstring).  ``encoder``: a
    :class:`norton_jax.evaluate.run.Encoder` (or anything with ``texts`` and ``segments``)."""
    features = np.asarray(features)
    sim = frame_similarity(encoder, features, captions.texts, window=config.window, stride=config.stride)
    out = realign(sim, captions, config)
    return VideoAlignment(
        video_id=video_id, num_frames=int(features.shape[0]), captions=captions, similarity=sim,
        plan=out["plan"], alignability=out["alignability"], rejected=out["rejected"], peak=out["peak"], aligned_mass=out["aligned_mass"],
        centre=out["centre"],
        aligned_starts=out["aligned_starts"], aligned_ends=out["aligned_ends"],
        bucket_value=out["bucket_value"], config=config,
    )


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


# ---------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------


@dataclass
class StoreAlignment:
    """Summary of :func:`align_store`."""

    videos: int
    captions: int
    rejected: int
    seconds: float
    # with ground truth (youcook2-mnc): recalls of the plan's centre / the similarity argmax / the
    # original timestamps' midpoints, and how well the rejection flags unalignable lines
    recall_plan: float | None = None
    recall_similarity: float | None = None
    recall_timestamps: float | None = None
    num_alignable: int | None = None
    rejection_precision: float | None = None  # share of rejected captions that are unalignable
    rejection_recall: float | None = None  # share of unalignable captions that are rejected
    alignability_auc: float | None = None  # ROC-AUC of the alignable flags vs alignability
    filtered_store: str | None = None
    kept_videos: int | None = None


def align_store(
    model_or_encoder,
    store_dir: PathLike,
    split: str = "train",
    config: AlignConfig = AlignConfig(),
    *,
    out_jsonl: PathLike | None = None,
    filtered_store: PathLike | None = None,
    retime: bool = True,
    max_videos: int | None = None,
    batch_size: int = 64,
) -> StoreAlignment:
    """Aligns every video of a feature-store split; optionally filters it for training.

    * ``out_jsonl``: one :meth:`VideoAlignment.to_json` line per video.
    * ``filtered_store``: writes a new store (same split name) holding, per video, only the
      captions that the bucket did not reject, with their re-aligned times (``retime``) or the
      original ones; videos left without captions are skipped and counted.  Ground-truth
      fields, if any, are carried along for the kept captions.
    * With youcook2-mnc ground truth, the summary reports the alignment recall of the plan's
      centre (weighted median), of the raw similarity's argmax and of the original timestamps (midpoints), and
      how the rejections match the unalignable captions.
    """
    from data_pipeline.feature_store import FeatureStore, FeatureStoreWriter, VideoRecord  # noqa: PLC0415
    from norton_jax.evaluate.metrics import roc_auc  # noqa: PLC0415
    from norton_jax.evaluate.run import Encoder, checked_store_record  # noqa: PLC0415

    t0 = time.perf_counter()
    encoder = model_or_encoder if hasattr(model_or_encoder, "segments") else Encoder(model_or_encoder, batch_size)
    store = FeatureStore(os.fspath(store_dir), split)
    n = len(store) if max_videos is None else min(len(store), max_videos)
    writer = None
    if filtered_store is not None:
        writer = FeatureStoreWriter(os.fspath(filtered_store), split, source=f"norton_jax.align of {store_dir}",
                                    metadata={"align_settings": asdict(config), "retime": retime})
    jsonl = tmp_jsonl = None
    if out_jsonl is not None:  # written to a temporary file, renamed once every video is done
        Path(out_jsonl).parent.mkdir(parents=True, exist_ok=True)
        tmp_jsonl = Path(out_jsonl).with_name(Path(out_jsonl).name + ".tmp")
        jsonl = open(tmp_jsonl, "w", encoding="utf-8")
    total = rejected = kept_videos = 0
    done = False
    gt = {"plan": [], "sim": [], "ts": [], "gs": [], "ge": [], "flags": [], "score": []}
    try:
        for i in range(n):
            rec = checked_store_record(store, i)  # NaN/inf features: an error naming shard and video
            caps = Captions(list(rec.texts) if rec.texts is not None else [""] * rec.num_captions,
                            rec.starts, rec.ends)
            res = align_video(encoder, np.asarray(rec.features, np.float32), caps, config, video_id=rec.video_id)
            total += len(caps.texts)
            rejected += int(res.rejected.sum())
            if jsonl is not None:
                jsonl.write(json.dumps(res.to_json()) + "\n")
            if rec.gt_start is not None and rec.gt_alignable is not None:
                gt["plan"].append(res.centre)
                gt["sim"].append(np.argmax(res.similarity, axis=1))
                gt["ts"].append((caps.starts + caps.ends) / 2)
                gt["gs"].append(rec.gt_start)
                gt["ge"].append(rec.gt_end)
                gt["flags"].append(np.asarray(rec.gt_alignable).astype(bool))
                gt["score"].append(res.alignability)
            if writer is not None:
                keep = np.flatnonzero(~res.rejected)
                if len(keep) == 0:
                    continue
                starts = res.aligned_starts[keep] if retime else caps.starts[keep]
                ends = res.aligned_ends[keep] if retime else caps.ends[keep]
                order = keep[np.argsort(starts, kind="stable")]  # kept captions, sorted by (new) start
                pos = np.argsort(starts, kind="stable")
                take = lambda xs: None if xs is None else [xs[j] for j in order]  # noqa: E731
                array = lambda xs: None if xs is None else np.asarray(xs)[order]  # noqa: E731
                new = VideoRecord(
                    video_id=rec.video_id, features=rec.features,
                    starts=starts[pos].astype(np.float32), ends=ends[pos].astype(np.float32),
                    tokens=take(rec.tokens), texts=take(rec.texts),
                    gt_start=array(rec.gt_start), gt_end=array(rec.gt_end),
                    gt_alignable=array(rec.gt_alignable), gt_text=take(rec.gt_text),
                )
                writer.add(new)
                kept_videos += 1
        done = True
    finally:
        store.close()
        if jsonl is not None:
            jsonl.close()
            if done:
                os.replace(tmp_jsonl, out_jsonl)
            else:
                tmp_jsonl.unlink(missing_ok=True)
        if writer is not None:
            writer.close()
    summary = StoreAlignment(videos=n, captions=total, rejected=rejected, seconds=round(time.perf_counter() - t0, 2))
    if gt["flags"]:
        flags = np.concatenate(gt["flags"])
        rej = 1.0 - np.concatenate(gt["score"]) > config.reject_threshold
        summary.recall_plan = alignment_recall(gt["plan"], gt["gs"], gt["ge"], gt["flags"])["recall"]
        summary.recall_similarity = alignment_recall(gt["sim"], gt["gs"], gt["ge"], gt["flags"])["recall"]
        rt = alignment_recall(gt["ts"], gt["gs"], gt["ge"], gt["flags"])
        summary.recall_timestamps, summary.num_alignable = rt["recall"], rt["num_alignable"]
        summary.rejection_precision = float(np.mean(~flags[rej])) if rej.any() else float("nan")
        summary.rejection_recall = float(np.mean(rej[~flags])) if (~flags).any() else float("nan")
        summary.alignability_auc = roc_auc(flags, np.concatenate(gt["score"]))
    if writer is not None:
        summary.filtered_store, summary.kept_videos = os.fspath(filtered_store), kept_videos
    return summary


# ---------------------------------------------------------------------------------------
# Files and the picture
# ---------------------------------------------------------------------------------------


def read_captions(path: PathLike) -> Captions:
    """Captions from ``start,end,text`` CSV or JSON (a list of ``{start, end, text}`` or a
    dict of three lists).  Errors name the file and the CSV line (the header is line 1) or
    the JSON caption index.  A UTF-8 byte-order mark is accepted."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"captions file not found: {path}")

    def num(v: Any, where: str) -> float:
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {where}: expected a number, got {v!r}") from None
        if not math.isfinite(x):
            raise ValueError(f"{path}: {where}: expected a finite number, got {v!r}")
        return x

    texts, starts, ends, where = [], [], [], []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if isinstance(data, dict):
            missing = [k for k in ("start", "end", "text") if k not in data]
            if missing:
                raise ValueError(f"{path}: missing field(s) {missing}")
            if not (len(data["start"]) == len(data["end"]) == len(data["text"])):
                raise ValueError(f"{path}: start, end and text must have the same length")
            rows = [{"start": s, "end": e, "text": t} for s, e, t in zip(data["start"], data["end"], data["text"])]
        elif isinstance(data, list):
            rows = data
        else:
            raise ValueError(f"{path}: expected a list of captions or a dict of lists")
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or any(k not in row for k in ("start", "end", "text")):
                raise ValueError(f"{path}: caption {i}: needs 'start', 'end' and 'text'")
            starts.append(num(row["start"], f"caption {i} start"))
            ends.append(num(row["end"], f"caption {i} end"))
            texts.append(str(row["text"]))
            where.append(f"caption {i}")
    else:
        try:
            with open(path, encoding="utf-8-sig", newline="") as f:
                reader = csv.DictReader(f)
                header = [h.strip() for h in (reader.fieldnames or [])]
                reader.fieldnames = header
                missing = [k for k in ("start", "end", "text") if k not in header]
                if missing:
                    raise ValueError(f"{path}: missing column(s) {missing}; header is {header}")
                for row in reader:
                    line = reader.line_num  # physical line of the row's end (quoted newlines count)
                    if None in row or any(row.get(k) is None for k in ("start", "end", "text")):
                        raise ValueError(f"{path}: line {line}: expected {len(header)} fields, got a malformed row")
                    starts.append(num(row["start"], f"line {line} start"))
                    ends.append(num(row["end"], f"line {line} end"))
                    texts.append(row["text"] or "")
                    where.append(f"line {line}")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not UTF-8 text ({err})") from None
        except csv.Error as err:
            raise ValueError(f"{path}: not a readable CSV file ({err})") from None
    if not texts:
        raise ValueError(f"{path}: no captions")
    try:
        return Captions(texts, np.asarray(starts), np.asarray(ends), where)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def plot_alignment(result: VideoAlignment, out: PathLike, *, max_label: int = 40) -> None:
    """PNG: the similarity and the plan over time (captions x seconds); original spans in
    white (similarity) / black (plan), re-aligned spans in orange (grey when rejected),
    rejected captions in red."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    m, t = result.plan.shape
    height = min(30.0, 1.6 + 0.32 * m)
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, min(24.0, t / 25.0)), 2 * height), constrained_layout=True)
    labels = []
    for i, text in enumerate(result.captions.texts):
        short = text if len(text) <= max_label else text[: max_label - 1] + "…"
        labels.append(f"{i}: {short}" + ("  [rejected]" if result.rejected[i] else f"  ({result.alignability[i]:.2f})"))
    sim = np.where(result.similarity <= -1e4, np.nan, result.similarity)
    panels = [("cosine similarity (32 s windows, 8 s stride)", sim, "viridis"),
              (f"Norton transport plan with the prompt bucket (p = {result.bucket_value:.3f})", result.plan, "Blues")]
    for ax, (title, mat, cmap), orig in zip(axes, panels, ("white", "black")):
        ax.imshow(mat, aspect="auto", cmap=cmap, interpolation="nearest", extent=(0, t, m - 0.5, -0.5))
        for i in range(m):
            ax.plot([result.captions.starts[i], result.captions.ends[i]], [i, i], color=orig, lw=3, alpha=0.9,
                    solid_capstyle="butt", label="original time" if i == 0 else None)
            ax.plot([result.aligned_starts[i], result.aligned_ends[i]], [i + 0.25, i + 0.25],
                    color="grey" if result.rejected[i] else "darkorange", lw=2, solid_capstyle="butt",
                    label="re-aligned" if i == 0 else None)
        ax.set_yticks(range(m), labels, fontsize=7)
        for lab, rej in zip(ax.get_yticklabels(), result.rejected):
            if rej:
                lab.set_color("crimson")
        ax.set_xlabel("seconds")
        ax.set_title(title, fontsize=9)
        ax.legend(loc="upper right", fontsize=7)
    fig.suptitle(f"{result.video_id or 'video'}: {m} captions, {int(result.rejected.sum())} rejected", fontsize=10)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out)


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from norton_jax import cli  # noqa: PLC0415

    d = AlignConfig()
    parser = argparse.ArgumentParser(
        prog="python -m norton_jax.align",
        description="Re-align a noisy transcript to its video with Norton's transport plan (prompt bucket).",
        epilog="Captions must lie on the features: one that starts at or after the last feature second, or "
               f"ends more than {END_TOLERANCE:g} s after it, is an error naming its CSV line unless "
               "--clamp-to-video is given.  Features with NaN/inf values are refused.  A mistake in the "
               "arguments or files prints one 'error:' line and exits with status 2 (--debug: traceback).",
    )
    parser.add_argument("--checkpoint", required=True,
                        help="training workdir, checkpoints/ folder, <step>/ folder or .pt/.safetensors")
    parser.add_argument("--config", default=None, help="config file with the model geometry (for .pt files)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", help="one video's features .npy [T, 512] (one row per second)")
    src.add_argument("--store", help="a feature store: align every video of --split")
    parser.add_argument("--captions", help="start,end,text CSV (UTF-8, header line 1) or JSON (with --features)")
    parser.add_argument("--clamp-to-video", action="store_true",
                        help="with --features: cut captions that run past the features to the video "
                             "(and say how many) instead of stopping with an error")
    parser.add_argument("--split", default="train", help="store split (with --store; default train)")
    parser.add_argument("--max-videos", type=int, default=None, help="with --store: only the first N videos")
    parser.add_argument("--filtered-store", default=None,
                        help="with --store: write a store without the rejected captions, re-timed")
    parser.add_argument("--keep-times", action="store_true", help="with --filtered-store: keep the original times")
    parser.add_argument("--out", required=True,
                        help="aligned.json (one video) or .jsonl (store); checked writable before the work")
    parser.add_argument("--plot", default=None, help="PNG of the plan over time (one video)")
    parser.add_argument("--video-id", default=None, help="name used in the outputs (default: the file stem)")
    parser.add_argument("--epsilon", type=float, default=d.epsilon)
    parser.add_argument("--prompt-ratio", type=float, default=d.prompt_ratio)
    parser.add_argument("--prior-sigma", type=float, default=d.prior_sigma,
                        help="seconds of the Gaussian shift prior; 0 disables it")
    parser.add_argument("--window", type=int, default=d.window)
    parser.add_argument("--stride", type=int, default=d.stride)
    parser.add_argument("--num-iters", type=int, default=d.num_iters)
    parser.add_argument("--reject-threshold", type=float, default=d.reject_threshold)
    parser.add_argument("--batch-size", type=int, default=64)
    cli.add_debug_flag(parser)
    return parser


def read_features(path: PathLike, feature_dim: int | None = None) -> np.ndarray:
    """One video's features ``[T, D]`` from a ``.npy`` file; errors name the file (missing,
    unreadable, wrong shape, NaN/inf values with the first bad frame)."""
    from norton_jax.evaluate.loaders import check_finite_features  # noqa: PLC0415

    try:
        features = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"features file not found: {path}") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable .npy array ({err})") from None
    want = f"[T, {feature_dim}]" if feature_dim else "[T, D]"
    if (features.ndim != 2 or features.shape[0] == 0 or (feature_dim and features.shape[1] != feature_dim)
            or not np.issubdtype(features.dtype, np.number)):
        raise ValueError(f"{path}: expected {want} numeric features, got {features.dtype} {features.shape}")
    check_finite_features(features, path, Path(path).stem)
    return features


def main(argv: list[str] | None = None) -> int:
    from norton_jax import cli  # noqa: PLC0415

    from data_pipeline.tf_utils import configure_tensorflow_environment  # noqa: PLC0415

    configure_tensorflow_environment()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from norton_jax.evaluate.run import Encoder, check_writable, load_model, write_json  # noqa: PLC0415

    config = AlignConfig(
        window=args.window, stride=args.stride, epsilon=args.epsilon, prompt_ratio=args.prompt_ratio,
        prior_sigma=args.prior_sigma if args.prior_sigma and args.prior_sigma > 0 else None,
        num_iters=args.num_iters, reject_threshold=args.reject_threshold,
    )
    if args.features is not None and not args.captions:
        raise cli.UserError("--features needs --captions")
    # outputs first: an unwritable path fails now, not after the alignment
    check_writable(args.out, "--out")
    if args.plot:
        check_writable(args.plot, "--plot")
    if args.filtered_store:
        check_writable(Path(args.filtered_store) / f"{args.split}.index.json", "--filtered-store")
    captions = features = None
    if args.features is not None:  # inputs next, so that their mistakes show before the model loads
        captions = read_captions(args.captions)
        features = read_features(args.features)
        captions, clamped = fit_captions_to_video(captions, int(features.shape[0]), clamp=args.clamp_to_video,
                                                  source=args.captions)
    model, info = load_model(args.checkpoint, args.config)
    encoder = Encoder(model, args.batch_size)
    if args.store is not None:
        summary = align_store(encoder, args.store, args.split, config, out_jsonl=args.out,
                              filtered_store=args.filtered_store, retime=not args.keep_times,
                              max_videos=args.max_videos)
        for key, value in asdict(summary).items():
            if value is not None:
                print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
        print(f"wrote {args.out}")
        return 0
    t, dim = features.shape
    if dim != model.config.video_input_dim:
        raise ValueError(f"{args.features}: expected [T, {model.config.video_input_dim}] features for this "
                         f"model, got {features.shape}")
    if clamped:
        print(f"{args.captions}: clamped {clamped} of {len(captions.texts)} captions to the video's {t} s")
    vid = args.video_id or Path(args.features).stem
    result = align_video(encoder, features, captions, config, video_id=vid)
    payload = result.to_json()
    payload.update({"checkpoint": info["checkpoint"], "step": info["step"], "clamped_captions": clamped})
    write_json(payload, args.out)
    print(f"{vid}: {len(captions.texts)} captions, {payload['num_rejected']} rejected by the bucket "
          f"(p = {result.bucket_value:.3f}); wrote {args.out}")
    for c in payload["captions"]:
        tag = "REJECTED" if c["rejected"] else "aligned "
        print(f"  [{tag}] {c['alignability']:.2f}  {c['original'][0]:7.1f}-{c['original'][1]:7.1f} -> "
              f"{c['aligned'][0]:7.1f}-{c['aligned'][1]:7.1f}  {c['text'][:60]!r}")
    if args.plot:
        plot_alignment(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    from norton_jax import cli

    sys.exit(cli.run(main, prog="python -m norton_jax.align"))
