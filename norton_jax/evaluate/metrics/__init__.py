"""Downstream metrics of the reference evaluation (spec §5), as pure functions.

Every function takes similarity scores (or per-window scores) that a model produced and
returns plain numbers, so the protocols can be tested without a model and an evaluation
CLI only has to embed the inputs the loaders (:mod:`norton_jax.evaluate.loaders`) return.

Defaults reproduce the reference code (``mmpt/evaluators/metric.py``,
``mmpt/evaluators/predictor.py``, ``mmpt/utils/metrics.py``, ``eval_zeroshot_align.py``),
quirks included (traps T20-T25); textbook variants are keyword options.

=====================================  ==========================================  =======
function                               reproduces                                  spec
=====================================  ==========================================  =======
:func:`retrieval_metrics`              ``RetrievalMetric`` (R@1/5/10, MR)           5.1, 5.5
:func:`paragraph_retrieval`            ``FullVideoRetrievalMetric`` /               5.2-5.4
                                       ``FullVideoBGRetrievalMetric``
:func:`htm_align_windows`,             ``eval_zeroshot_align.py`` overlap-seq       5.8
:func:`htm_align_stitch`,
:func:`htm_align_metrics`,
:func:`alignment_recall`
:func:`roc_auc`                        ``sklearn.metrics.roc_auc_score`` (binary)   5.8
:func:`multiple_choice_accuracy`       ``QAPredictor`` + ``QAMetric``               5.6
:func:`coin_windows`,                  ``COINActionSegmentationAligner``,           5.7
:func:`coin_video_targets`,            ``COINPredictor._merge_windows``,
:func:`merge_window_scores`,           ``COINZSPredictor``,
:func:`coin_zero_shot_threshold`,      ``COINActionSegmentationMetric``
:func:`coin_zero_shot_predictions`,
:func:`frame_accuracy`
=====================================  ==========================================  =======

Submodules: :mod:`.retrieval` (§5.1-5.5), :mod:`.htm_align` (§5.8), :mod:`.coin` (§5.6, §5.7);
the sliding windows and their stitching are :mod:`norton_jax.evaluate.windows`.
"""

from norton_jax.evaluate.metrics.coin import (
    coin_video_targets,
    coin_windows,
    coin_zero_shot_predictions,
    coin_zero_shot_threshold,
    frame_accuracy,
    merge_window_scores,
    multiple_choice_accuracy,
)
from norton_jax.evaluate.metrics.htm_align import (
    UNCOVERED,
    AlignWindow,
    alignment_recall,
    htm_align_metrics,
    htm_align_stitch,
    htm_align_video,
    htm_align_windows,
    roc_auc,
)
from norton_jax.evaluate.metrics.retrieval import (
    PARAGRAPH_METHODS,
    ParagraphScores,
    as_matrix,
    paragraph_retrieval,
    paragraph_scores,
    recall_at_k,
    retrieval_metrics,
    retrieval_ranks,
)
