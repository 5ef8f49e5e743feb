"""Downstream evaluation of Norton (spec §5): metrics on similarity matrices and loaders
for the official benchmark files.  See ``docs/evaluation.md``.

Modules: :mod:`.loaders` (official files), :mod:`.sources` (clip / alignment sets from files or a
feature store), :mod:`.metrics` (pure metric functions), :mod:`.windows` (sliding windows and
stitching), :mod:`.caption_similarity` (caption-by-second similarity), :mod:`.tasks` (the task
registry and scoring), :mod:`.report` (table, JSON), :mod:`.run` (``evaluate_checkpoint``).
"""

import types as _types

from norton_jax.evaluate.loaders import (
    COINData,
    EvalDataError,
    FeatureDir,
    HTMAlignData,
    MissingFeatures,
    MSRVTTMultipleChoice,
    MSRVTTRetrieval,
    YouCookData,
    load_coin,
    load_htm_align,
    load_msrvtt,
    load_msrvtt_mc,
    load_youcook,
    youcook_background_windows,
)
from norton_jax.evaluate.metrics import (
    alignment_recall,
    coin_video_targets,
    coin_windows,
    coin_zero_shot_predictions,
    coin_zero_shot_threshold,
    frame_accuracy,
    htm_align_metrics,
    htm_align_stitch,
    htm_align_video,
    htm_align_windows,
    merge_window_scores,
    multiple_choice_accuracy,
    paragraph_retrieval,
    paragraph_scores,
    recall_at_k,
    retrieval_metrics,
    roc_auc,
)

__all__ = [name for name, value in dict(globals()).items()
           if not name.startswith("_") and not isinstance(value, _types.ModuleType)]
