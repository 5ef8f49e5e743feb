"""Test-split evaluation of a fine-tuned model (spec §5.5-5.7).

MSR-VTT retrieval and QA are scored by the evaluation's task registry
(:data:`norton_jax.evaluate.tasks.TASKS`, entries ``msrvtt`` / ``msrvtt_qa``), so the numbers
equal ``python -m norton_jax.evaluate --task msrvtt|msrvtt_qa``.  COIN
after fine-tuning is scored with the classifier head (``COINPredictor``), which the
evaluation CLI's zero-shot ``coin`` task does not use: :func:`eval_coin_finetuned`.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from norton_jax.evaluate import loaders as L
from norton_jax.evaluate import metrics as M
from norton_jax.evaluate.sources import truncate
from norton_jax.evaluate.tasks import TASKS, EvalOptions
from norton_jax.finetune.data import resolve_in
from norton_jax.inference import Encoder, run_padded, video_inputs
from norton_jax.models.dual_encoder import DualEncoder


@functools.partial(jax.jit, static_argnums=(0,))
def _frame_logits(graphdef, state, caps, cmasks, vfeats, vmasks):
    model = nnx.merge(graphdef, state)
    return model.classify_frames(caps, cmasks, vfeats, vmasks, deterministic=True)  # [W, Lv, C]


def coin_video_logits(
    model: DualEncoder, features: np.ndarray, *, stride: int = 16, size: int = 32, max_windows: int = 64
) -> np.ndarray:
    """Merged per-second class scores ``[T, C]`` of one video (spec §5.7, ``COINPredictor``).

    The video's windows (``stride``, ``size``; [CLS] masked) go through the classifier in
    chunks of at most ``max_windows`` padded to a power of two (at least 8;
    :func:`norton_jax.inference.run_padded`); the valid frames' logits of every window are
    summed into the seconds they cover and divided by the coverage count
    (:func:`norton_jax.evaluate.metrics.merge_window_scores`).
    """
    graphdef, state = nnx.split(model)
    t = int(features.shape[0])
    windows = M.coin_windows(t, stride=stride, size=size)
    arrays = video_inputs(
        [np.asarray(features[a:b], np.float32) for a, b in windows], size, mask_cls=True,
        feature_dim=model.config.video_input_dim,
    )
    logits = run_padded(functools.partial(_frame_logits, graphdef, state), arrays, max_windows, minimum=8)[0]
    return M.merge_window_scores(t, list(logits), stride=stride, size=size)


def eval_coin_finetuned(
    model: DualEncoder, data: L.COINData, *, stride: int = 16, size: int = 32
) -> dict[str, Any]:
    """Frame accuracy of the classifier head on ``data`` (``pred = argmax`` of the merged
    window logits; all frames of all videos, background included)."""
    if not data.videos:
        raise ValueError(f"no COIN test video to score ({data.missing.summary()})")
    model.eval()
    preds, targets = [], []
    for video in data.videos:
        feat = data.features.load(video.video_id)
        scores = coin_video_logits(model, feat, stride=stride, size=size)
        preds.append(np.argmax(scores, axis=1))
        targets.append(M.coin_video_targets(int(feat.shape[0]), video.segments))
    return {"metrics": M.frame_accuracy(preds, targets), "counts": {"videos": len(data.videos)}}


def evaluate_task(model: DualEncoder, config: ml_collections.ConfigDict, data_dir: str | os.PathLike) -> dict[str, Any]:
    """The task's test-split metrics for ``model`` (``config.task``, files under ``data_dir``).

    Returns ``{"metrics": {...}, "counts": {...}, "missing": int}``; ``config.eval.max_videos``
    > 0 keeps only the first N test items (a quick check, not the protocol).  Features are
    read through :class:`norton_jax.evaluate.loaders.FeatureDir`, so a test video whose
    features hold NaN/inf raises ``EvalDataError`` naming its file and first bad frame
    instead of being scored.
    """
    task, ev = config.task, config.eval
    test_path = resolve_in(data_dir, ev.test_file)
    limit = int(ev.get("max_videos") or 0)
    model.eval()
    if task == "coin":
        fdir = resolve_in(data_dir, config.data.features)
        data = L.load_coin(test_path, fdir, split="testing")
        if limit:
            data.videos = data.videos[:limit]
        result = eval_coin_finetuned(model, data, stride=int(ev.stride), size=int(config.data.size))
        missing = data.missing.count
    else:
        if task not in ("msrvtt", "msrvtt_qa"):
            raise ValueError(f"unknown fine-tuning task {task!r}")
        fdir = L.FeatureDir(resolve_in(data_dir, config.data.features))
        data = (L.load_msrvtt if task == "msrvtt" else L.load_msrvtt_mc)(test_path, fdir)
        if limit:
            data = truncate(data, limit)
        encoder = Encoder(model, batch_size=int(ev.batch_size))
        result = TASKS[task].score(encoder, data, EvalOptions())
        missing = data.missing.count
    return {"metrics": result["metrics"], "counts": result["counts"], "missing": missing}


def main_metric(task: str) -> str:
    """The metric name the reference ranks checkpoints by (spec §5.0): R1, acc, frame_acc."""
    return {"msrvtt": "R1", "msrvtt_qa": "acc", "coin": "frame_acc"}[task]


__all__ = ["coin_video_logits", "eval_coin_finetuned", "evaluate_task", "main_metric"]
