"""Entropic optimal transport for Norton: one log-domain Sinkhorn solver.

Norton solves two kinds of entropic OT problems (paper Eq. 2-3): the clip-caption plan
used for faulty-negative exploitation (one ``[B, B]`` problem, epsilon 1) and the
video-paragraph plans (``N x N`` problems of ``L x L`` clips, epsilon 0.1) with the
*alignable prompt bucket* (a SuperGlue-style dustbin row and column).  Both go through
:func:`sinkhorn` below, a ``jax.lax.scan`` over log-domain potential updates that is
batched over any leading axes.

Conventions (shared with ``ott-jax``):

* ``similarity`` ``S [..., M, N]`` is a *score* to maximise: the solver maximises
  ``<Q, S> + eps * H(Q)`` subject to ``Q 1 = a`` and ``Q^T 1 = b``, i.e. it runs Sinkhorn
  on the log-kernel ``Z = S / eps`` (equivalently cost ``-S``).
* Row weights ``a`` and column weights ``b`` are normalised to sum to one over the valid
  (unmasked) entries of each problem.
* The updates follow the reference implementation exactly (spec section 2.2): potentials
  start at zero; each of the ``num_iters`` iterations first updates the rows, then the
  columns; there is no convergence check.  After the last iteration the column sums equal
  ``b`` to rounding while the row sums are only approximately ``a``.
* Plans carry no gradient: the reference computes them under ``torch.no_grad`` and Norton
  treats them as targets / weights.
"""

from __future__ import annotations

import functools
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class SinkhornResult(NamedTuple):
    """Output of :func:`sinkhorn`; every array shares the problem's leading axes ``...``."""

    plan: Array  # [..., M, N]  transport plan; exactly 0 on masked rows/columns
    log_plan: Array  # [..., M, N]  log of the plan; -inf on masked rows/columns
    row_potential: Array  # [..., M]  f = eps * u  (-inf on masked rows)
    col_potential: Array  # [..., N]  g = eps * v  (-inf on masked columns)
    marginal_error: Array  # [...]  L1 error of row sums + column sums vs. the weights


def compute_dtype(*dtypes) -> jnp.dtype:
    """The floating dtype Norton computes OT and losses in: float32 at least.

    bfloat16/float16 inputs are promoted to float32; float64 (with ``jax_enable_x64``)
    stays float64.
    """
    dtype = jnp.result_type(*dtypes)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float32
    return jnp.promote_types(dtype, jnp.float32)


def check_static_positive(name: str, value, *, allow_zero: bool = False) -> None:
    """Raises ``ValueError`` at trace time when a static hyper-parameter is out of range."""
    if isinstance(value, jax.core.Tracer):
        return  # a traced value cannot be checked while tracing
    value_np = np.asarray(value)
    if value_np.size != 1 or not np.isfinite(value_np).all():
        raise ValueError(f"{name} must be a finite scalar, got {value!r}")
    v = float(value_np)
    if v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def _check_iters(num_iters) -> None:
    if not isinstance(num_iters, numbers.Integral) or isinstance(num_iters, bool) or num_iters < 1:
        raise ValueError(f"num_iters must be a positive int, got {num_iters!r}")


def _log_weights(
    weights: Array | None, mask: Array | None, shape: tuple[int, ...], axis_name: str, dtype
) -> Array:
    """Log of the weights normalised over the valid entries; -inf where masked.

    ``shape`` is ``[..., K]``; weights and mask broadcast to it.
    """
    if weights is None:
        w = jnp.ones(shape, dtype)
    else:
        w = jnp.asarray(weights, dtype)
        try:
            w = jnp.broadcast_to(w, shape)
        except ValueError as e:
            raise ValueError(
                f"{axis_name}_weights of shape {w.shape} does not broadcast to {shape}"
            ) from e
    if mask is not None:
        m = jnp.asarray(mask)
        try:
            m = jnp.broadcast_to(m, shape)
        except ValueError as e:
            raise ValueError(f"{axis_name}_mask of shape {m.shape} does not broadcast to {shape}") from e
        w = jnp.where(m.astype(bool), w, 0.0)
    total = jnp.sum(w, axis=-1, keepdims=True)
    # An empty problem (no valid entry) gets -inf weights everywhere and an all-zero plan.
    safe_total = jnp.where(total > 0, total, 1.0)
    w = w / safe_total
    return jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)), -jnp.inf)


