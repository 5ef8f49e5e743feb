"""Clip-level and video-paragraph retrieval metrics (spec §5.1-5.5), pure functions."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from norton_jax.dtw import OTAM_VARIANTS, dtw_distance, equivalent_columns, otam_distance, reference_pad

PARAGRAPH_METHODS = ("cap_avg", "dtw", "otam")

# ---------------------------------------------------------------------------------------
# Clip-level retrieval (§5.1, §5.5)
# ---------------------------------------------------------------------------------------


def as_matrix(name: str, x) -> np.ndarray:
    """``x`` as a numeric non-empty 2-D array (ValueError naming ``name`` otherwise)."""
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
    sim = as_matrix("sim", sim)
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
    scores = as_matrix("scores", scores)
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
    sim = as_matrix("sim", sim)
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
