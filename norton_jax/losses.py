"""Norton's training losses (paper Eq. 1 and 4-8), defaulting to the reference's numbers.

Public API (other modules call these names):

* :func:`clip_caption_loss` - clip-caption contrast with faulty-negative exploitation
  (Eq. 7-8, spec 2.3).
* :func:`video_paragraph_loss` - video-paragraph contrast whose similarity is an entropic
  OT distance with the alignable prompt bucket (Eq. 4-6, spec 2.4), or (ablation baseline
  ``sequence_distance="soft_dtw"``) a TempCLR-style soft-DTW sequence distance.
* :func:`norton_loss` - ``L_clip + lambda * L_video`` (Eq. 1) with a metrics dict.
* :class:`LossConfig` - the loss settings (``config.loss``) as one frozen dataclass; every
  loss function also takes them as keywords.
* :func:`checked` - wraps any of them so that NaN/inf inputs raise an error naming the
  input (``jax.experimental.checkify``) instead of silently producing NaN losses.

Inputs are the dual encoder's outputs for ``B`` clip-caption pairs ordered video by
video, ``seq_len`` consecutive clips forming one sequence (paragraph)::

    pooled_video [B, D], pooled_text [B, D]      mean-pooled embeddings (not normalised)
    video_tokens [B, F, D], text_tokens [B, T, D] token outputs
    video_mask [B, F], text_mask [B, T]          1/True = valid token

Everything is computed in float32 at least (bfloat16 encoder outputs are promoted); the
similarity and logit matmuls run at ``LossConfig.matmul_precision`` (docs/hardware.md).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from norton_jax.dtw import DEFAULT_SOFT_DTW_GAMMA, soft_dtw_distance
from norton_jax.ot import check_static_positive, compute_dtype, sinkhorn, sinkhorn_with_bucket
from norton_jax.similarity import (
    DEFAULT_MATMUL_PRECISION,
    MATMUL_PRECISIONS,  # noqa: F401 - re-exported
    ClipSimilarity,
    FineGrained,
    MatmulPrecision,
    check_precision,
    clip_similarity,
)

Array = jax.Array

#: log(1/tau) with tau = 0.07, the reference's (never optimised) temperature.
DEFAULT_LOGIT_SCALE = math.log(1 / 0.07)
#: Upper clamp of the logit scale (tau >= 0.01), as the reference's ``clamp_(0, 4.6052)``.
MAX_LOGIT_SCALE = 4.6052

SequenceDistance = Literal["ot", "soft_dtw"]
SEQUENCE_DISTANCES = ("ot", "soft_dtw")


def _cross_entropy_mean(logits: Array, labels: Array) -> Array:
    """Mean over rows of ``-log_softmax(logits)[i, labels[i]]``."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def _check_pooled(pooled_video: Array, pooled_text: Array) -> None:
    if pooled_video.ndim != 2 or pooled_text.ndim != 2:
        raise ValueError(
            "pooled_video and pooled_text must be [B, D], got "
            f"{pooled_video.shape} and {pooled_text.shape}"
        )
    if pooled_video.shape != pooled_text.shape:
        raise ValueError(
            f"pooled_video {pooled_video.shape} and pooled_text {pooled_text.shape} must have "
            "the same shape (row i of each is one clip-caption pair)"
        )


