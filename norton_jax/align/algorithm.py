"""The alignment algorithm: Norton's transport plan with the alignable prompt bucket on one video.

For one video (features ``[T, 512]``, one row per second) and its narration lines (text
with the original start/end seconds), :func:`align_video`:

1. **Similarity** ``S [captions, T]``: cosine between each caption's ``pooled_text`` and the
   video encoder's frame outputs, computed in 32 s windows with an 8 s stride and averaged
   where windows overlap: the HTM-Align protocol of the reference (spec §5.8), with every
   caption scored in every window (``DSAligner`` layout: max_video_len 32, max_len 96).
2. **Scores for the plan** ``Z = S' + epsilon * log pi``: ``S'`` is the similarity min-max
   normalised over the video (as Norton's ``C``, spec 2.4.1); ``pi_c(t)`` is a temporal
   prior, a distribution over the seconds for each caption, ``pi_c(t) ~ exp(-d^2 / (2
   sigma^2))`` with ``d`` the distance of second ``t`` from the caption's original span (0
   inside).  The plan is then ``exp(S'/epsilon) * pi`` up to the marginal scalings, and a
   caption goes to the bucket when ``p`` beats its prior-weighted soft-max similarity
   ``epsilon * log E_pi[exp(S'/epsilon)]``.  Normalising ``pi`` per caption matters: with
   ``T`` one-second columns against one bucket column, an unnormalised kernel would give every
   caption a ``log T`` entropic advantage over the bucket (the reference's problems are
   ``8 x 8``).  ``prior_sigma=None`` makes ``pi`` uniform over the video.
3. **Transport with the alignable prompt bucket** (paper Eq. 6, spec 2.4.4/2.4.6):
   ``norton_jax.ot.sinkhorn_with_bucket(Z, p, epsilon)`` with rows = captions and columns =
   seconds.  The bucket value ``p`` follows ``norton_jax.losses.prompt_bucket_value``: the
   ``int(prompt_ratio * M)``-th smallest *timestamp-paired* similarity (here: each caption's
   prior-weighted soft-max ``epsilon * log sum_t exp(Z[c, t] / epsilon)``, the quantity its
   row pits against the bucket), so about ``prompt_ratio`` of the captions score below the
   bucket.  The bucket row and column absorb background seconds and unalignable captions.
4. **Outputs per caption**: ``aligned_mass`` = the plan's row sum (1 - the bucket's share);
   ``alignability`` = ``min(1, aligned_mass / mean aligned_mass)``, the caption's weight after
   Norton's renormalisation of the plan to total mass ``L`` (spec 2.4.7; raw masses all drop
   when many captions align, because the bucket's corner absorbs their counterpart);
   ``rejected`` when ``alignability < 1 - reject_threshold`` (0.5); ``centre`` = the weighted
   median second of its plan row (``peak`` = the second with the most mass is reported too);
   the re-aligned span = the original duration re-centred on ``centre`` (clipped to the video).

Defaults and why: ``epsilon = 0.1`` and ``prompt_ratio = 0.3`` are Norton's video-level
settings (spec 2.4); ``window = 32``, ``stride = 8`` are HTM-Align's; ``prior_sigma = 10 s``
is a generic prior on how far narration drifts from what it describes, not fitted to
youcook2-mnc (whose shifts are N(0, 4 s) clipped at 12 s; on its *train* split a sweep gave
the best recall at 5 s, then 10 s, then 20 s: see ``docs/evaluation.md``); ``num_iters = 100``.
Problems are padded to ``[8k, 64k]`` (masked) so a corpus compiles only a few shapes.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from norton_jax.evaluate.caption_similarity import caption_second_similarity
from norton_jax.inference import Encoder
from norton_jax.losses import prompt_bucket_value
from norton_jax.ot import sinkhorn_with_bucket

PathLike = str | os.PathLike

__all__ = [
    "END_TOLERANCE", "AlignConfig", "Captions", "VideoAlignment", "align_video", "bucket_value",
    "fit_captions_to_video", "frame_similarity", "paired_similarity", "realign",
]


@dataclass(frozen=True)
class AlignConfig:
    """Settings of :func:`align_video` (see the module docstring for the choices)."""

    window: int = 32  # frames per video window (max_video_len of the evaluation layout)
    stride: int = 8  # seconds between window starts
    epsilon: float = 0.1  # Sinkhorn entropy (Norton's video-level epsilon)
    prompt_ratio: float = 0.3  # bucket quantile r of the paired similarities
    prior_sigma: float | None = 10.0  # seconds; None = no temporal prior
    num_iters: int = 100
    reject_threshold: float = 0.5  # rejected when alignability < 1 - reject_threshold

    def __post_init__(self) -> None:
        if self.window < 2 or not 1 <= self.stride <= self.window // 2:
            raise ValueError(f"window must be >= 2 and stride in [1, window // 2] (so that every second is "
                             f"covered), got window {self.window}, stride {self.stride}")
        if not self.epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {self.epsilon}")
        if not 0 < self.prompt_ratio <= 1:
            raise ValueError(f"prompt_ratio must be in (0, 1], got {self.prompt_ratio}")
        if self.prior_sigma is not None and not self.prior_sigma > 0:
            raise ValueError(f"prior_sigma must be > 0 or None, got {self.prior_sigma}")
        if not 0 <= self.reject_threshold <= 1:
            raise ValueError(f"reject_threshold must be in [0, 1], got {self.reject_threshold}")


@dataclass
class Captions:
    """Narration of one video: ``texts[i]`` spoken over ``[starts[i], ends[i]]`` seconds.

    ``where[i]`` (optional) says where caption ``i`` came from, e.g. ``"line 3"`` of a CSV
    file; errors use it instead of the caption's index.
    """

    texts: list[str]
    starts: np.ndarray  # [M] float
    ends: np.ndarray  # [M] float
    where: list[str] | None = None

    def __post_init__(self) -> None:
        self.starts = np.asarray(self.starts, np.float64).reshape(-1)
        self.ends = np.asarray(self.ends, np.float64).reshape(-1)
        if not (len(self.texts) == len(self.starts) == len(self.ends)):
            raise ValueError(f"{len(self.texts)} texts, {len(self.starts)} starts, {len(self.ends)} ends")
        if self.where is not None and len(self.where) != len(self.texts):
            raise ValueError(f"{len(self.where)} caption places for {len(self.texts)} captions")
        if len(self.texts) == 0:
            raise ValueError("no captions")
        for name, values in (("start", self.starts), ("end", self.ends)):
            bad = np.flatnonzero(~np.isfinite(values))
            if len(bad):
                i = int(bad[0])
                raise ValueError(f"{self.label(i)}: {name} must be a finite number, got {values[i]}")
        bad = np.flatnonzero(self.starts < 0)
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"{self.label(i)}: start {self.starts[i]} is negative (times are seconds from 0)")
        bad = np.flatnonzero(self.ends < self.starts)
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"{self.label(i)}: end {self.ends[i]} < start {self.starts[i]}")

    def label(self, i: int) -> str:
        """Where caption ``i`` came from (``"line 3"``), or ``"caption i"``."""
        return self.where[i] if self.where is not None else f"caption {i}"


# ASR times may run a little past the last feature second (the feature store allows the same)
END_TOLERANCE = 2.0


def fit_captions_to_video(captions: Captions, num_frames: int, *, clamp: bool = False,
                          source: PathLike | None = None) -> tuple[Captions, int]:
    """Checks that every caption lies on the video's ``num_frames`` seconds of features.

    A caption runs past the features when it starts at or after ``num_frames`` or ends more
    than :data:`END_TOLERANCE` seconds after it.  Without ``clamp`` that is an error naming
    ``source`` and the caption's line; with ``clamp`` the times of those captions are cut
    to the video (``[0, num_frames]``), the others are left as they are.  Returns the
    (possibly clamped) captions and how many were cut.
    """
    t = float(num_frames)
    late = (captions.starts >= t) | (captions.ends > t + END_TOLERANCE)
    if not late.any():
        return captions, 0
    if not clamp:
        i = int(np.argmax(late))
        prefix = f"{os.fspath(source)}: " if source is not None else ""
        raise ValueError(
            f"{prefix}{captions.label(i)}: caption [{captions.starts[i]:g}, {captions.ends[i]:g}] s runs past the "
            f"video's {num_frames} s of features ({int(late.sum())} of {len(late)} captions do); check that the "
            "captions belong to these features, or pass --clamp-to-video to cut them to the video"
        )
    starts = np.where(late, np.minimum(captions.starts, t), captions.starts)
    ends = np.where(late, np.minimum(captions.ends, t), captions.ends)
    return Captions(list(captions.texts), starts, ends, captions.where), int(late.sum())


@dataclass
class VideoAlignment:
    """Result of :func:`align_video` for one video."""

    video_id: str
    num_frames: int
    captions: Captions
    similarity: np.ndarray  # [M, T] cosine, averaged over windows
    plan: np.ndarray  # [M, T] Norton plan (rows sum to the aligned mass)
    aligned_mass: np.ndarray  # [M] row sums of the plan in [0, 1] (1 - bucket share)
    alignability: np.ndarray  # [M] min(1, row sum / mean row sum): weight after Norton's renormalisation
    rejected: np.ndarray  # [M] bool: alignability < 1 - reject_threshold
    peak: np.ndarray  # [M] int: second with the most plan mass
    centre: np.ndarray  # [M] float: weighted median second of the plan row (+0.5)
    aligned_starts: np.ndarray  # [M] re-aligned span (original duration around the centre)
    aligned_ends: np.ndarray  # [M]
    bucket_value: float  # p, on the min-max normalised scale
    config: AlignConfig = field(default_factory=AlignConfig)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: settings, the bucket value and one entry per caption."""
        caps = []
        for i, text in enumerate(self.captions.texts):
            caps.append({
                "index": i,
                "text": text,
                "original": [float(self.captions.starts[i]), float(self.captions.ends[i])],
                "aligned": [float(self.aligned_starts[i]), float(self.aligned_ends[i])],
                "shift": float(self.aligned_starts[i] - self.captions.starts[i]),
                "centre": float(self.centre[i]),
                "peak": int(self.peak[i]),
                "alignability": round(float(self.alignability[i]), 6),
                "aligned_mass": round(float(self.aligned_mass[i]), 6),
                "rejected": bool(self.rejected[i]),
            })
        return {
            "video_id": self.video_id,
            "num_frames": self.num_frames,
            "settings": asdict(self.config),
            "bucket_value": float(self.bucket_value),
            "num_captions": len(caps),
            "num_rejected": int(np.sum(self.rejected)),
            "captions": caps,
        }


