"""Caption-by-second similarity of one long video (spec §5.8): the one implementation that
the HTM-Align evaluation and ``norton_jax.align`` share.

Window convention (one for both): windows of ``window`` seconds start at
``0, stride, 2*stride, ...`` below ``T - window // 2`` (the HTM-Align grid of
``eval_zeroshot_align.py``, :func:`norton_jax.evaluate.windows.window_grid`), each covering
``[start, min(T, start + window))``; a video of at most ``window // 2`` seconds gets the one
window ``[0, T)``.  With ``stride <= window // 2`` every second is covered.  Each window is
encoded as ``DSAligner`` does (all ``window`` frame slots, [CLS] attended); ``S[c, t]`` is the
cosine of caption ``c``'s pooled text with the frame output of second ``t``, averaged over
the windows covering ``t`` in which ``c`` is active.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from norton_jax.evaluate.metrics import UNCOVERED, AlignWindow, htm_align_stitch, htm_align_windows
from norton_jax.evaluate.windows import window_grid
from norton_jax.inference import Encoder, unit_normalize

__all__ = ["caption_second_similarity", "htm_align_similarity", "windowed_caption_similarity"]


def windowed_caption_similarity(encoder: Encoder, features: np.ndarray, texts: Sequence[str],
                                windows: Sequence[AlignWindow], *, seq_len: int = 32) -> np.ndarray:
    """``S [captions, T]`` of ``features [T, D]`` over the given windows (their active captions);
    never-covered cells are ``UNCOVERED`` (trap T25)."""
    t = int(features.shape[0])
    if not windows:
        return np.full((len(texts), t), UNCOVERED)
    text = unit_normalize(encoder.texts(texts))  # [C, D]
    _, frames = encoder.segments([np.asarray(features[w.start : w.stop], np.float32) for w in windows], seq_len,
                                 frames=True)  # [W, seq_len, D]
    frames = unit_normalize(frames)
    blocks = [text[w.captions] @ frames[i].T for i, w in enumerate(windows)]
    return htm_align_stitch(t, len(texts), windows, blocks)


def caption_second_similarity(encoder: Encoder, features: np.ndarray, texts: Sequence[str], *,
                              window: int = 32, stride: int = 8) -> np.ndarray:
    """``S [captions, T]``: every caption against every second (window convention in the module
    docstring; HTM-Align's ``active="dense"``).  ``features [T, D]``, ``stride <= window // 2``."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty [T, D] array, got {features.shape}")
    if not 1 <= stride <= window // 2:
        raise ValueError(f"stride must be in [1, window // 2 = {window // 2}] so that every second is "
                         f"covered, got stride {stride} for window {window}")
    t = int(features.shape[0])
    every = np.arange(len(texts))
    spans = window_grid(t, stride=stride, size=window) or [(0, t)]
    windows = [AlignWindow(i, start, stop, every) for i, (start, stop) in enumerate(spans)]
    return windowed_caption_similarity(encoder, features, texts, windows, seq_len=window)


def htm_align_similarity(encoder: Encoder, feat: np.ndarray, texts: Sequence[str], starts, ends, aligned,
                         *, seq_len: int = 32, active: str = "reference") -> np.ndarray:
    """``S [captions, T]`` of one video by the HTM-Align protocol (spec §5.8): cosine of the
    frame outputs (all 32 slots, ``DSAligner``, [CLS] attended) with the captions' pooled text,
    averaged over the 32 s / 8 s windows of the active captions (``active``: see
    :func:`~norton_jax.evaluate.metrics.htm_align_windows`; ``"dense"`` is
    :func:`caption_second_similarity`)."""
    if active == "dense":
        return caption_second_similarity(encoder, feat, texts, window=seq_len, stride=seq_len // 4)
    windows = htm_align_windows(int(feat.shape[0]), starts, ends, aligned, seq_len=seq_len, active=active)
    return windowed_caption_similarity(encoder, feat, texts, windows, seq_len=seq_len)