def _check_tokens(pooled_video, video_tokens, text_tokens, video_mask, text_mask) -> None:
    b, d = pooled_video.shape
    for name, x, mask_name, mask in (
        ("video_tokens", video_tokens, "video_mask", video_mask),
        ("text_tokens", text_tokens, "text_mask", text_mask),
    ):
        if x.ndim != 3 or x.shape[0] != b or x.shape[2] != d:
            raise ValueError(f"{name} must be [B={b}, tokens, D={d}], got {x.shape}")
        if mask.shape != x.shape[:2]:
            raise ValueError(f"{mask_name} must be {x.shape[:2]} to match {name}, got {mask.shape}")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Settings of Norton's loss (``config.loss``), validated once; hashable (a static argument).

    The fields are the keyword arguments of :func:`norton_loss` (``weight``, ``beta`` and
    the video-paragraph settings of :func:`video_paragraph_loss`, whose docstring says what
    each one means); the defaults are the reference's (spec 2).  ``matmul_precision`` sets
    the precision of every similarity and logit matmul (:data:`MATMUL_PRECISIONS`,
    docs/hardware.md): ``"high"`` by default, which on GPUs rounds the operands to TF32 (the
    10-bit mantissa of the reference's float16 logits) and on TPUs runs three bfloat16
    passes (finer than float16); CPUs compute float32 whatever the setting.

    Example::

        cfg = LossConfig.from_config(config)          # config.loss of a configs/*.py file
        total, metrics = norton_loss(*outputs, config=cfg)
        norton_loss(*outputs, seq_len=4)              # keywords still work
    """

    weight: float = 0.1
    beta: float = 0.3
    seq_len: int = 8
    prompt_ratio: float | None = 0.3
    epsilon: float = 0.1
    alpha: float = 1.0
    fusion_weight: float = 0.5
    num_iters: int = 50
    logit_scale: Any = DEFAULT_LOGIT_SCALE  # float, or an array (learnable temperature)
    clip_similarity_kind: ClipSimilarity = "lse"
    fine_grained: FineGrained = "reference"
    sequence_distance: SequenceDistance = "ot"
    chunk_size: int = 64
    soft_dtw_gamma: float = DEFAULT_SOFT_DTW_GAMMA
    matmul_precision: MatmulPrecision = DEFAULT_MATMUL_PRECISION

    def __post_init__(self) -> None:
        check_static_positive("weight", self.weight, allow_zero=True)
        check_static_positive("beta", self.beta, allow_zero=True)
        if not isinstance(self.beta, jax.core.Tracer) and self.beta > 1:
            raise ValueError(f"beta must be in [0, 1], got {self.beta!r}")
        if not isinstance(self.seq_len, int) or isinstance(self.seq_len, bool) or self.seq_len < 1:
            raise ValueError(f"seq_len={self.seq_len!r} must be a positive int")
        if self.prompt_ratio is not None:
            check_static_positive("prompt_ratio", self.prompt_ratio)
            if self.prompt_ratio > 1:
                raise ValueError(f"prompt_ratio must be in (0, 1] or None, got {self.prompt_ratio!r}")
        check_static_positive("epsilon", self.epsilon)
        check_static_positive("alpha", self.alpha)
        check_static_positive("fusion_weight", self.fusion_weight, allow_zero=True)
        if self.sequence_distance not in SEQUENCE_DISTANCES:
            raise ValueError(
                f"sequence_distance must be one of {SEQUENCE_DISTANCES}, got {self.sequence_distance!r}"
            )
        if self.sequence_distance == "soft_dtw":
            check_static_positive("soft_dtw_gamma", self.soft_dtw_gamma)
            if self.prompt_ratio is not None:
                raise ValueError(
                    "sequence_distance='soft_dtw' has no alignable prompt bucket (an OT construct); "
                    f"pass prompt_ratio=None (got {self.prompt_ratio!r})"
                )
        check_precision(self.matmul_precision)

    def replace(self, **changes: Any) -> "LossConfig":
        """A copy with ``changes``; an unknown name raises a ``TypeError`` naming it."""
        unknown = sorted(set(changes) - set(LOSS_FIELDS))
        if unknown:
            raise TypeError(f"unknown loss setting(s) {unknown}; known: {list(LOSS_FIELDS)}")
        return dataclasses.replace(self, **changes) if changes else self

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in LOSS_FIELDS}

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any) -> "LossConfig":
        """From an experiment config (its ``loss`` section) or the section itself.

        Missing fields take the defaults above; an unknown field raises a ``ValueError``
        naming it (a typo must not fall back to a default silently).
        """
        if hasattr(config, "to_dict"):
            config = config.to_dict()
        config = dict(config)
        if "loss" in config and isinstance(config["loss"], Mapping):
            config = dict(config["loss"])
        unknown = sorted(set(config) - set(LOSS_FIELDS))
        if unknown:
            raise ValueError(f"config.loss: unknown field(s) {unknown}; known: {list(LOSS_FIELDS)}")
        return cls(**config)


LOSS_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(LossConfig))


def resolve_loss_config(config: LossConfig | None, settings: Mapping[str, Any]) -> LossConfig:
    """``config`` (default: the reference's) with the keyword ``settings`` applied."""
    return (LossConfig() if config is None else config).replace(**settings)


def clip_caption_loss(
    pooled_video: Array,  # [B, D]
    pooled_text: Array,  # [B, D]
    *,
    beta: float = 0.3,
    num_iters: int = 50,
    matmul_precision: MatmulPrecision = DEFAULT_MATMUL_PRECISION,
) -> Array:
    """Clip-caption contrast with faulty-negative exploitation (paper Eq. 7-8, spec 2.3).

    Logits are raw dot products of the un-normalised pooled embeddings (no temperature,
    trap T1): ``S_v = pooled_video @ pooled_text^T`` ``[B, B]`` at ``matmul_precision``.
    The faulty-negative plan
    ``Q`` is the epsilon-1 Sinkhorn plan on ``S_v`` with uniform marginals, scaled to a
    soft permutation (rows ~1, columns exactly 1; the reference's ``1/(2B)`` marginals
    times ``2B``) and held constant.  Targets ``beta * Q + (1 - beta) * I`` (the identity
    weight rounded to float32 as the reference does, trap T14) and ``beta * Q^T + ...``::

        L = -mean_i sum_j T_v[i, j] log_softmax(S_v)[i, j]
            -mean_i sum_j T_t[i, j] log_softmax(S_t)[i, j]

    ``beta=0`` gives plain symmetric InfoNCE (no Sinkhorn is run).

    Returns:
      The scalar loss (both directions summed).
    """
    _check_pooled(pooled_video, pooled_text)
    check_static_positive("beta", beta, allow_zero=True)
    if beta > 1:
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    precision = check_precision(matmul_precision)
    dtype = compute_dtype(pooled_video.dtype, pooled_text.dtype)
    pv = pooled_video.astype(dtype)
    pt = pooled_text.astype(dtype)
    b = pv.shape[0]
    s_v = jnp.matmul(pv, pt.T, precision=precision)  # [B_video, B_text]
    s_t = jnp.matmul(pt, pv.T, precision=precision)  # [B_text, B_video]
    identity = jnp.eye(b, dtype=dtype) * jnp.asarray(np.float32(1.0 - beta), dtype)
    if beta == 0:
        t_v = t_t = identity
    else:
        log_plan = sinkhorn(s_v, epsilon=1.0, num_iters=num_iters).log_plan
        q = jnp.exp(log_plan + jnp.log(jnp.asarray(b, dtype)))  # rows ~1, columns 1
        t_v = beta * q + identity
        t_t = beta * q.T + identity
    loss_v2t = -jnp.mean(jnp.sum(t_v * jax.nn.log_softmax(s_v, axis=-1), axis=-1))
    loss_t2v = -jnp.mean(jnp.sum(t_t * jax.nn.log_softmax(s_t, axis=-1), axis=-1))
    return loss_v2t + loss_t2v


def prompt_bucket_value(similarity: Array, prompt_ratio: float) -> Array:
    """The bucket score ``p``: the ``int(r * B)``-th smallest aligned-pair similarity.

    ``similarity`` is the fused ``C [B, B]``; its diagonal holds the timestamp-paired
    clip/caption similarities.  ``kthvalue`` is 1-indexed and ``int`` truncates (spec
    2.4.4, trap T7).  ``p`` carries no gradient.
    """
    b = similarity.shape[0]
    k = int(prompt_ratio * b)
    if k < 1:
        raise ValueError(
            f"prompt_ratio={prompt_ratio!r} selects no clip in a batch of {b} (int(r*B) = {k})"
        )
    diag = jax.lax.stop_gradient(jnp.diagonal(similarity))
    return jnp.sort(diag)[k - 1]


def sequence_pair_grid(similarity: Array, seq_len: int) -> Array:
    """Cut ``C [B, B]`` into the ``[N, N, L, L]`` grid of sequence pairs (spec 2.4.5).

    ``grid[i, j, p, q] = C[i*L + p, j*L + q]``: text paragraph ``i`` (rows ``p``) against
    video sequence ``j`` (columns ``q``).
    """
    b = similarity.shape[0]
    n = b // seq_len
    return similarity.reshape(n, seq_len, n, seq_len).transpose(0, 2, 1, 3)


def _video_paragraph_terms(
    pooled_video: Array,
    pooled_text: Array,
    video_tokens: Array,
    video_mask: Array,
    text_tokens: Array,
    text_mask: Array,
    cfg: LossConfig,
) -> tuple[Array, dict[str, Array]]:
    _check_pooled(pooled_video, pooled_text)
    _check_tokens(pooled_video, video_tokens, text_tokens, video_mask, text_mask)
    b = pooled_video.shape[0]
    seq_len = cfg.seq_len
    if b % seq_len:
        raise ValueError(
            f"seq_len={seq_len!r} must be a positive int dividing the number of clips B={b}"
        )
    c = clip_similarity(
        pooled_text,
        pooled_video,
        text_tokens,
        video_tokens,
        text_mask,
        video_mask,
        kind=cfg.clip_similarity_kind,
        alpha=cfg.alpha,
        fusion_weight=cfg.fusion_weight,
        fine_grained=cfg.fine_grained,
        chunk_size=cfg.chunk_size,
        precision=cfg.matmul_precision,
    )  # [B_text, B_video]
    dtype = c.dtype
    grid = sequence_pair_grid(c, seq_len)  # [N, N, L, L]
    aux: dict[str, Array] = {}
    scale = _logit_scale_factor(cfg.logit_scale, dtype)
    if cfg.sequence_distance == "soft_dtw":
        # TempCLR-style: logits[i, j] = -exp(logit_scale) * softDTW_gamma(1 - G_ij), the
        # soft-DTW distance (Cuturi & Blondel 2017) of the per-pair cost 1 - C in [0, 1];
        # all N x N pairs in one batched anti-diagonal scan.  No plan, no stop-gradient:
        # the gradient w.r.t. G is the expected soft alignment.
        distance = soft_dtw_distance(1.0 - grid, cfg.soft_dtw_gamma)  # [N_text, N_video]
        logits = -scale * distance
        return _paragraph_contrast(logits, aux)
    if cfg.prompt_ratio is None:
        # Vanilla OT (no bucket): uniform marginals.
        plan = sinkhorn(grid, epsilon=cfg.epsilon, num_iters=cfg.num_iters).plan
    else:
        p = prompt_bucket_value(c, cfg.prompt_ratio)
        plan = sinkhorn_with_bucket(grid, p, epsilon=cfg.epsilon, num_iters=cfg.num_iters)
        aux["prompt_value"] = p
        # Share of the real rows' mass sent to the bucket, averaged over all pairs.
        aux["bucket_mass"] = 1.0 - jnp.mean(plan.sum(axis=(-1, -2))) / seq_len
    # Renormalise every pair's plan to total mass L (spec 2.4.7); no gradient.
    mass = jnp.sum(plan, axis=(-1, -2), keepdims=True)
    plan = jax.lax.stop_gradient(plan * (seq_len / mass))

    logits = scale * jnp.sum(plan * grid, axis=(-1, -2))  # [N_text, N_video]
    return _paragraph_contrast(logits, aux)


def _logit_scale_factor(logit_scale, dtype) -> Array:
    """``exp(clip(logit_scale, 0, 4.6052))`` as a scalar of ``dtype``."""
    if isinstance(logit_scale, (int, float)):
        # The reference evaluates exp(logit_scale) in float32 (trap T10).
        return jnp.asarray(np.exp(np.float32(min(max(logit_scale, 0.0), MAX_LOGIT_SCALE))), dtype)
    return jnp.exp(jnp.clip(jnp.asarray(logit_scale), 0.0, MAX_LOGIT_SCALE)).astype(dtype)


def _paragraph_contrast(logits: Array, aux: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
    """Eq. 4: ``CE(logits, arange) + CE(logits^T, arange)`` over ``logits [N_text, N_video]``."""
    labels = jnp.arange(logits.shape[0])
    loss = _cross_entropy_mean(logits, labels) + _cross_entropy_mean(logits.T, labels)
    aux["paragraph_accuracy"] = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(logits.dtype))
    return loss, aux


def video_paragraph_loss(
    pooled_video: Array,  # [B, D]
    pooled_text: Array,  # [B, D]
    video_tokens: Array,  # [B, F, D]
    text_tokens: Array,  # [B, T, D]
    video_mask: Array,  # [B, F]
    text_mask: Array,  # [B, T]
    *,
    config: LossConfig | None = None,
    **settings: Any,
) -> Array:
    """Video-paragraph contrast with OT sequence similarity (paper Eq. 4-6, spec 2.4).

    1. Fused clip-caption similarity ``C [B_text, B_video]`` in ``[0, 1]``
       (:func:`norton_jax.similarity.clip_similarity`, Eq. 5).
    2. Grid of ``N x N`` sequence pairs of ``L = seq_len`` clips, ``G [N, N, L, L]``.
    3. Per pair, the entropic OT plan with the alignable prompt bucket (Eq. 6): bucket
       value ``p`` = the ``int(prompt_ratio * B)``-th smallest diagonal entry of ``C``,
       scores and ``p`` divided by ``epsilon``, reference dustbin marginals; the plan is
       renormalised to total mass ``L`` and held constant.  ``prompt_ratio=None`` runs
       vanilla OT with uniform marginals (no bucket).
    4. ``logits[i, j] = exp(logit_scale) * <Pi_ij, G_ij>`` ``[N_text, N_video]`` (G not
       divided by epsilon) and ``L = CE(logits, arange) + CE(logits^T, arange)`` with mean
       reduction (Eq. 4).

    Settings: a :class:`LossConfig` as ``config`` and/or any of its fields as keywords
    (keywords win; ``weight`` and ``beta`` are unused here):

      seq_len: clips per sequence ``L`` (8); must divide ``B``.
      prompt_ratio: bucket quantile ``r`` in ``(0, 1]`` (0.3), or ``None`` for no bucket.
      epsilon: Sinkhorn epsilon of the sequence OT (> 0; 0.1).
      alpha: log-sum-exp temperature of Eq. 5 (1.0).
      fusion_weight: weight ``w`` of the mean-pooled similarity in the fusion (0.5).
      num_iters: Sinkhorn iterations (50).
      logit_scale: ``log(1/tau)``; a Python float is the reference's fixed temperature
        (evaluated in float32); an array may be a learnable parameter.  Clamped to
        ``[0, 4.6052]``.
      clip_similarity_kind: ``"lse"`` (Norton), ``"max"`` (ablation D) or ``"mean"``
        (ablation C).
      fine_grained: ``"reference"`` (default) or ``"paper"`` masking semantics of Eq. 5.
      sequence_distance: ``"ot"`` (Norton, steps 3-4 above) or ``"soft_dtw"`` (TempCLR-style
        baseline): steps 3-4 become ``logits[i, j] = -exp(logit_scale) *
        softDTW_gamma(1 - G_ij)`` (Cuturi & Blondel 2017, :func:`norton_jax.dtw.soft_dtw_distance`),
        differentiable end to end with no plan; requires ``prompt_ratio=None`` (no bucket);
        ``epsilon`` and the sequence Sinkhorn are unused.
      chunk_size: text clips per chunk of the fine-grained similarity (64).
      soft_dtw_gamma: soft-minimum smoothing of ``"soft_dtw"`` (> 0; default 0.1, see
        :data:`norton_jax.dtw.DEFAULT_SOFT_DTW_GAMMA`).
      matmul_precision: precision of the similarity matmuls (``"high"``; see
        :class:`LossConfig`).

    Returns:
      The scalar loss.
    """
    cfg = resolve_loss_config(config, settings)
    loss, _ = _video_paragraph_terms(
        pooled_video, pooled_text, video_tokens, video_mask, text_tokens, text_mask, cfg
    )
    return loss


def norton_loss(
    pooled_video: Array,  # [B, D]
    pooled_text: Array,  # [B, D]
    video_tokens: Array,  # [B, F, D]
    text_tokens: Array,  # [B, T, D]
    video_mask: Array,  # [B, F]
    text_mask: Array,  # [B, T]
    *,
    config: LossConfig | None = None,
    check_inputs: bool = False,
    **settings: Any,
) -> tuple[Array, dict[str, Array]]:
    """Norton's total loss ``L_clip + weight * L_video`` (paper Eq. 1, spec 2.1).

    Settings: a :class:`LossConfig` as ``config`` and/or any of its fields as keywords
    (keywords win).  ``weight`` is lambda (0.1); ``weight=0`` skips the video-paragraph
    loss entirely (as ablations A and B).  ``beta`` and ``num_iters`` go to
    :func:`clip_caption_loss` (``num_iters`` is shared, as in the reference), the rest to
    :func:`video_paragraph_loss`.  With ``check_inputs=True`` every float input gets a
    checkify finiteness check; run it under :func:`checked`.

    Returns:
      ``(total, metrics)`` with scalar metrics ``loss_total``, ``loss_clip_caption``,
      ``loss_video_paragraph`` and, when the video loss runs, ``paragraph_accuracy``
      (in-batch text->video top-1) plus ``prompt_value`` and ``bucket_mass`` with a bucket.
    """
    cfg = resolve_loss_config(config, settings)
    if check_inputs:
        check_finite(
            pooled_video=pooled_video, pooled_text=pooled_text,
            video_tokens=video_tokens, text_tokens=text_tokens,
        )
    loss_clip = clip_caption_loss(
        pooled_video, pooled_text, beta=cfg.beta, num_iters=cfg.num_iters,
        matmul_precision=cfg.matmul_precision,
    )
    metrics: dict[str, Array] = {"loss_clip_caption": loss_clip}
    total = loss_clip
    if cfg.weight > 0:
        loss_video, aux = _video_paragraph_terms(
            pooled_video, pooled_text, video_tokens, video_mask, text_tokens, text_mask, cfg
        )
        total = total + cfg.weight * loss_video
        metrics["loss_video_paragraph"] = loss_video
        metrics.update(aux)
    else:
        metrics["loss_video_paragraph"] = jnp.zeros((), loss_clip.dtype)
    metrics["loss_total"] = total
    if check_inputs:
        checkify.check(jnp.isfinite(total), "norton_loss: the total loss is not finite")
    return total, metrics


def check_finite(**named_arrays: Array) -> None:
    """Adds a checkify check per array that it holds no NaN or inf.

    The message names the offending input.  Must run under ``checkify.checkify`` (use
    :func:`checked`); outside it, checkify refuses to trace the check.
    """
    for name, x in named_arrays.items():
        checkify.check(
            jnp.all(jnp.isfinite(x)), f"non-finite values (NaN or inf) in input {name!r}"
        )


def checked(fn, *, jit: bool = True):
    """Returns ``fn`` run under checkify: a failed :func:`check_finite` raises.

    Example::

        loss_fn = checked(functools.partial(norton_loss, check_inputs=True))
        total, metrics = loss_fn(pv, pt, tv, tt, mv, mt)  # raises on NaN inputs

    The error is a ``jax.experimental.checkify.JaxRuntimeError`` whose message names the
    input.
    """
    checked_fn = checkify.checkify(fn, errors=checkify.user_checks)
    if jit:
        checked_fn = jax.jit(checked_fn)

    def run(*args, **kwargs):
        err, out = checked_fn(*args, **kwargs)
        err.throw()
        return out

    return run
