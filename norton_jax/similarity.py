"""Clip-caption similarities of Norton's video-paragraph loss (paper Eq. 5, spec 2.4.1-2.4.3).

Every matrix here is oriented ``[text (rows), video (columns)]`` like the reference.

* :func:`mean_pooled_similarity` - cosine of the mean-pooled embeddings.
* :func:`minmax_normalize` - whole-matrix min-max normalisation (gradients flow through
  the min and the max).
* :func:`fine_grained_similarity` - the log-sum-exp frame-word similarity of Eq. 5, in the
  reference's masking semantics (default), the paper's exact masked form, or the
  max-token variant (ablation D).  It is computed chunk by chunk over the text clips, so
  the ``[B, B, words, frames]`` tensor is never materialised at once.
* :func:`clip_similarity` - the fused similarity ``C`` that the video-paragraph OT uses.

Every matmul takes ``precision`` (:data:`MATMUL_PRECISIONS`, passed as ``precision=`` to
``jnp.matmul`` / ``jnp.einsum``): ``"high"`` by default (:data:`DEFAULT_MATMUL_PRECISION`).
On CPUs all three compute float32.  On GPUs ``"default"`` and ``"high"`` round the operands
to TF32 (10-bit mantissa, as the reference's float16 logits) and ``"highest"`` is float32;
on TPUs ``"default"`` is one bfloat16 pass (7-bit mantissa), ``"high"`` three (about
float32's accuracy on these [0, 1] cosines) and ``"highest"`` six (float32).  See
docs/hardware.md.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from norton_jax.ot import check_static_positive, compute_dtype

Array = jax.Array
MatmulPrecision = Literal["default", "high", "highest"]
MATMUL_PRECISIONS: tuple[str, ...] = ("default", "high", "highest")
#: The reference computed its logits from float16 operands (fairseq ``--fp16``, trap T27):
#: ``"high"`` keeps at least that mantissa on GPUs (TF32) and TPUs (3 bfloat16 passes).
DEFAULT_MATMUL_PRECISION: MatmulPrecision = "high"
FineGrained = Literal["reference", "paper"]
TokenReduce = Literal["lse", "max"]
ClipSimilarity = Literal["lse", "max", "mean"]


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`MATMUL_PRECISIONS`, else a ``ValueError`` naming it."""
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision must be one of {MATMUL_PRECISIONS}, got {precision!r}")
    return precision


def l2_normalize(x: Array, axis: int = -1) -> Array:
    """``x / ||x||_2`` along ``axis`` (the reference adds no epsilon; a zero vector maps to 0)."""
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x / jnp.sqrt(jnp.maximum(sq, jnp.finfo(x.dtype).tiny))


def minmax_normalize(x: Array) -> Array:
    """``(x - min x) / (max x - min x)`` over the *whole* array (spec 2.4.1, trap T4).

    The min and the max are not detached (JAX, like torch, spreads their gradient evenly
    over ties).  A constant array maps to zeros instead of NaN.
    """
    lo, hi = jnp.min(x), jnp.max(x)
    span = hi - lo
    return (x - lo) / jnp.where(span > 0, span, 1.0)


def mean_pooled_similarity(
    pooled_text: Array, pooled_video: Array, *, precision: MatmulPrecision = DEFAULT_MATMUL_PRECISION
) -> Array:
    """Cosine similarity of pooled embeddings, ``[B_text, B_video]`` (spec 2.4.1).

    Args:
      pooled_text: ``[B_text, D]``; pooled_video: ``[B_video, D]``.
    """
    return jnp.matmul(
        l2_normalize(pooled_text), l2_normalize(pooled_video).T, precision=check_precision(precision)
    )