def _masked_update(log_weight: Array, log_sum: Array) -> Array:
    """u = a - logsumexp(...) with empty sums and zero weights giving -inf, never NaN."""
    finite = jnp.isfinite(log_sum)
    return jnp.where(finite & jnp.isfinite(log_weight), log_weight - jnp.where(finite, log_sum, 0.0), -jnp.inf)


@functools.partial(jax.jit, static_argnames=("epsilon", "num_iters"))
def sinkhorn(
    similarity: Array,  # [..., M, N]
    *,
    epsilon: float,
    num_iters: int = 50,
    row_weights: Array | None = None,  # [..., M] (normalised over valid rows)
    col_weights: Array | None = None,  # [..., N]
    row_mask: Array | None = None,  # [..., M] bool, True = valid
    col_mask: Array | None = None,  # [..., N] bool
) -> SinkhornResult:
    """Entropic OT by log-domain Sinkhorn iterations (paper Eq. 2-3, spec section 2.2).

    Maximises ``<Q, S> + epsilon * H(Q)`` over plans with marginals ``a`` (rows) and
    ``b`` (columns).  With ``Z = S / epsilon`` and ``u = v = 0`` it repeats
    ``num_iters`` times::

        u = log a - logsumexp_j(Z_ij + v_j)      # rows first
        v = log b - logsumexp_i(Z_ij + u_i)      # then columns

    and returns ``log Q = Z + u[:, None] + v[None, :]``.

    Args:
      similarity: scores ``[..., M, N]``, batched over any leading axes.  Any float dtype;
        the solver runs in float32 at least (float64 under ``jax_enable_x64``).
      epsilon: entropic regularisation (> 0), a static Python number.
      num_iters: number of (row, column) update pairs, a static positive int.
      row_weights, col_weights: non-negative weights ``[..., M]`` / ``[..., N]``, uniform if
        ``None``; normalised to sum to one over the valid entries of each problem.
      row_mask, col_mask: ``True`` for valid rows/columns (ragged sizes).  Masked rows and
        columns get exactly zero mass and do not influence the rest of the plan.

    Returns:
      :class:`SinkhornResult`.  Gradients are stopped: the plan is a constant.
    """
    similarity = jnp.asarray(similarity)
    if similarity.ndim < 2:
        raise ValueError(f"similarity must have shape [..., M, N], got {similarity.shape}")
    check_static_positive("epsilon", epsilon)
    _check_iters(num_iters)
    dtype = compute_dtype(similarity.dtype)
    *batch, m, n = similarity.shape
    log_a = _log_weights(row_weights, row_mask, (*batch, m), "row", dtype)  # [..., M]
    log_b = _log_weights(col_weights, col_mask, (*batch, n), "col", dtype)  # [..., N]

    scores = jax.lax.stop_gradient(similarity).astype(dtype)
    # Masked entries are ignored through -inf weights; zero them so that garbage
    # (even NaN) in padding cannot leak into the valid part.
    valid = jnp.isfinite(log_a)[..., :, None] & jnp.isfinite(log_b)[..., None, :]
    log_kernel = jnp.where(valid, scores / jnp.asarray(epsilon, dtype), 0.0)  # [..., M, N]

    def one_iteration(carry, _):
        _, v = carry
        u = _masked_update(log_a, jax.nn.logsumexp(log_kernel + v[..., None, :], axis=-1))
        v = _masked_update(log_b, jax.nn.logsumexp(log_kernel + u[..., :, None], axis=-2))
        return (u, v), None

    # The first iteration (from u = v = 0) runs outside the scan so that the carry
    # has the same type as the loop body's output (also under jax.shard_map, where
    # potentials computed from device-varying scores are device-varying).
    first, _ = one_iteration((None, jnp.zeros_like(log_b)), None)
    (u, v), _ = jax.lax.scan(one_iteration, first, None, length=num_iters - 1)

    log_plan = log_kernel + u[..., :, None] + v[..., None, :]
    log_plan = jnp.where(valid, log_plan, -jnp.inf)
    plan = jnp.exp(log_plan)
    row_err = jnp.sum(jnp.abs(jnp.sum(plan, axis=-1) - jnp.exp(log_a)), axis=-1)
    col_err = jnp.sum(jnp.abs(jnp.sum(plan, axis=-2) - jnp.exp(log_b)), axis=-1)
    eps = jnp.asarray(epsilon, dtype)
    return SinkhornResult(
        plan=plan,
        log_plan=log_plan,
        row_potential=eps * u,
        col_potential=eps * v,
        marginal_error=row_err + col_err,
    )


