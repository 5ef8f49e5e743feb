"""Downstream evaluation of Norton (spec §5): metrics on similarity matrices and loaders
for the official benchmark files.  See ``docs/evaluation.md``."""

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

__all__ = [name for name in dir() if not name.startswith("_") and name not in ("loaders", "metrics")]
