"""Reference clip/caption sampling (spec §4.2) and batch assembly (spec §4.3).

One training example = one video -> K clip-caption pairs. For each clip independently:

1. ``c0`` uniform over the video's captions; target length ``Lt`` uniform in [8, 32].
2. Caption merging from ``[lo, hi) = [c0, c0+1)``: while (lo > 0 or hi < n) and
   tokens < Lt and span < 256 s: with probability 1/2 append caption ``hi`` (if hi < n), else
   prepend ``lo - 1`` (if lo > 0), else append if possible, else stop
   (span = max(0, end[hi-1] - start[lo])).
3. Clip centre ``c`` uniform in [floor(start[lo]), ceil(end[hi-1])] (midpoint if empty),
   clamped to [0, T-1]; length ``l`` uniform in [3, 16]; the clip grows from [c, c) one second at
   a time (forced at the video borders, else right/left with probability 1/2) -> [s, e).
4. ``vfeats[:e-s] = feat[s:e]`` (at most 16 frames), caption = concatenated ids of the merged
   captions cut to 29 tokens, laid out ``[CLS] [SEP] w.. [SEP] [PAD]..`` (spec §3.2).

The K clips are then sorted by (text_start, video_start, text_end, video_end).

Randomness: the reference uses Python's ``random``; here every draw comes from a
``numpy.random.Generator`` (PCG64) seeded with ``(seed, epoch, video_position)``
(:func:`video_rng`), so a video's clips depend only on those three numbers - not on the
host count, the worker interleaving or the batch it lands in. Distributions equal the
reference's; the random streams do not (bit-parity with Python ``random`` is not a goal).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from data_pipeline.tokenization import CLS_ID, MAX_LEN, MAX_VIDEO_LEN, PAD_ID, SEP_ID

CLIPS_PER_VIDEO = 16
MIN_TEXT_LEN, MAX_TEXT_LEN = 8, 32
MIN_CLIP_LEN, MAX_CLIP_LEN = 3, 16
MAX_SPAN_SECONDS = 256


def video_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The Generator used for video ``position`` of a split in ``epoch``."""
    return np.random.Generator(np.random.PCG64([int(seed), int(epoch), int(position)]))


def merge_captions(n_tokens: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                   rng: np.random.Generator) -> tuple[int, int]:
    """Steps 1-2: pick a caption and merge neighbours. Returns ``(lo, hi)`` (caption range)."""
    n = len(n_tokens)
    c0 = int(rng.integers(0, n))
    target = int(rng.integers(MIN_TEXT_LEN, MAX_TEXT_LEN + 1))
    lo, hi = c0, c0 + 1
    tokens = int(n_tokens[c0])
    span = max(0.0, float(ends[c0] - starts[c0]))
    while (lo > 0 or hi < n) and tokens < target and span < MAX_SPAN_SECONDS:
        if rng.random() < 0.5 and hi < n:
            tokens += int(n_tokens[hi])
            hi += 1
        elif lo > 0:
            lo -= 1
            tokens += int(n_tokens[lo])
        elif hi < n:
            tokens += int(n_tokens[hi])
            hi += 1
        else:  # pragma: no cover - excluded by the loop condition
            break
        span = max(0.0, float(ends[hi - 1] - starts[lo]))
    return lo, hi


def sample_clip(start_s: float, end_s: float, num_frames: int, rng: np.random.Generator) -> tuple[int, int]:
    """Step 3: a random 3-16 s clip ``[s, e)`` whose centre lies in ``[start_s, end_s]``."""
    low, high = math.floor(start_s), math.ceil(end_s)
    c = int(rng.integers(low, high + 1)) if low < high else (low + high) // 2
    c = min(max(c, 0), num_frames - 1)
    length = int(rng.integers(MIN_CLIP_LEN, MAX_CLIP_LEN + 1))
    s = e = c
    for _ in range(length):
        if not (s > 0 or e < num_frames):
            break
        if s <= 0:
            e += 1
        elif e >= num_frames:
            s -= 1
        elif rng.random() > 0.5:
            e += 1
        else:
            s -= 1
    return s, e


def sample_video(features: np.ndarray, starts: np.ndarray, ends: np.ndarray, tokens: Sequence[np.ndarray],
                 rng: np.random.Generator, *, clips_per_video: int = CLIPS_PER_VIDEO,
                 max_len: int = MAX_LEN, max_video_len: int = MAX_VIDEO_LEN,
                 sort: bool = True) -> dict[str, np.ndarray]:
    """Sample ``K = clips_per_video`` clip-caption pairs of one video (spec §4.2).

    features: [T, 512] (any float dtype); starts/ends: [n] seconds; tokens: n id arrays.
    Returns (K = clips_per_video, Lc = max_len - max_video_len)::

        caps        [K, Lc] int32     cmasks      [K, Lc] bool
        vfeats      [K, max_video_len, 512] float32
        vmasks      [K, max_video_len] bool
        text_start, text_end, video_start, video_end   [K] int32  (caption range, clip seconds)
    """
    t, d = features.shape
    lc = max_len - max_video_len
    max_tokens = lc - 3
    n_tokens = np.asarray([len(x) for x in tokens])
    caps = np.full((clips_per_video, lc), PAD_ID, np.int32)
    cmasks = np.zeros((clips_per_video, lc), bool)
    vfeats = np.zeros((clips_per_video, max_video_len, d), np.float32)
    vmasks = np.zeros((clips_per_video, max_video_len), bool)
    meta = np.zeros((clips_per_video, 4), np.int32)  # text_start, video_start, text_end, video_end
    for k in range(clips_per_video):
        lo, hi = merge_captions(n_tokens, starts, ends, rng)
        s, e = sample_clip(float(starts[lo]), float(ends[hi - 1]), t, rng)
        nf = min(max_video_len, e - s)
        vfeats[k, :nf] = features[s:s + nf]
        vmasks[k, :nf] = True
        ids = np.concatenate([tokens[i] for i in range(lo, hi)])[:max_tokens]
        caps[k, 0], caps[k, 1] = CLS_ID, SEP_ID
        caps[k, 2:2 + len(ids)] = ids
        caps[k, 2 + len(ids)] = SEP_ID
        cmasks[k, :len(ids) + 3] = True
        meta[k] = (lo, s, hi, e)
    if sort:
        order = np.lexsort((meta[:, 3], meta[:, 2], meta[:, 1], meta[:, 0]))
        caps, cmasks, vfeats, vmasks, meta = caps[order], cmasks[order], vfeats[order], vmasks[order], meta[order]
    return {"caps": caps, "cmasks": cmasks, "vfeats": vfeats, "vmasks": vmasks,
            "text_start": meta[:, 0], "video_start": meta[:, 1], "text_end": meta[:, 2],
            "video_end": meta[:, 3]}


def flatten_videos(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack per-video samples ``[K, ...]`` into a batch ``[V*K, ...]``, video-major (row = v*K + c)."""
    return {k: np.concatenate([s[k] for s in samples], axis=0) for k in samples[0]}