def _fine_grained_one_text_clip(
    text_tokens: Array,  # [T, D] (unit norm)
    text_mask: Array,  # [T] bool
    video_tokens: Array,  # [Bv, F, D] (unit norm)
    video_mask: Array,  # [Bv, F] bool
    *,
    alpha: float,
    reduce: TokenReduce,
    semantics: FineGrained,
    precision: MatmulPrecision,
) -> tuple[Array, Array]:
    """(t2v, v2t) of one caption against every video clip: two ``[Bv]`` vectors."""
    s = jnp.einsum("td,bfd->btf", text_tokens, video_tokens, precision=precision)  # [Bv, T, F]
    dtype = s.dtype
    mt = text_mask[None, :, None]  # [1, T, 1]
    mv = video_mask[:, None, :]  # [Bv, 1, F]
    n_t = jnp.sum(text_mask).astype(dtype)  # []
    n_v = jnp.sum(video_mask, axis=-1).astype(dtype)  # [Bv]

    if reduce == "lse":
        # alpha * LSE over the valid entries of one axis: the reference's exp-sum minus
        # the count of masked entries, computed stably.
        def soft_max(x, valid, axis):
            lse = jax.nn.logsumexp(jnp.where(valid, x / alpha, -jnp.inf), axis=axis)
            return alpha * jnp.where(jnp.isfinite(lse), lse, 0.0)
    else:
        def soft_max(x, valid, axis):
            best = jnp.max(jnp.where(valid, x, -jnp.inf), axis=axis)
            return jnp.where(jnp.isfinite(best), best, 0.0)

    # Per word, soft-max over frames -> averaged over words (the paper's 2nd term).
    t2v_tok = soft_max(s, mv, axis=-1)  # [Bv, T]
    # Per frame, soft-max over words -> averaged over frames (the paper's 1st term).
    v2t_tok = soft_max(s, mt, axis=-2)  # [Bv, F]
    t_valid = text_mask[None, :]  # [1, T]
    f_valid = video_mask  # [Bv, F]
    if semantics == "reference":
        # A padded word/frame contributes alpha * log(#valid tokens on the other side),
        # and the division is by the valid count (spec 2.4.2, trap T5).
        pad_t = alpha * jnp.log(jnp.maximum(n_v, 1.0))[:, None]  # [Bv, 1]
        pad_f = alpha * jnp.log(jnp.maximum(n_t, 1.0))  # []
        t2v_tok = jnp.where(t_valid, t2v_tok, pad_t)
        v2t_tok = jnp.where(f_valid, v2t_tok, pad_f)
    else:
        t2v_tok = jnp.where(t_valid, t2v_tok, 0.0)
        v2t_tok = jnp.where(f_valid, v2t_tok, 0.0)
    t2v = jnp.sum(t2v_tok, axis=-1) / jnp.maximum(n_t, 1.0)  # [Bv]
    v2t = jnp.sum(v2t_tok, axis=-1) / jnp.maximum(n_v, 1.0)  # [Bv]
    return t2v, v2t


