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
:func:`htm_align_metrics`
:func:`roc_auc`                        ``sklearn.metrics.roc_auc_score`` (binary)   5.8
:func:`multiple_choice_accuracy`       ``QAPredictor`` + ``QAMetric``               5.6
:func:`coin_windows`,                  ``COINActionSegmentationAligner``,           5.7
:func:`coin_video_targets`,            ``COINPredictor._merge_windows``,
:func:`merge_window_scores`,           ``COINZSPredictor``,
:func:`coin_zero_shot_threshold`,      ``COINActionSegmentationMetric``
:func:`coin_zero_shot_predictions`,
:func:`frame_accuracy`
=====================================  ==========================================  =======
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from norton_jax.dtw import OTAM_VARIANTS, dtw_distance, equivalent_columns, otam_distance, reference_pad

PARAGRAPH_METHODS = ("cap_avg", "dtw", "otam")

# ---------------------------------------------------------------------------------------
# Clip-level retrieval (§5.1, §5.5)
# ---------------------------------------------------------------------------------------


def _as_matrix(name: str, x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D matrix, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
    return x


def retrieval_ranks(sim: np.ndarray) -> np.ndarray:
    """0-based rank of column ``i`` in row ``i`` of ``sim [queries, targets]`` (descending).

    As the reference: ``argsort(row)[::-1]`` (numpy's default sort, so ties break like
    the reference's), position of the query's own index.
    """
    sim = _as_matrix("sim", sim)
    n, m = sim.shape
    if m < n:
        raise ValueError(f"sim [{n}, {m}]: query i's target is column i, so it needs >= {n} columns")
    order = np.argsort(sim, axis=1)[:, ::-1]  # [queries, targets]
    return np.argmax(order == np.arange(n)[:, None], axis=1)


def retrieval_metrics(sim: np.ndarray) -> dict[str, float]:
    """R@1/5/10 and median rank of ``sim [queries, targets]``; query ``i``'s target is column ``i``.

    Spec §5.1 / §5.5 (``RetrievalMetric``): ``R@K`` = fraction of queries whose target has
    0-based rank ``< K`` in the descending order of its row; ``MR = median(rank) + 1``.
    Scores are whatever the caller computed (the reference: raw dot products, trap T20).
    Returns ``{"R1", "R5", "R10", "MR"}``.
    """
    ranks = retrieval_ranks(sim)
    return {
        "R1": float(np.mean(ranks == 0)),
        "R5": float(np.mean(ranks < 5)),
        "R10": float(np.mean(ranks < 10)),
        "MR": float(np.median(ranks) + 1),
    }


def recall_at_k(scores: np.ndarray, targets: np.ndarray | None = None) -> dict[str, float]:
    """``FullVideoRetrievalMetric.recall`` (spec §5.2): R@1/5/10 of ``scores [queries, targets]``.

    Ascending ``np.argsort`` of each row (numpy's default sort, as the reference); R@1 =
    the last index is the target, R@K = the target is among the last K.  ``targets``
    defaults to ``arange(queries)``.  Returns ``{"R1", "R5", "R10"}``.
    """
    scores = _as_matrix("scores", scores)
    gts = np.arange(scores.shape[0]) if targets is None else np.asarray(targets)
    order = np.argsort(scores, axis=1)  # [queries, targets]
    return {
        f"R{k}": float(np.mean(np.any(order[:, -k:] == gts[:, None], axis=1))) for k in (1, 5, 10)
    }


# ---------------------------------------------------------------------------------------
# Video-paragraph retrieval (§5.2-5.4)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParagraphScores:
    """Video-by-video scores of one paragraph-retrieval method."""

    scores: np.ndarray  # [videos, videos]: row = paragraph (query), column = video; higher = better
    video_ids: list[str]  # row/column order (sorted ids)
    method: str
    background: bool


def _group(ids: Sequence[str], what: str) -> dict[str, np.ndarray]:
    ids = [str(i) for i in ids]
    groups: dict[str, list[int]] = {}
    for pos, vid in enumerate(ids):
        groups.setdefault(vid, []).append(pos)
    if not groups:
        raise ValueError(f"{what} is empty")
    return {vid: np.asarray(pos, dtype=np.int64) for vid, pos in groups.items()}


def _padded_index(groups: dict[str, np.ndarray], order: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``[videos, max_len]`` indices (0 where padded) and lengths, in ``order``."""
    lengths = np.asarray([len(groups[v]) for v in order], dtype=np.int64)
    index = np.zeros((len(order), int(lengths.max())), dtype=np.int64)
    for u, vid in enumerate(order):
        index[u, : lengths[u]] = groups[vid]
    return index, lengths


def _cap_avg_scores(sim, caps, cols, videos) -> np.ndarray:
    """Cap. Avg. (spec §5.2): ``A[c, v] = max_{k in v} sim[c, k]``, ``score[u, v] = mean_{c in u} A[c, v]``."""
    col_order = np.concatenate([cols[v] for v in videos])
    col_starts = np.cumsum([0] + [len(cols[v]) for v in videos[:-1]])
    best = np.maximum.reduceat(sim[:, col_order], col_starts, axis=1)  # [captions, videos]
    row_order = np.concatenate([caps[v] for v in videos])
    row_counts = np.asarray([len(caps[v]) for v in videos])
    row_starts = np.cumsum(np.concatenate([[0], row_counts[:-1]]))
    return np.add.reduceat(best[row_order].astype(np.float64), row_starts, axis=0) / row_counts[:, None]


def _select_windows(cost, u_rows, n_caps, col_index, n_wins, keep_table, width: int):
    """Background-kept window selection (spec §5.3, trap T23), inside ``jit``.

    For query videos ``u_rows [B, MT]`` (``n_caps [B]`` real captions) and all videos
    ``col_index [V, MV]`` (``n_wins [V]`` real windows): per pair keep the ``int(1.3 n)``
    windows whose minimum cost over the paragraph's captions is smallest (ties: lower
    index first), in temporal order.  Returns the kept blocks ``[B, V, MT, width]`` and the
    kept counts ``[B, V]``.
    """
    mt = u_rows.shape[1]
    valid_rows = jnp.arange(mt)[None, :, None] < n_caps[:, None, None]  # [B, MT, 1]
    row_min = jnp.where(valid_rows, cost[u_rows], jnp.inf).min(axis=1)  # [B, clips]
    mn = row_min[:, col_index]  # [B, V, MV]
    mn = jnp.where(jnp.arange(col_index.shape[1]) < n_wins[:, None], mn, jnp.inf)
    keep_count = jnp.minimum(keep_table[n_caps][:, None], n_wins[None, :])  # [B, V]
    _, best = jax.lax.top_k(-mn, width)  # [B, V, width]: smallest first, ties by lower index
    best = jnp.where(jnp.arange(width) < keep_count[..., None], best, col_index.shape[1])
    chosen = jnp.sort(best, axis=-1)  # kept windows in temporal order, then the sentinels
    cols = jnp.take_along_axis(
        jnp.broadcast_to(col_index[None], (u_rows.shape[0], *col_index.shape)),
        jnp.minimum(chosen, col_index.shape[1] - 1), axis=-1,
    )  # [B, V, width]: column of the clip matrix
    x = cost[u_rows[:, None, :, None], cols[:, :, None, :]]  # [B, V, MT, width]
    return x, keep_count


@functools.partial(jax.jit, static_argnames=("method", "background", "otam_variant", "mt", "mv", "width"))
def _paragraph_chunk(
    cost, u_rows, n_caps, col_index, n_wins, keep_table, *, method, background, otam_variant, mt, mv, width
):
    """Distances ``[B, V]`` of the query videos ``u_rows [B, MT]`` (``n_caps [B]`` captions)
    to every video (``col_index [V, MV]``, ``n_wins [V]`` clips/windows); spec §5.2-5.4."""
    shape = (u_rows.shape[0], col_index.shape[0])
    n = jnp.broadcast_to(n_caps[:, None], shape)  # [B, V]
    if background:
        x, k = _select_windows(cost, u_rows, n_caps, col_index, n_wins, keep_table, width)
    else:
        x = cost[u_rows[:, None, :, None], col_index[None, :, None, :]]  # [B, V, MT, MV]
        k = jnp.broadcast_to(n_wins[None, :], shape)  # [B, V]
    if method == "dtw" or not background:
        scale = (mt * mv) / (n * k)  # 5.2 (DTW and OTAM) and 5.3 DTW
    else:
        scale = max(mt, mv) / jnp.maximum(n, k)  # 5.3 OTAM
    # the reference multiplies its float32 block by a Python float -> the factor in float32
    x = x * scale.astype(x.dtype)[..., None, None]
    # x is [B, V, MT, width]: at most `width` real columns, MT rows (exact column crop)
    if method == "dtw":
        keep = equivalent_columns(mv, width, otam=False)
        return dtw_distance(reference_pad(x, n, k, mt, mv, otam=False, columns=keep))
    forward = reference_pad(x, n, k, mt, mv, otam=True, columns=equivalent_columns(mv, width, otam=True))
    backward = reference_pad(
        jnp.swapaxes(x, -1, -2), k, n, mt, mv, otam=True, columns=equivalent_columns(mv, mt, otam=True)
    )
    return otam_distance(forward, variant=otam_variant) + otam_distance(backward, variant=otam_variant)


def paragraph_scores(
    sim: np.ndarray,
    caption_video_ids: Sequence[str],
    clip_video_ids: Sequence[str],
    *,
    method: str,
    background: bool,
    otam_variant: str = "reference",
    chunk_elements: int = 1 << 20,
) -> ParagraphScores:
    """Paragraph-to-video scores ``[videos, videos]`` of one method (spec §5.2-5.4).

    ``sim [captions, clips]``: raw caption-clip scores (rows = captions, columns = clips,
    or whole-video windows when ``background``); ``caption_video_ids[r]`` / ``clip_video_ids[c]``
    name the video of row ``r`` / column ``c``; within a video, rows and columns are in
    temporal order (they need not be contiguous).  Videos are sorted by id.

    * ``cap_avg``: per caption the best clip of each video, averaged over the paragraph.
    * ``dtw``: cost ``0 - sim`` (``3 - sim`` with background), each pair's block rescaled by
      ``MT*MV / (n*k)`` and padded with ``DTW_pad`` to ``MT x MV`` (``MT``/``MV`` = most
      captions/clips of any video); score = ``-D[-1, -1]``.
    * ``otam``: cost ``0 - sim``, scale ``MT*MV/(n*k)`` (``max(MT, MV)/max(n, k)`` with
      background); OTAM of ``OTAM_pad(X, MT, MV)`` plus OTAM of ``OTAM_pad(X^T, MT, MV)``
      (negative padding crops, trap T22); ``otam_variant="textbook"`` adds the column-1
      minimum instead of subtracting it.
    * ``background=True`` first keeps, per pair, the ``int(1.3 * n)`` windows with the
      smallest caption-minimum cost, re-sorted in time (trap T23).

    In the background-removed protocol (rows and columns are the same clips) ``MT = MV = M``
    and every rule above is the reference's.
    """
    if method not in PARAGRAPH_METHODS:
        raise ValueError(f"method must be one of {PARAGRAPH_METHODS}, got {method!r}")
    if otam_variant not in OTAM_VARIANTS:
        raise ValueError(f"otam_variant must be one of {OTAM_VARIANTS}, got {otam_variant!r}")
    sim = _as_matrix("sim", sim)
    if not np.issubdtype(sim.dtype, np.floating):
        sim = sim.astype(np.float32)
    if len(caption_video_ids) != sim.shape[0] or len(clip_video_ids) != sim.shape[1]:
        raise ValueError(
            f"sim is {sim.shape} but got {len(caption_video_ids)} caption ids and "
            f"{len(clip_video_ids)} clip ids"
        )
    caps = _group(caption_video_ids, "caption_video_ids")
    cols = _group(clip_video_ids, "clip_video_ids")
    if set(caps) != set(cols):
        only_caps = sorted(set(caps) - set(cols))[:5]
        only_cols = sorted(set(cols) - set(caps))[:5]
        raise ValueError(
            "every video needs captions and clips; videos with captions only: "
            f"{only_caps}, with clips only: {only_cols}"
        )
    videos = sorted(caps)
    cap_index, cap_len = _padded_index(caps, videos)  # [V, MT], [V]
    col_index, col_len = _padded_index(cols, videos)  # [V, MV], [V]
    if method == "cap_avg":
        scores = _cap_avg_scores(sim, caps, cols, videos)
        return ParagraphScores(scores, videos, method, background)
    mt, mv = cap_index.shape[1], col_index.shape[1]
    offset = 3.0 if (background and method == "dtw") else 0.0
    cost = jnp.asarray((np.asarray(offset, sim.dtype) - sim).astype(sim.dtype))  # [captions, clips]
    keep_table = jnp.asarray([int(1.3 * n) for n in range(mt + 1)])  # Python float, as the reference
    width = min(int(1.3 * mt), mv) if background else mv
    n_videos = len(videos)
    per_query = n_videos * mt * (width + 2)
    chunk = max(1, min(n_videos, chunk_elements // per_query))
    dist = np.empty((n_videos, n_videos), dtype=np.float64)
    args = dict(method=method, background=background, otam_variant=otam_variant, mt=mt, mv=mv, width=width)
    col_index_j, col_len_j = jnp.asarray(col_index), jnp.asarray(col_len)
    for start in range(0, n_videos, chunk):
        # fixed chunk size (the last one wraps around) so the jitted pipeline compiles once
        us = np.arange(start, start + chunk) % n_videos
        d = _paragraph_chunk(
            cost, jnp.asarray(cap_index[us]), jnp.asarray(cap_len[us]), col_index_j, col_len_j,
            keep_table, **args,
        )
        stop = min(start + chunk, n_videos)
        dist[start:stop] = np.asarray(d)[: stop - start]
    return ParagraphScores(-dist, videos, method, background)


def paragraph_retrieval(
    sim: np.ndarray,
    caption_video_ids: Sequence[str],
    clip_video_ids: Sequence[str],
    *,
    method: str,
    background: bool,
    otam_variant: str = "reference",
) -> dict[str, float]:
    """Video-paragraph retrieval R@1/5/10 (spec §5.2 without, §5.3 with background).

    See :func:`paragraph_scores` for the inputs and methods; recall as
    ``FullVideoRetrievalMetric.recall`` (:func:`recall_at_k`).  Returns ``{"R1", "R5", "R10"}``.
    """
    result = paragraph_scores(
        sim, caption_video_ids, clip_video_ids,
        method=method, background=background, otam_variant=otam_variant,
    )
    return recall_at_k(result.scores)


# ---------------------------------------------------------------------------------------
# HTM-Align (§5.8)
# ---------------------------------------------------------------------------------------

UNCOVERED = -6e4  # value given to never-covered cells (trap T25)


@dataclass(frozen=True)
class AlignWindow:
    """One sliding window of the HTM-Align protocol and its active captions."""

    index: int  # position among all window starts (the reference's ``idx``)
    start: int  # first frame (second)
    stop: int  # one past the last frame: min(T, start + seq_len)
    captions: np.ndarray  # ascending indices of the active captions


def htm_align_windows(
    num_frames: int,
    starts: Sequence[float],
    ends: Sequence[float],
    aligned: Sequence[bool],
    *,
    seq_len: int = 32,
    edge_windows: int = 4,
    active: str = "reference",
) -> list[AlignWindow]:
    """The windows of ``eval_zeroshot_align.py`` (spec §5.8) and their active captions.

    ``active="reference"`` (default) chooses the captions as below; ``active="dense"``
    keeps every window with every caption active, so each caption is scored on every
    second.  The reference's choice depends on where the *non*-alignable captions are: a
    video without any gets no window at all (every cell uncovered, recall 0), and alignable
    captions far from non-alignable ones are never scored, so its recall also measures how
    densely a corpus interleaves unalignable lines (see ``docs/evaluation.md``).

    Window starts ``arange(0, T - seq_len // 2, seq_len // 4)`` (0, 8, 16, ... for 32 s);
    window = frames ``[start, min(T, start + seq_len))``.  Active captions, chosen without
    the annotated times: the *non*-alignable captions whose mid-time lies in
    ``[start - seq_len, start + 2 * seq_len]``; none -> the window is skipped; else every
    caption between the smallest and largest such index (inclusive).  The first
    ``edge_windows`` windows start the range at caption 0; otherwise (``elif``, as the
    reference) the last ``edge_windows`` windows extend it to the last caption.
    """
    starts_a = np.asarray(starts, dtype=np.float64)
    ends_a = np.asarray(ends, dtype=np.float64)
    aligned_a = np.asarray(aligned).astype(bool)
    if not (starts_a.shape == ends_a.shape == aligned_a.shape) or starts_a.ndim != 1:
        raise ValueError("starts, ends and aligned must be 1-D and of equal length")
    if active not in ("reference", "dense"):
        raise ValueError(f"active must be 'reference' or 'dense', got {active!r}")
    mid = (starts_a + ends_a) / 2
    candidates = np.flatnonzero(~aligned_a)
    steps = np.arange(0, num_frames - seq_len // 2, seq_len // 4)
    if active == "dense":
        every = np.arange(len(starts_a))
        return [AlignWindow(idx, int(st), min(num_frames, int(st) + seq_len), every) for idx, st in enumerate(steps)]
    windows = []
    for idx, st in enumerate(steps):
        st = int(st)
        near = candidates[(st - seq_len <= mid[candidates]) & (mid[candidates] <= st + 2 * seq_len)]
        if len(near) == 0:
            continue
        left, right = int(near.min()), int(near.max())
        if idx <= edge_windows - 1:
            left = 0
        elif idx >= len(steps) - edge_windows:
            right = len(starts_a) - 1
        windows.append(AlignWindow(idx, st, min(num_frames, st + seq_len), np.arange(left, right + 1)))
    return windows


def htm_align_stitch(
    num_frames: int,
    num_captions: int,
    windows: Sequence[AlignWindow],
    window_sims: Sequence[np.ndarray],
) -> np.ndarray:
    """Caption-by-second similarity ``S [captions, T]`` of one video (spec §5.8).

    ``window_sims[w] [len(windows[w].captions), L]`` (``L >= stop - start``; the reference
    passes all 32 frame slots) are cosine similarities of the active captions to the
    window's frames; the first ``stop - start`` columns are summed into ``S`` and divided by
    the coverage count (``max(count, 1e-5)``); cells that end up exactly 0 (never covered)
    become ``-6e4``.
    """
    if len(windows) != len(window_sims):
        raise ValueError(f"{len(windows)} windows but {len(window_sims)} similarity blocks")
    total = np.zeros((num_captions, num_frames), dtype=np.float64)
    count = np.zeros((num_captions, num_frames), dtype=np.float64)
    for w, block in zip(windows, window_sims):
        block = np.asarray(block, dtype=np.float64)
        length = w.stop - w.start
        if block.ndim != 2 or block.shape[0] != len(w.captions) or block.shape[1] < length:
            raise ValueError(
                f"window at {w.start}s needs a [{len(w.captions)}, >={length}] block, got {block.shape}"
            )
        total[w.captions, w.start : w.stop] += block[:, :length]
        count[w.captions, w.start : w.stop] += 1
    sim = total / np.maximum(count, 1e-5)
    return np.where(sim == 0, UNCOVERED, sim)


def htm_align_video(
    num_frames: int,
    starts: Sequence[float],
    ends: Sequence[float],
    aligned: Sequence[bool],
    window_similarity: Callable[[int, int, np.ndarray], np.ndarray],
    *,
    seq_len: int = 32,
) -> np.ndarray:
    """:func:`htm_align_windows` + a model callback + :func:`htm_align_stitch` -> ``S [captions, T]``.

    ``window_similarity(start, stop, caption_indices)`` returns the ``[len(captions), >= stop-start]``
    cosine similarities of those captions to the frames ``[start, stop)``.
    """
    windows = htm_align_windows(num_frames, starts, ends, aligned, seq_len=seq_len)
    sims = [window_similarity(w.start, w.stop, w.captions) for w in windows]
    return htm_align_stitch(num_frames, len(starts), windows, sims)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of binary ``labels`` ranked by ``scores`` (ties count half).

    Equal to ``sklearn.metrics.roc_auc_score`` for binary labels (Mann-Whitney U with
    average ranks).  ``nan`` when only one class is present (sklearn raises instead).
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # average 1-based rank of each run of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    run_starts = np.concatenate([[0], boundaries])
    run_ends = np.concatenate([boundaries, [scores.size]])
    run_rank = (run_starts + run_ends + 1) / 2.0
    ranks[order] = np.repeat(run_rank, run_ends - run_starts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def htm_align_metrics(
    sims: Sequence[np.ndarray],
    starts: Sequence[Sequence[float]],
    ends: Sequence[Sequence[float]],
    aligned: Sequence[Sequence[bool]],
) -> dict[str, float]:
    """HTM-Align recall and ROC-AUC over videos (spec §5.8, trap T25).

    ``sims[v] [captions, T]`` from :func:`htm_align_stitch`.  An alignable caption is a hit
    when ``floor(start) <= argmax_t S[c, t] <= ceil(end)`` (annotated times, inclusive);
    ``recall`` is the mean over all alignable captions of all videos.  ``auc`` is
    :func:`roc_auc` of the alignable flags against ``max_t S[c, t]`` over all captions.
    Returns ``{"recall", "auc", "num_alignable", "num_captions"}``.
    """
    if not (len(sims) == len(starts) == len(ends) == len(aligned)):
        raise ValueError("sims, starts, ends and aligned need one entry per video")
    hits, labels, best = [], [], []
    for v, s in enumerate(sims):
        s = np.asarray(s)
        flags = np.asarray(aligned[v]).astype(bool)
        if s.ndim != 2 or s.shape[0] != len(flags):
            raise ValueError(f"video {v}: sims {s.shape} does not match {len(flags)} captions")
        argmax = np.argmax(s, axis=1)
        for c in np.flatnonzero(flags):
            hits.append(math.floor(starts[v][c]) <= argmax[c] <= math.ceil(ends[v][c]))
        labels.append(flags)
        best.append(s.max(axis=1))
    labels_a = np.concatenate(labels) if labels else np.zeros(0, bool)
    return {
        "recall": float(np.mean(hits)) if hits else float("nan"),
        "auc": roc_auc(labels_a, np.concatenate(best)) if best else float("nan"),
        "num_alignable": len(hits),
        "num_captions": int(labels_a.size),
    }


# ---------------------------------------------------------------------------------------
# MSR-VTT multiple choice (§5.6)
# ---------------------------------------------------------------------------------------


def multiple_choice_accuracy(scores: np.ndarray, answers: Sequence[int]) -> dict[str, float]:
    """Multiple-choice accuracy (spec §5.6, ``QAPredictor`` + ``QAMetric``).

    ``scores [questions, options]`` (the reference: raw dot product of the pooled video with
    each option's pooled text); prediction = ``argmax`` (first on ties); ``answers`` 0-based.
    Returns ``{"acc"}``.
    """
    scores = _as_matrix("scores", scores)
    answers = np.asarray(answers)
    if answers.shape != (scores.shape[0],):
        raise ValueError(f"answers must be [{scores.shape[0]}], got {answers.shape}")
    if np.any(answers < 0) or np.any(answers >= scores.shape[1]):
        raise ValueError(f"answers must be in [0, {scores.shape[1]})")
    return {"acc": float(np.mean(np.argmax(scores, axis=1) == answers))}


# ---------------------------------------------------------------------------------------
# COIN action segmentation (§5.7)
# ---------------------------------------------------------------------------------------


def coin_windows(num_frames: int, *, stride: int = 16, size: int = 32) -> list[tuple[int, int]]:
    """Sliding windows ``[(start, stop), ...]`` of the COIN aligner/predictor (spec §5.7).

    Starts ``0, stride, 2*stride, ...``; ``stop = start + min(T - start, size)``; stops after
    the window that reaches the end.  ``stride`` 16 for testing (8 for training).
    """
    if num_frames < 1 or stride < 1 or size < 1:
        raise ValueError("num_frames, stride and size must be positive")
    windows = []
    for start in range(0, num_frames, stride):
        windows.append((start, start + min(num_frames - start, size)))
        if num_frames - start <= size:
            break
    return windows


def coin_video_targets(num_frames: int, segments: Sequence[tuple[float, float, int]]) -> np.ndarray:
    """Per-second targets ``[T]`` (spec §5.7): 0 = background, then each segment in order
    writes its label id on ``[floor(start), ceil(end))`` clipped to the video."""
    targets = np.zeros(num_frames, dtype=np.int64)
    for start, end, label in segments:
        lo = max(0, math.floor(start))
        hi = min(num_frames, math.ceil(end))
        if hi > lo:
            targets[lo:hi] = int(label)
    return targets


def merge_window_scores(
    num_frames: int,
    window_scores: Sequence[np.ndarray],
    *,
    stride: int = 16,
    size: int = 32,
) -> np.ndarray:
    """Average per-frame scores of overlapping windows -> ``[T, classes]`` (``_merge_windows``).

    ``window_scores[w] [L_w, classes]`` with ``L_w >= stop - start`` of window ``w`` of
    :func:`coin_windows` (padded frame slots beyond are ignored); every frame's scores are
    summed over the windows covering it and divided by their number.
    """
    windows = coin_windows(num_frames, stride=stride, size=size)
    if len(window_scores) != len(windows):
        raise ValueError(f"{num_frames} frames make {len(windows)} windows, got {len(window_scores)} score blocks")
    first = np.asarray(window_scores[0])
    total = np.zeros((num_frames, first.shape[-1]), dtype=np.float64)
    count = np.zeros((num_frames, 1), dtype=np.float64)
    for (start, stop), block in zip(windows, window_scores):
        block = np.asarray(block, dtype=np.float64)
        if block.ndim != 2 or block.shape[0] < stop - start or block.shape[1] != total.shape[1]:
            raise ValueError(f"window at {start}s needs [>={stop - start}, {total.shape[1]}] scores, got {block.shape}")
        total[start:stop] += block[: stop - start]
        count[start:stop] += 1
    return total / count


def coin_zero_shot_threshold(label_embeddings: np.ndarray) -> float:
    """``lbd`` = largest off-diagonal entry of ``Lab Lab^T`` (raw dot products; spec §5.7, T24)."""
    lab = _as_matrix("label_embeddings", label_embeddings).astype(np.float64)
    if lab.shape[0] < 2:
        raise ValueError("need at least two labels for the zero-shot threshold")
    gram = lab @ lab.T
    np.fill_diagonal(gram, -np.inf)
    return float(gram.max())


def coin_zero_shot_predictions(frame_scores: np.ndarray, threshold: float) -> np.ndarray:
    """Zero-shot frame labels ``[T]``: ``argmax + 1`` where the best score ``> threshold``, else 0.

    ``frame_scores [T, labels]`` are merged (:func:`merge_window_scores`) raw dot products of
    the frame hidden states with the label embeddings (trap T24).
    """
    frame_scores = _as_matrix("frame_scores", frame_scores)
    best = frame_scores.max(axis=1)
    return np.where(best > threshold, np.argmax(frame_scores, axis=1) + 1, 0).astype(np.int64)


def frame_accuracy(predictions: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> dict[str, float]:
    """Frame accuracy over all test frames concatenated (``COINActionSegmentationMetric``).

    ``predictions[v]``/``targets[v]`` are per-frame class ids of video ``v`` (or one
    concatenated array each).  Returns ``{"frame_acc", "num_frames"}``.
    """
    pred = np.concatenate([np.atleast_1d(np.asarray(p)) for p in predictions]) if len(predictions) else np.zeros(0)
    true = np.concatenate([np.atleast_1d(np.asarray(t)) for t in targets]) if len(targets) else np.zeros(0)
    if pred.shape != true.shape:
        raise ValueError(f"{pred.size} predicted frames but {true.size} target frames")
    if pred.size == 0:
        raise ValueError("no frames to score")
    return {"frame_acc": 1.0 - float(np.sum(pred != true)) / pred.size, "num_frames": int(pred.size)}
