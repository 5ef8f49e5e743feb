"""Re-align a noisy transcript to its long video with Norton's transport plan (prompt bucket).

Modules (layer 3; the command line is layer 4):

* :mod:`~norton_jax.align.algorithm`: the method: :class:`AlignConfig`, :class:`Captions`,
  :func:`align_video` (caption-by-second similarity -> temporal prior -> Sinkhorn with the
  alignable prompt bucket -> re-timed spans and rejections), :func:`realign` on a given
  similarity (no model needed); its docstring explains every step and default.
* :mod:`~norton_jax.align.corpus`: :func:`align_store` over a feature store, scored against
  ground truth, optionally writing a filtered store for training.
* :mod:`~norton_jax.align.files`: :func:`read_captions` (CSV / JSON / WebVTT / SRT / Whisper),
  :func:`read_features`, :func:`write_alignment` (the re-timed transcript or the JSON report).
* :mod:`~norton_jax.align.video`: S3D features of a raw video, extracted once and cached.
* :mod:`~norton_jax.align.plot`: :func:`plot_alignment` (matplotlib, PNG).
* ``python -m norton_jax.align`` (:mod:`norton_jax.align.__main__`): the command line.

``alignment_recall`` lives with the HTM-Align metrics (:mod:`norton_jax.evaluate.metrics`) and is
re-exported here; ``main``/``build_parser`` (the command line) and ``video_features`` load on
first use, so importing the package loads neither argparse's flags nor S3D.
"""

from norton_jax.align.algorithm import (
    END_TOLERANCE,
    AlignConfig,
    Captions,
    VideoAlignment,
    align_video,
    bucket_value,
    fit_captions_to_video,
    frame_similarity,
    paired_similarity,
    realign,
    span_distance,
)
from norton_jax.align.corpus import StoreAlignment, align_store, filtered_record
from norton_jax.align.files import (
    OUTPUT_SUFFIXES,
    REJECTED_MARK,
    aligned_cues,
    read_captions,
    read_features,
    write_alignment,
)
from norton_jax.align.plot import plot_alignment
from norton_jax.evaluate.metrics import alignment_recall

_LAZY = ("main", "build_parser", "video_features", "feature_cache_path")

__all__ = [
    "END_TOLERANCE", "OUTPUT_SUFFIXES", "REJECTED_MARK", "AlignConfig", "Captions", "StoreAlignment",
    "VideoAlignment", "align_store", "align_video", "aligned_cues", "alignment_recall", "bucket_value",
    "filtered_record", "fit_captions_to_video", "frame_similarity", "paired_similarity", "plot_alignment",
    "read_captions", "read_features", "realign", "span_distance", "write_alignment", *_LAZY,
]


def __getattr__(name: str):
    """``main``, ``build_parser`` (the CLI) and ``video_features`` are imported on first use."""
    if name in ("main", "build_parser"):
        from norton_jax.align import __main__ as module  # noqa: PLC0415
    elif name in ("video_features", "feature_cache_path"):
        from norton_jax.align import video as module  # noqa: PLC0415
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value
