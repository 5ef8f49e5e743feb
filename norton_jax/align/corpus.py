"""Corpus tools: align every video of a feature store, score it against ground truth, filter it.

``python -m norton_jax.align --store DIR --split train --out train_alignment.jsonl
[--filtered-store OUT]`` calls :func:`align_store`; the filtered store keeps, per video, only
the captions the prompt bucket did not reject (re-timed unless asked otherwise), e.g. to
clean noisy narration before training.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass

import numpy as np

from data_pipeline import fileio
from data_pipeline.feature_store import FeatureStore, FeatureStoreWriter, VideoRecord
from norton_jax.align.algorithm import AlignConfig, Captions, VideoAlignment, align_video
from norton_jax.evaluate.metrics import alignment_recall, roc_auc
from norton_jax.evaluate.sources import checked_store_record
from norton_jax.inference import Encoder

PathLike = str | os.PathLike

__all__ = ["StoreAlignment", "align_store", "filtered_record"]


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


def filtered_record(rec: VideoRecord, res: VideoAlignment, *, retime: bool = True) -> VideoRecord | None:
    """``rec`` holding only the captions ``res`` did not reject, sorted by their (new) start;
    ``None`` when every caption was rejected.  Ground-truth fields follow their captions."""
    keep = np.flatnonzero(~res.rejected)
    if len(keep) == 0:
        return None
    starts = res.aligned_starts[keep] if retime else res.captions.starts[keep]
    ends = res.aligned_ends[keep] if retime else res.captions.ends[keep]
    pos = np.argsort(starts, kind="stable")
    order = keep[pos]  # kept captions, sorted by (new) start

    def take(xs):
        return None if xs is None else [xs[j] for j in order]

    def array(xs):
        return None if xs is None else np.asarray(xs)[order]

    return VideoRecord(
        video_id=rec.video_id, features=rec.features,
        starts=starts[pos].astype(np.float32), ends=ends[pos].astype(np.float32),
        tokens=take(rec.tokens), texts=take(rec.texts),
        gt_start=array(rec.gt_start), gt_end=array(rec.gt_end),
        gt_alignable=array(rec.gt_alignable), gt_text=take(rec.gt_text),
    )


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

    * ``out_jsonl``: one :meth:`VideoAlignment.to_json` line per video (written to a temporary
      name and renamed once every video is done: an error leaves no half-written file).
    * ``filtered_store``: writes a new store (same split name) holding, per video, only the
      captions that the bucket did not reject, with their re-aligned times (``retime``) or the
      original ones; videos left without captions are skipped and counted.  Ground-truth
      fields, if any, are carried along for the kept captions.
    * With youcook2-mnc ground truth, the summary reports the alignment recall of the plan's
      centre (weighted median), of the raw similarity's argmax and of the original timestamps
      (midpoints), and how the rejections match the unalignable captions.
    """
    t0 = time.perf_counter()
    encoder = model_or_encoder if hasattr(model_or_encoder, "segments") else Encoder(model_or_encoder, batch_size)
    store = FeatureStore(os.fspath(store_dir), split)
    n = len(store) if max_videos is None else min(len(store), max_videos)
    writer = None
    if filtered_store is not None:
        writer = FeatureStoreWriter(os.fspath(filtered_store), split, source=f"norton_jax.align of {store_dir}",
                                    metadata={"align_settings": asdict(config), "retime": retime})
    jsonl = tmp_jsonl = None
    if out_jsonl is not None:
        out_jsonl = os.fspath(out_jsonl)
        if fileio.dirname(out_jsonl):
            fileio.makedirs(fileio.dirname(out_jsonl))
        tmp_jsonl = f"{out_jsonl}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        jsonl = fileio.open(tmp_jsonl, "w", encoding="utf-8")
    total = rejected = kept_videos = 0
    done = False
    gt: dict[str, list[np.ndarray]] = {"plan": [], "sim": [], "ts": [], "gs": [], "ge": [], "flags": [], "score": []}
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
                new = filtered_record(rec, res, retime=retime)
                if new is not None:
                    writer.add(new)
                    kept_videos += 1
        done = True
    finally:
        store.close()
        if jsonl is not None:
            jsonl.close()
            if done:
                fileio.replace(tmp_jsonl, out_jsonl)
            else:
                with contextlib.suppress(OSError):
                    fileio.remove(tmp_jsonl)
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
