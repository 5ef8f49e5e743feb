"""Evaluate a checkpoint on the downstream protocols of the reference (spec §5).

A run is always: load the task's data (:mod:`norton_jax.evaluate.sources`: the official
files via :mod:`norton_jax.evaluate.loaders`, or the embedded ``youcook2-mnc`` feature
store) -> lay the inputs out as the reference's ``DSAligner`` (spec §3.2, §5.0) -> embed them
with the jitted encoders of the model in eval mode (:mod:`norton_jax.inference`) -> build the
similarity matrix -> score it with :mod:`norton_jax.evaluate.metrics`.  The tasks and their
scoring are the registry :data:`norton_jax.evaluate.tasks.TASKS`; the table and the JSON
file are :mod:`norton_jax.evaluate.report`.

Library use::

    from norton_jax.evaluate.run import evaluate_checkpoint
    result = evaluate_checkpoint("workdir/", "youcook2_paragraph", "data/build/youcook2-mnc")
    result["metrics"]["dtw"]["R1"]

Command line: ``python -m norton_jax.evaluate --help`` (see ``docs/evaluation.md``).

The names that lived here before the split (``Encoder``, ``load_model``, ``text_inputs``,
``read_store``, ``write_json``, ...) are still importable from this module; new code imports
them from where they are defined (``norton_jax.inference``, ``norton_jax.evaluate.sources``,
``.tasks``, ``.report``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from data_pipeline import fileio
from norton_jax.evaluate.caption_similarity import htm_align_similarity  # noqa: F401 - old import path
from norton_jax.evaluate.report import check_writable, format_table, write_json  # noqa: F401 - old import path
from norton_jax.evaluate.sources import (  # noqa: F401 - old import path
    COIN_FEATURES,
    HTM_FEATURES,
    MSRVTT_FEATURES,
    YOUCOOK_FEATURES,
    AlignSet,
    ClipSet,
    checked_store_record,
    htm_align_set,
    is_feature_store,
    missing_dict,
    read_store,
    store_clips,
    store_htm_align,
    youcook_clip_set,
)
from norton_jax.evaluate.tasks import (  # noqa: F401 - old import path
    METHOD_NAMES,
    STORE_TASKS,
    TASKS,
    EvalOptions,
    clip_similarity_matrix,
    eval_coin,
    eval_htm_align,
    eval_msrvtt,
    eval_msrvtt_qa,
    eval_youcook_clip,
    eval_youcook_paragraph,
    eval_youcook_paragraph_bg,
)
from norton_jax.inference import (  # noqa: F401 - old import path
    QA_LAYOUT,
    RETRIEVAL_LAYOUT,
    CheckpointRef,
    Encoder,
    Layout,
    load_model,
    resolve_checkpoint,
    text_inputs,
    tokenize_texts,
    unit_normalize,
    video_inputs,
)
from norton_jax.models.dual_encoder import DualEncoder

__all__ = [
    "AlignSet", "COIN_FEATURES", "CheckpointRef", "ClipSet", "Encoder", "HTM_FEATURES", "Layout", "METHOD_NAMES",
    "MSRVTT_FEATURES", "QA_LAYOUT", "RETRIEVAL_LAYOUT", "STORE_TASKS", "TASKS", "YOUCOOK_FEATURES", "YOUCOOK_TASKS",
    "check_writable", "checked_store_record", "clip_similarity_matrix", "eval_coin", "eval_htm_align", "eval_msrvtt",
    "eval_msrvtt_qa", "eval_youcook_clip", "eval_youcook_paragraph", "eval_youcook_paragraph_bg",
    "evaluate_checkpoint", "format_table", "htm_align_set", "htm_align_similarity", "is_feature_store",
    "load_model", "read_store", "resolve_checkpoint", "store_clips", "store_htm_align", "text_inputs",
    "tokenize_texts", "unit_normalize", "video_inputs", "write_json", "youcook_clip_set",
]

PathLike = str | os.PathLike
YOUCOOK_TASKS = ("youcook2_clip", "youcook2_paragraph", "youcook2_paragraph_bg")
_unit = unit_normalize  # the old private name, until norton_jax.align imports unit_normalize


def evaluate_checkpoint(
    checkpoint: PathLike | DualEncoder,
    task: str,
    data: PathLike,
    *,
    config: Any = None,
    features: PathLike | None = None,
    split: str = "val",
    step: int | str | None = None,
    batch_size: int = 64,
    max_videos: int | None = None,
    coin_split: str = "testing",
    otam_variant: str = "reference",
    out: PathLike | None = None,
) -> dict[str, Any]:
    """Evaluates ``checkpoint`` on one ``task`` (see :data:`TASKS`).

    Args:
      checkpoint: training workdir, its ``checkpoints/`` folder, one step folder, a
        ``.pt``/``.safetensors`` file, or a :class:`DualEncoder` already loaded.
      task: one of :data:`TASKS`.
      data: the folder with the task's official files (``docs/evaluation.md``), the task's
        main file itself, or a youcook2-mnc feature store (youcook2 tasks and ``htm_align``;
        local or on any filesystem of :mod:`data_pipeline.fileio`, e.g. ``gs://``).
      config: model geometry (config file path / ModelConfig / mapping) for checkpoints
        that do not store it.
      features: feature folder (``<video_id>.npy``) overriding the default place in ``data``.
      split: store split for youcook2-mnc (default ``val``).
      step: orbax step, ``"best"`` or ``"latest"`` (default: the latest; a step folder picks its own).
      max_videos: evaluate only the first N videos (quick checks; not the protocol).
      coin_split, otam_variant: ``load_coin`` split; ``paragraph_retrieval`` OTAM variant.
      out: write the result as JSON there (local, ``gs://``, ``ram://``).

    Returns:
      ``{"task", "data", "source", "split", "checkpoint", "step", "metrics", "counts",
      "missing", "seconds"}``; ``metrics`` is the metric function's dict (per method
      ``{"cap_avg", "dtw", "otam"}`` of ``{"R1", "R5", "R10"}`` for the paragraph tasks).
      Recalls and accuracies are fractions in [0, 1].
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    t0 = time.perf_counter()
    store = is_feature_store(data)
    if store and not TASKS[task].on_store:
        raise ValueError(f"{data}: a feature store supports the tasks {', '.join(STORE_TASKS)}, not {task!r}")
    if out is not None:
        check_writable(out, "out")
    model, info = load_model(checkpoint, config, step=step)
    encoder = Encoder(model, batch_size=batch_size)
    options = EvalOptions(features=features, split=split, max_videos=max_videos, coin_split=coin_split,
                          otam_variant=otam_variant)
    res = TASKS[task].evaluate(encoder, data, options)
    result = {
        "task": task,
        "data": fileio.abspath(os.fspath(data)),
        "source": res["source"],
        "split": split if store else None,
        **info,
        "metrics": res["metrics"],
        "counts": res["counts"],
        "missing": missing_dict(res["missing"]),
        "max_videos": max_videos,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if out is not None:
        write_json(result, out)
    return result