def fine_grained_similarity(
    text_tokens: Array,  # [B_text, T, D]
    video_tokens: Array,  # [B_video, F, D]
    text_mask: Array,  # [B_text, T]
    video_mask: Array,  # [B_video, F]
    *,
    alpha: float = 1.0,
    reduce: TokenReduce = "lse",
    semantics: FineGrained = "reference",
    chunk_size: int = 64,
    precision: MatmulPrecision = DEFAULT_MATMUL_PRECISION,
) -> tuple[Array, Array]:
    """Fine-grained frame-word similarity of paper Eq. 5, before min-max normalisation.

    With ``s[a, b, t, f] = <tt[a, t], tv[b, f]>`` on L2-normalised tokens::

        t2v[a, b] = mean_t  alpha * LSE_f(s[a, b, t, f] / alpha)   # words -> frames
        v2t[a, b] = mean_f  alpha * LSE_t(s[a, b, t, f] / alpha)   # frames -> words

    ``semantics="reference"`` (default) reproduces the reference exactly: the LSE is over
    valid tokens, but every padded word adds ``alpha*log(n_v(b))`` and every padded frame
    ``alpha*log(n_t(a))`` to the sums, which are divided by the valid counts.
    ``semantics="paper"`` averages over valid tokens only.  ``reduce="max"`` replaces the
    LSE by a hard max over valid tokens (the max-token similarity of ablation D).

    Args:
      text_tokens, video_tokens: token outputs of the encoders (any positive scale).
      text_mask, video_mask: 1/True for valid tokens (the pooling masks of spec 3.5).
      alpha: log-sum-exp temperature (> 0).
      chunk_size: text clips processed together; memory is
        ``chunk_size * B_video * T * F`` floats (recomputed in the backward pass).
      precision: of the token-product matmul (module docstring).

    Returns:
      ``(t2v, v2t)``, each ``[B_text, B_video]``.
    """
    if text_tokens.ndim != 3 or video_tokens.ndim != 3:
        raise ValueError(
            "text_tokens and video_tokens must be [B, T, D] and [B, F, D], got "
            f"{text_tokens.shape} and {video_tokens.shape}"
        )
    if text_tokens.shape[-1] != video_tokens.shape[-1]:
        raise ValueError(
            f"token dims differ: text_tokens {text_tokens.shape} vs video_tokens {video_tokens.shape}"
        )
    if text_mask.shape != text_tokens.shape[:2]:
        raise ValueError(f"text_mask shape {text_mask.shape} != text_tokens[:2] {text_tokens.shape[:2]}")
    if video_mask.shape != video_tokens.shape[:2]:
        raise ValueError(f"video_mask shape {video_mask.shape} != video_tokens[:2] {video_tokens.shape[:2]}")
    if semantics not in ("reference", "paper"):
        raise ValueError(f"semantics must be 'reference' or 'paper', got {semantics!r}")
    if reduce not in ("lse", "max"):
        raise ValueError(f"reduce must be 'lse' or 'max', got {reduce!r}")
    check_static_positive("alpha", alpha)
    check_precision(precision)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")

    dtype = compute_dtype(text_tokens.dtype, video_tokens.dtype)
    tt = l2_normalize(text_tokens.astype(dtype))
    tv = l2_normalize(video_tokens.astype(dtype))
    mt = text_mask.astype(bool)
    mv = video_mask.astype(bool)

    @jax.checkpoint
    def per_text_clip(args):
        tokens, mask = args
        return _fine_grained_one_text_clip(
            tokens, mask, tv, mv, alpha=alpha, reduce=reduce, semantics=semantics,
            precision=precision,
        )

    t2v, v2t = jax.lax.map(per_text_clip, (tt, mt), batch_size=min(chunk_size, tt.shape[0]))
    return t2v, v2t


def clip_similarity(
    pooled_text: Array,  # [B_text, D]
    pooled_video: Array,  # [B_video, D]
    text_tokens: Array,  # [B_text, T, D]
    video_tokens: Array,  # [B_video, F, D]
    text_mask: Array,  # [B_text, T]
    video_mask: Array,  # [B_video, F]
    *,
    kind: ClipSimilarity = "lse",
    alpha: float = 1.0,
    fusion_weight: float = 0.5,
    fine_grained: FineGrained = "reference",
    chunk_size: int = 64,
    precision: MatmulPrecision = DEFAULT_MATMUL_PRECISION,
) -> Array:
    """The clip-caption similarity ``C`` of the video-paragraph loss, ``[B_text, B_video]``.

    ``kind="lse"`` (Norton, spec 2.4.3)::

        C = (w * minmax(C_mean) + (minmax(t2v) + minmax(v2t)) / 2) / (w + 1)

    with ``C_mean`` the pooled cosine and ``t2v``/``v2t`` from
    :func:`fine_grained_similarity` (paper Eq. 5).  ``kind="max"`` uses the max-token
    similarity in place of the LSE (ablation D); ``kind="mean"`` is ``minmax(C_mean)``
    alone (ablation C).  ``C`` lies in ``[0, 1]``.  Every matmul runs at ``precision``.
    """
    if kind not in ("lse", "max", "mean"):
        raise ValueError(f"clip similarity kind must be 'lse', 'max' or 'mean', got {kind!r}")
    check_static_positive("fusion_weight", fusion_weight, allow_zero=True)
    dtype = compute_dtype(pooled_text.dtype, pooled_video.dtype)
    c_mean = minmax_normalize(
        mean_pooled_similarity(pooled_text.astype(dtype), pooled_video.astype(dtype), precision=precision)
    )
    if kind == "mean":
        return c_mean
    t2v, v2t = fine_grained_similarity(
        text_tokens,
        video_tokens,
        text_mask,
        video_mask,
        alpha=alpha,
        reduce=kind,
        semantics=fine_grained,
        chunk_size=chunk_size,
        precision=precision,
    )
    c_fine = (minmax_normalize(t2v) + minmax_normalize(v2t)) / 2
    return (fusion_weight * c_mean + c_fine) / (fusion_weight + 1)