def _valid_count(mask: Array | None, shape: tuple[int, ...], dtype) -> Array:
    """Number of valid entries along the last axis of ``shape`` ([...])."""
    if mask is None:
        return jnp.full(shape[:-1], shape[-1], dtype)
    return jnp.sum(jnp.broadcast_to(jnp.asarray(mask).astype(bool), shape), axis=-1).astype(dtype)


@functools.partial(jax.jit, static_argnames=("epsilon", "num_iters"))
def sinkhorn_with_bucket(
    similarity: Array,  # [..., M, N]
    bucket_value: Array | float,  # scalar or [...]
    *,
    epsilon: float,
    num_iters: int = 50,
    row_mask: Array | None = None,  # [..., M]
    col_mask: Array | None = None,  # [..., N]
) -> Array:
    """OT with Norton's alignable prompt bucket (paper Eq. 6, spec section 2.4.6).

    The bucket is one extra row and one extra column whose scores (row, column and
    corner) all equal ``bucket_value`` ``p`` (divided by ``epsilon`` like the scores).
    With ``m`` valid rows and ``n`` valid columns the marginals are the reference's
    dustbin masses: ``1/(m+n)`` per real row and column, ``n/(m+n)`` for the bucket row
    and ``m/(m+n)`` for the bucket column.  The plan is multiplied by ``m+n`` (every real
    row then sums to about one including its bucket entry) and the bucket row and column
    are dropped, so the returned rows sum to the share of each row that is *aligned*.

    Args:
      similarity: scores ``[..., M, N]`` (rows = captions, columns = clips in Norton).
      bucket_value: ``p``, a scalar or one value per problem (shape ``[...]``).
      epsilon, num_iters: as in :func:`sinkhorn`.
      row_mask, col_mask: valid rows/columns for ragged problems.

    Returns:
      The plan ``[..., M, N]`` without the bucket, zero on masked entries, no gradient.
    """
    similarity = jnp.asarray(similarity)
    if similarity.ndim < 2:
        raise ValueError(f"similarity must have shape [..., M, N], got {similarity.shape}")
    dtype = compute_dtype(similarity.dtype)
    *batch, m, n = similarity.shape
    batch = tuple(batch)
    p = jnp.asarray(bucket_value, dtype)
    try:
        p = jnp.broadcast_to(p, batch)
    except ValueError as e:
        raise ValueError(
            f"bucket_value of shape {p.shape} must be a scalar or have the batch shape {batch}"
        ) from e

    num_rows = _valid_count(row_mask, (*batch, m), dtype)  # [...]
    num_cols = _valid_count(col_mask, (*batch, n), dtype)  # [...]
    # Pad the bucket in as the last row and column: [..., M+1, N+1].
    padded = jnp.broadcast_to(p[..., None, None], (*batch, m + 1, n + 1))
    padded = padded.at[..., :m, :n].set(similarity.astype(dtype))
    row_w = jnp.concatenate([jnp.ones((*batch, m), dtype), num_cols[..., None]], axis=-1)
    col_w = jnp.concatenate([jnp.ones((*batch, n), dtype), num_rows[..., None]], axis=-1)
    ones = lambda k: jnp.ones((*batch, k), bool)  # noqa: E731
    row_mask_b = None if row_mask is None else jnp.concatenate(
        [jnp.broadcast_to(jnp.asarray(row_mask).astype(bool), (*batch, m)), ones(1)], axis=-1
    )
    col_mask_b = None if col_mask is None else jnp.concatenate(
        [jnp.broadcast_to(jnp.asarray(col_mask).astype(bool), (*batch, n)), ones(1)], axis=-1
    )
    result = sinkhorn(
        padded,
        epsilon=epsilon,
        num_iters=num_iters,
        row_weights=row_w,
        col_weights=col_w,
        row_mask=row_mask_b,
        col_mask=col_mask_b,
    )
    # x (m + n): the reference's exp(logP - n0) with n0 = -log(m + n).
    log_scale = jnp.log(jnp.maximum(num_rows + num_cols, 1.0))[..., None, None]
    return jnp.exp(result.log_plan[..., :m, :n] + log_scale)
