"""Sliding windows over a video's seconds and the stitching of per-window scores.

One implementation for every protocol that scores a long video window by window: COIN
(spec §5.7), YouCookII with background (§5.3), HTM-Align (§5.8) and the dense
caption-by-second similarity that ``norton_jax.align`` uses.

* :func:`sliding_windows` - windows ``[start, min(T, start + size))`` at starts
  ``0, stride, 2*stride, ...``, stopping after the first window that reaches the end
  (the COIN aligner's rule: every second is covered, no window starts after that).
* :func:`window_grid` - the HTM-Align grid: starts ``arange(0, T - size // 2, stride)``
  (``eval_zeroshot_align.py``), so the last windows may be shorter than ``size``.
* :func:`stitch_windows` - sums per-window blocks into a ``[rows, T]`` total and counts
  how many windows cover each cell; the protocols divide one by the other.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["sliding_windows", "stitch_windows", "window_grid"]


def sliding_windows(num_frames: int, *, stride: int, size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: starts ``0, stride, ...``; ``stop = start + min(T - start, size)``;
    the list ends with the first window that reaches frame ``T``."""
    if num_frames < 1 or stride < 1 or size < 1:
        raise ValueError(f"num_frames, stride and size must be positive, got {num_frames}, {stride}, {size}")
    windows = []
    for start in range(0, num_frames, stride):
        windows.append((start, start + min(num_frames - start, size)))
        if num_frames - start <= size:
            break
    return windows


def window_grid(num_frames: int, *, stride: int, size: int) -> list[tuple[int, int]]:
    """The HTM-Align grid (spec §5.8): starts ``arange(0, T - size // 2, stride)``, windows
    ``[start, min(T, start + size))``.  Empty when ``T <= size // 2`` (as the reference)."""
    if stride < 1 or size < 1:
        raise ValueError(f"stride and size must be positive, got {stride}, {size}")
    return [(int(s), min(num_frames, int(s) + size)) for s in np.arange(0, num_frames - size // 2, stride)]


def stitch_windows(
    num_rows: int,
    num_frames: int,
    spans: Sequence[tuple[int, int]],
    blocks: Sequence[np.ndarray],
    rows: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(total [rows, T], count [rows, T])`` float64 of per-window score blocks.

    ``blocks[w] [len(rows[w]), L_w]`` with ``L_w >= stop - start`` of ``spans[w]``: its first
    ``stop - start`` columns are added to ``total[rows[w], start:stop]`` and ``count`` of those
    cells goes up by one (``rows`` None: every row in every window).  Slots past ``stop``
    (padding of a short window) are ignored.
    """
    if len(spans) != len(blocks) or (rows is not None and len(rows) != len(spans)):
        raise ValueError(f"{len(spans)} windows but {len(blocks)} score blocks")
    total = np.zeros((num_rows, num_frames), dtype=np.float64)
    count = np.zeros((num_rows, num_frames), dtype=np.float64)
    every = np.arange(num_rows)
    for w, ((start, stop), block) in enumerate(zip(spans, blocks)):
        block = np.asarray(block, dtype=np.float64)
        idx = every if rows is None else np.asarray(rows[w])
        length = stop - start
        if block.ndim != 2 or block.shape[0] != len(idx) or block.shape[1] < length:
            raise ValueError(f"window at {start}s needs a [{len(idx)}, >={length}] block, got {block.shape}")
        total[idx, start:stop] += block[:, :length]
        count[idx, start:stop] += 1
    return total, count