def frame_similarity(encoder: Encoder, features: np.ndarray, texts: Sequence[str], *, window: int = 32,
                     stride: int = 8) -> np.ndarray:
    """``S [M, T]``: cosine of each caption's pooled text with the frame outputs, averaged
    over the overlapping windows covering each second (spec §5.8, every caption active).

    The one implementation the HTM-Align evaluation uses too
    (:func:`norton_jax.evaluate.caption_similarity.caption_second_similarity`, its
    ``active="dense"``): windows of ``window`` s at starts ``0, stride, ...`` below
    ``T - window // 2``, so ``stride`` must be at most ``window // 2``."""
    return caption_second_similarity(encoder, features, texts, window=window, stride=stride)


def span_distance(num_frames: int, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``d [M, T]``: seconds from the centre of second ``t`` to each original span (0 inside)."""
    centre = np.arange(num_frames, dtype=np.float64)[None, :] + 0.5
    return np.maximum(0.0, np.maximum(starts[:, None] - centre, centre - ends[:, None]))


def paired_similarity(scores: np.ndarray, epsilon: float) -> np.ndarray:
    """``[M]`` timestamp-paired similarity of each caption: ``epsilon * log sum_t exp(Z[c, t] /
    epsilon)`` with ``Z = S' + epsilon * log pi``, i.e. the soft-max of its similarity weighted
    by its temporal prior (the mean over its original span as ``sigma -> 0``).  It plays the
    role of Norton's diagonal ``C_ii`` (the caption with its timestamp-paired clip) and is
    exactly the quantity each caption's row pits against the bucket in the plan."""
    z = np.asarray(scores, np.float64) / epsilon
    top = z.max(axis=1, keepdims=True)
    return epsilon * (top[:, 0] + np.log(np.exp(z - top).sum(axis=1)))


def bucket_value(paired: np.ndarray, prompt_ratio: float) -> float:
    """``p`` = the ``int(r * M)``-th smallest paired similarity (:func:`prompt_bucket_value`
    on the diagonal); with fewer than ``1/r`` captions the smallest one."""
    m = len(paired)
    if int(prompt_ratio * m) >= 1:
        return float(prompt_bucket_value(jnp.diag(jnp.asarray(paired, jnp.float32)), prompt_ratio))
    return float(np.min(paired))


def realign(similarity: np.ndarray, captions: Captions, config: AlignConfig = AlignConfig()) -> dict[str, Any]:
    """Steps 2-4 of the module docstring on a given ``S [M, T]`` (no model needed)."""
    sim = np.asarray(similarity, np.float64)
    m, t = sim.shape
    lo, hi = sim.min(), sim.max()
    norm = (sim - lo) / (hi - lo) if hi > lo else np.zeros_like(sim)  # Norton's min-max (T4)
    log_prior = np.zeros((m, t))  # uniform over the video without a prior
    if config.prior_sigma is not None:
        log_prior = -span_distance(t, captions.starts, captions.ends) ** 2 / (2.0 * config.prior_sigma**2)
    # normalise each row's prior to a distribution over seconds: the bucket then competes with
    # the prior-weighted soft-max of the row, not with the number of seconds it can reach
    top = log_prior.max(axis=1, keepdims=True)
    log_prior = log_prior - (top + np.log(np.exp(log_prior - top).sum(axis=1, keepdims=True)))
    scores = norm + config.epsilon * log_prior  # [M, T]
    paired = paired_similarity(scores, config.epsilon)  # [M] each caption at its own time
    p = bucket_value(paired, config.prompt_ratio)
    # pad to [8k, 64k] with masks so that a corpus of different lengths compiles a few shapes
    mp, tp = -(-m // 8) * 8, -(-t // 64) * 64
    padded = np.zeros((mp, tp), np.float32)
    padded[:m, :t] = scores
    plan = np.asarray(sinkhorn_with_bucket(
        jnp.asarray(padded), jnp.float32(p), epsilon=config.epsilon, num_iters=config.num_iters,
        row_mask=jnp.asarray(np.arange(mp) < m), col_mask=jnp.asarray(np.arange(tp) < t),
    ), np.float64)[:m, :t]  # [M, T]
    mass = np.clip(plan.sum(axis=1), 0.0, 1.0)  # [M] share of each caption not sent to the bucket
    # Norton renormalises every plan to total mass L (spec 2.4.7): a caption's weight is its
    # mass relative to the mean caption's.  Raw masses are low whenever many captions are
    # aligned (the bucket's corner has to absorb their mass), the relative one is not.
    share = np.minimum(1.0, mass * m / max(float(mass.sum()), 1e-12))
    peak = np.argmax(plan, axis=1)
    cum = np.cumsum(plan, axis=1)
    centre = np.argmax(cum >= 0.5 * cum[:, -1:], axis=1) + 0.5  # weighted median second of each row
    duration = captions.ends - captions.starts
    new_start = np.clip(centre - duration / 2.0, 0.0, np.maximum(0.0, t - duration))
    return {
        "normalized": norm,
        "log_prior": log_prior,
        "plan": plan,
        "aligned_mass": mass,
        "alignability": share,
        "rejected": share < 1.0 - config.reject_threshold,
        "peak": peak.astype(np.int64),
        "centre": centre,
        "aligned_starts": new_start,
        "aligned_ends": new_start + duration,
        "bucket_value": p,
    }


def align_video(encoder: Encoder, features: np.ndarray, captions: Captions, config: AlignConfig = AlignConfig(),
                *, video_id: str = "") -> VideoAlignment:
    """Aligns one video's narration (module docstring).  ``encoder``: a
    :class:`norton_jax.inference.Encoder` (or anything with ``texts`` and ``segments``)."""
    features = np.asarray(features)
    sim = frame_similarity(encoder, features, captions.texts, window=config.window, stride=config.stride)
    out = realign(sim, captions, config)
    return VideoAlignment(
        video_id=video_id, num_frames=int(features.shape[0]), captions=captions, similarity=sim,
        plan=out["plan"], aligned_mass=out["aligned_mass"], alignability=out["alignability"],
        rejected=out["rejected"], peak=out["peak"], centre=out["centre"],
        aligned_starts=out["aligned_starts"], aligned_ends=out["aligned_ends"],
        bucket_value=out["bucket_value"], config=config,
    )

