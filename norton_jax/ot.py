"""Entropic optimal transport for Norton: one Sinkhorn solver, several evaluation methods.

Norton solves two kinds of entropic OT problems (paper Eq. 2-3): the clip-caption plan
used for faulty-negative exploitation (one ``[B, B]`` problem, epsilon 1) and the
video-paragraph plans (``N x N`` problems of ``L x L`` clips, epsilon 0.1) with the
*alignable prompt bucket* (a SuperGlue-style dustbin row and column).  Both go through
:func:`sinkhorn` below, batched over any leading axes.  Its reference method is a
``jax.lax.scan`` over log-domain potential updates; ``method=`` selects equivalent
kernel-domain evaluations of the same iterations (faster, with the unsafe range detected
and handled under jit), and ``tol=`` early stopping.  ``benchmarks/sinkhorn.py`` compares
them with ott-jax, POT and the reference PyTorch loop.

Conventions (shared with ``ott-jax``):

* ``similarity`` ``S [..., M, N]`` is a *score* to maximise: the solver maximises
  ``<Q, S> + eps * H(Q)`` subject to ``Q 1 = a`` and ``Q^T 1 = b``, i.e. it runs Sinkhorn
  on the log-kernel ``Z = S / eps`` (equivalently cost ``-S``).
* Row weights ``a`` and column weights ``b`` are normalised to sum to one over the valid
  (unmasked) entries of each problem.
* The updates follow the reference implementation exactly (spec section 2.2): potentials
  start at zero; each of the ``num_iters`` iterations first updates the rows, then the
  columns; there is no convergence check unless ``tol`` is given.  After the last
  iteration the column sums equal
  ``b`` to rounding while the row sums are only approximately ``a``.
* Plans carry no gradient: the reference computes them under ``torch.no_grad`` and Norton
  treats them as targets / weights.
"""

from __future__ import annotations

import functools
import numbers
from typing import Literal, NamedTuple

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
    iterations: Array | None = None  # []  int32 iterations run (< num_iters after early stopping)


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


Method = Literal["auto", "log", "kernel", "stabilized"]
#: Every accepted ``method=`` value of :func:`sinkhorn` / :func:`sinkhorn_with_bucket`.
METHODS: tuple[str, ...] = ("auto", "log", "kernel", "stabilized")

_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32/bf16 passes in the kernel mat-vecs on GPUs


def safe_kernel_range(dtype) -> float:
    """Largest log-range for which the plain kernel-domain iteration is safe in ``dtype``.

    The range of a problem is ``max(Z) - min(Z)`` over its valid entries (``Z = S /
    epsilon``) plus the spread of its log-weights.  Kernel entries then lie in
    ``[exp(-range), 1]`` and the scaling vectors stay well inside the dtype's exponent
    range; we allow 45% of ``log(finfo.max)``: about 40 in float32, 319 in float64.
    """
    return 0.45 * float(np.log(np.finfo(np.dtype(dtype)).max))


def _check_method(method, tol, check_every, absorb_every) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if tol is not None:
        check_static_positive("tol", tol)
    for name, value in (("check_every", check_every), ("absorb_every", absorb_every)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


class _Problem(NamedTuple):
    """One batch of OT problems in the form every variant iterates on."""

    log_kernel: Array  # [..., M, N]  Z = S / eps; 0 on invalid entries
    log_a: Array  # [..., M]  -inf on masked rows
    log_b: Array  # [..., N]
    valid: Array  # [..., M, N] bool: row and column both valid
    row_ok: Array  # [..., M] bool: a valid row of a problem that has a valid column
    col_ok: Array  # [..., N] bool


def _log_iterations(p: _Problem, v: Array, n: int) -> tuple[Array, Array]:
    """``n`` log-domain Sinkhorn iterations (spec 2.2) continuing from column potential ``v``.

    The first iteration runs outside the ``scan`` so that the carry has the type of the
    loop body's output (under ``jax.shard_map`` potentials computed from device-varying
    scores are device-varying even when ``v`` is not).
    """

    def one_iteration(carry, _):
        _, v = carry
        u = _masked_update(p.log_a, jax.nn.logsumexp(p.log_kernel + v[..., None, :], axis=-1))
        v = _masked_update(p.log_b, jax.nn.logsumexp(p.log_kernel + u[..., :, None], axis=-2))
        return (u, v), None

    first, _ = one_iteration((None, v), None)
    if n == 1:
        return first
    (u, v), _ = jax.lax.scan(one_iteration, first, None, length=n - 1)
    return u, v


#: Problems with at most this many entries run the kernel mat-vecs as unrolled
#: multiply-adds over the batch axis (vectorised over problems), not as batched dots.
SMALL_PROBLEM_ENTRIES = 144


def _kernel_iterations(
    kernel: Array,  # [..., M, N]  exp(Z + u0 + v0), 0 on invalid entries
    a: Array,  # [..., M]
    b: Array,  # [..., N]
    p: _Problem,
    scale_v: Array,  # [..., N]  starting column scaling (ones for a fresh kernel)
    n: int,
    *,
    track_growth: bool,
) -> tuple[Array, Array, Array | None]:
    """``n`` scaling-vector iterations ``U = a / (K V)``, ``V = b / (K^T U)`` (rows first).

    With ``K = exp(Z + u0 + v0)`` these are the log-domain updates in the exponential
    domain: ``u = u0 + log U`` and ``v = v0 + log V``.  Rows and columns without valid
    entries get a zero scaling (their potential is ``-inf``, as in the log domain).  With
    ``track_growth`` also returns ``max log U + max log V`` over the iterations ``[...]``:
    how much a kernel entry that under-flowed to zero could have grown meanwhile.

    Small problems (``M * N <= SMALL_PROBLEM_ENTRIES``, e.g. Norton's 9 x 9 bucket
    problems) move the problem axes in front and write each mat-vec as ``M * N``
    multiply-adds of batch-long vectors, which XLA vectorises over the batch; larger ones
    use batched dots (``precision=HIGHEST``: no reduced-precision passes on accelerators).
    """
    m, n_cols = kernel.shape[-2:]
    row_ok, col_ok = p.row_ok, p.col_ok
    if m * n_cols <= SMALL_PROBLEM_ENTRIES:
        front = lambda x: jnp.moveaxis(x, -1, 0)  # noqa: E731  [..., K] -> [K, ...]
        kt = jnp.moveaxis(kernel, (-2, -1), (0, 1))  # [M, N, ...]
        a, b, row_ok, col_ok, scale_v = map(front, (a, b, row_ok, col_ok, scale_v))

        def matvec(x):  # [N, ...] -> [M, ...]
            return jnp.stack([functools.reduce(jnp.add, [kt[i, j] * x[j] for j in range(n_cols)])
                              for i in range(m)])

        def rmatvec(y):  # [M, ...] -> [N, ...]
            return jnp.stack([functools.reduce(jnp.add, [kt[i, j] * y[i] for i in range(m)])
                              for j in range(n_cols)])

        reduce_axis = 0
    else:
        def matvec(x):
            return jnp.einsum("...ij,...j->...i", kernel, x, precision=_HIGHEST)

        def rmatvec(y):
            return jnp.einsum("...ij,...i->...j", kernel, y, precision=_HIGHEST)

        reduce_axis = -1

    def one_iteration(carry, _):
        _, v_scale, grow_u, grow_v = carry
        u_scale = jnp.where(row_ok, a / matvec(v_scale), 0.0)
        v_scale = jnp.where(col_ok, b / rmatvec(u_scale), 0.0)
        if track_growth:
            grow_u = u_scale if grow_u is None else jnp.maximum(grow_u, u_scale)
            grow_v = v_scale if grow_v is None else jnp.maximum(grow_v, v_scale)
        return (u_scale, v_scale, grow_u, grow_v), None

    carry, _ = one_iteration((None, scale_v, None, None), None)
    if n > 1:
        carry, _ = jax.lax.scan(one_iteration, carry, None, length=n - 1)
    u_scale, v_scale, grow_u, grow_v = carry
    growth = None
    if track_growth:
        growth = (jnp.max(jnp.log(grow_u), axis=reduce_axis)
                  + jnp.max(jnp.log(grow_v), axis=reduce_axis))  # [...]
    if reduce_axis == 0:
        u_scale, v_scale = jnp.moveaxis(u_scale, 0, -1), jnp.moveaxis(v_scale, 0, -1)
    return u_scale, v_scale, growth


def _all_positive_finite(x: Array, ok: Array) -> Array:
    """True when every entry of ``x`` where ``ok`` is finite and > 0 (a scalar)."""
    return jnp.all(jnp.where(ok, jnp.isfinite(x) & (x > 0), True))


def _marginal_error(row_sums: Array, col_sums: Array, p: _Problem) -> Array:
    """L1 error of the row sums plus the column sums against the weights ``[...]``."""
    row_err = jnp.sum(jnp.abs(row_sums - jnp.exp(p.log_a)), axis=-1)
    col_err = jnp.sum(jnp.abs(col_sums - jnp.exp(p.log_b)), axis=-1)
    return row_err + col_err


def _plan_error(plan: Array, p: _Problem) -> Array:
    return _marginal_error(jnp.sum(plan, axis=-1), jnp.sum(plan, axis=-2), p)


def _iterate(step, error, state, *, num_iters: int, block: int, tol: float | None, check_every: int):
    """Runs ``step(state, n)`` for ``num_iters`` iterations in blocks.

    Fixed count (``tol=None``): blocks of ``block`` iterations (``lax.scan``).  Early
    stopping: blocks of ``check_every`` iterations in a ``lax.while_loop`` that stops once
    ``max(error(state)) <= tol`` over the whole batch or at ``num_iters``.  Returns the
    final state and the iteration count (an int32 scalar).
    """
    if tol is None:
        n_blocks, rest = divmod(num_iters, block)
        if n_blocks:
            state = step(state, block)  # outside the scan: see _log_iterations
        if n_blocks > 1:
            state, _ = jax.lax.scan(lambda s, _: (step(s, block), None), state, None, length=n_blocks - 1)
        if rest:
            state = step(state, rest)
        return state, jnp.asarray(num_iters, jnp.int32)

    first = min(check_every, num_iters)
    state = step(state, first)
    err = jnp.max(error(state))

    def cond_fn(carry):
        it, _, err = carry
        return (it + check_every <= num_iters) & ~(err <= tol)

    def body_fn(carry):
        it, state, _ = carry
        state = step(state, check_every)
        return it + check_every, state, jnp.max(error(state))

    it, state, err = jax.lax.while_loop(cond_fn, body_fn, (jnp.asarray(first, jnp.int32), state, err))
    rest = (num_iters - first) % check_every
    if rest:
        go_on = ~(err <= tol)
        state = jax.lax.cond(go_on, lambda s: step(s, rest), lambda s: s, state)
        it = it + jnp.where(go_on, rest, 0).astype(jnp.int32)
    return state, it


def _solve_log(p: _Problem, num_iters, tol, check_every):
    """Log-domain scan (the reference's algorithm).  Returns ``(u, v, plan, iterations)``."""

    def step(state, n):
        return _log_iterations(p, state[1], n)

    def error(state):
        u, v = state
        return _plan_error(jnp.exp(p.log_kernel + u[..., :, None] + v[..., None, :]), p)

    init = (jnp.zeros_like(p.log_a), jnp.zeros_like(p.log_b))
    (u, v), iters = _iterate(step, error, init, num_iters=num_iters, block=num_iters, tol=tol,
                             check_every=check_every)
    plan = jnp.exp(jnp.where(p.valid, p.log_kernel + u[..., :, None] + v[..., None, :], -jnp.inf))
    return (u, v, plan, iters)


def _solve_kernel(p: _Problem, num_iters, tol, check_every):
    """Kernel domain on ``K = exp(Z - max Z)``; returns ``((u, v, plan, iterations), ok)``.

    ``ok`` is False when a scaling vector over- or under-flowed (only possible outside
    :func:`safe_kernel_range`); the caller then uses another path.
    """
    shift = jnp.max(jnp.where(p.valid, p.log_kernel, -jnp.inf), axis=(-2, -1), keepdims=True)
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)  # [..., 1, 1]
    kernel = jnp.where(p.valid, jnp.exp(p.log_kernel - shift), 0.0)  # [..., M, N]
    a, b = jnp.exp(p.log_a), jnp.exp(p.log_b)

    def step(state, n):
        u_scale, v_scale, _ = _kernel_iterations(kernel, a, b, p, state[1], n, track_growth=False)
        return u_scale, v_scale

    def error(state):
        u_scale, v_scale = state
        rows = u_scale * jnp.einsum("...ij,...j->...i", kernel, v_scale, precision=_HIGHEST)
        cols = v_scale * jnp.einsum("...ij,...i->...j", kernel, u_scale, precision=_HIGHEST)
        return _marginal_error(rows, cols, p)

    init = (jnp.ones_like(a), jnp.ones_like(b))
    (u_scale, v_scale), iters = _iterate(step, error, init, num_iters=num_iters, block=num_iters,
                                         tol=tol, check_every=check_every)
    ok = _all_positive_finite(u_scale, p.row_ok) & _all_positive_finite(v_scale, p.col_ok)
    u = jnp.log(u_scale) - shift[..., 0]  # [..., M]
    v = jnp.log(v_scale)  # [..., N]
    plan = kernel * u_scale[..., :, None] * v_scale[..., None, :]
    return (u, v, plan, iters), ok


def _solve_stabilized(p: _Problem, num_iters, tol, check_every, absorb_every):
    """Kernel domain with the potentials absorbed into the kernel every block.

    State: potentials ``(u, v)``, the kernel ``K = exp(Z + u + v)`` and scalings
    ``(U, V)``; the current plan is ``K * U * V``.  Each block first absorbs the scalings
    (``u += log U``, ``v += log V``, one exp pass to rebuild ``K``), then runs
    ``absorb_every`` scaling iterations on ``K``.  A block whose scalings are not finite or
    grew by more than :func:`safe_kernel_range` (so that entries that under-flowed in
    ``K`` could matter) is redone in the log domain.  Safe for any range; returns
    ``(u, v, plan, iterations)``.  The returned plan is ``K * U * V``, consistent with the
    last column update (rebuilding ``exp(Z + u + v)`` would round the exponent again).
    """
    bound = safe_kernel_range(p.log_kernel.dtype)
    a, b = jnp.exp(p.log_a), jnp.exp(p.log_b)

    def absorb(u, v):
        return jnp.where(p.valid, jnp.exp(p.log_kernel + u[..., :, None] + v[..., None, :]), 0.0)

    def ones_like(x):  # ones with x's type (device-varying under shard_map if x is)
        return jnp.where(jnp.isnan(x), 1.0, 1.0).astype(x.dtype)

    def step(state, n):
        u, v, kernel, u_scale, v_scale = state
        if u_scale is not None:  # not the first block (whose kernel is fresh)
            u = u + jnp.log(u_scale)
            v = v + jnp.log(v_scale)
            kernel = absorb(u, v)
        u_scale, v_scale, growth = _kernel_iterations(kernel, a, b, p, ones_like(v), n, track_growth=True)
        ok = (
            _all_positive_finite(u_scale, p.row_ok)
            & _all_positive_finite(v_scale, p.col_ok)
            & jnp.all(~(growth > bound))
        )

        def redo_in_log_domain():
            u_log, v_log = _log_iterations(p, v, n)
            return u_log, v_log, absorb(u_log, v_log), ones_like(u_scale), ones_like(v_scale)

        return jax.lax.cond(ok, lambda: (u, v, kernel, u_scale, v_scale), redo_in_log_domain)

    def error(state):
        _, _, kernel, u_scale, v_scale = state
        return _plan_error(kernel * u_scale[..., :, None] * v_scale[..., None, :], p)

    # Start from the row-wise maximum: the first row update is then exact in any range.
    row_max = jnp.max(jnp.where(p.valid, p.log_kernel, -jnp.inf), axis=-1)
    u0 = jnp.where(jnp.isfinite(row_max), -row_max, 0.0)  # [..., M]
    # Zeros computed from the inputs, so that their type matches the log-domain branch's
    # potentials under jax.shard_map.
    col_max = jnp.max(jnp.where(p.valid, p.log_kernel, -jnp.inf), axis=-2)
    v0 = jnp.where(jnp.isnan(col_max), 0.0, 0.0).astype(p.log_b.dtype)  # [..., N]
    block = check_every if tol is not None else absorb_every
    state, iters = _iterate(step, error, (u0, v0, absorb(u0, v0), None, None), num_iters=num_iters,
                            block=block, tol=tol, check_every=block)
    u, v, kernel, u_scale, v_scale = state
    plan = kernel * u_scale[..., :, None] * v_scale[..., None, :]
    return (u + jnp.log(u_scale), v + jnp.log(v_scale), plan, iters)


def _kernel_range(p: _Problem) -> Array:
    """Largest log-range over the batch (a scalar; see :func:`safe_kernel_range`)."""

    def spread(x, ok, axes):
        hi = jnp.max(jnp.where(ok, x, -jnp.inf), axis=axes)
        lo = jnp.min(jnp.where(ok, x, jnp.inf), axis=axes)
        return jnp.where(hi >= lo, hi - lo, 0.0)  # empty problems: 0

    total = (
        spread(p.log_kernel, p.valid, (-2, -1))
        + spread(p.log_a, p.row_ok, -1)
        + spread(p.log_b, p.col_ok, -1)
    )
    return jnp.max(total)


def _solve(p: _Problem, method: str, num_iters, tol, check_every, absorb_every):
    log = lambda: _solve_log(p, num_iters, tol, check_every)  # noqa: E731
    if method == "log" or (method == "auto" and jnp.finfo(p.log_kernel.dtype).bits > 32):
        return log()  # auto in float64: the reference's exact semantics
    if method == "stabilized":
        return _solve_stabilized(p, num_iters, tol, check_every, absorb_every)

    def kernel_or_log():
        # Within the safe range the scalings cannot over-flow; the check is insurance.
        out, ok = _solve_kernel(p, num_iters, tol, check_every)
        return jax.lax.cond(ok, lambda: out, log)

    # Every branch returns real solver outputs (never placeholders), so that the branch
    # types agree under jax.shard_map whichever inputs are device-varying.
    safe = _kernel_range(p) <= safe_kernel_range(p.log_kernel.dtype)
    if method == "kernel":
        return jax.lax.cond(safe, kernel_or_log, log)
    return jax.lax.cond(
        safe, kernel_or_log, lambda: _solve_stabilized(p, num_iters, tol, check_every, absorb_every)
    )


@functools.partial(
    jax.jit, static_argnames=("epsilon", "num_iters", "method", "tol", "check_every", "absorb_every")
)
def sinkhorn(
    similarity: Array,  # [..., M, N]
    *,
    epsilon: float,
    num_iters: int = 50,
    row_weights: Array | None = None,  # [..., M] (normalised over valid rows)
    col_weights: Array | None = None,  # [..., N]
    row_mask: Array | None = None,  # [..., M] bool, True = valid
    col_mask: Array | None = None,  # [..., N] bool
    method: Method = "auto",
    tol: float | None = None,
    check_every: int = 10,
    absorb_every: int = 10,
) -> SinkhornResult:
    """Entropic OT by Sinkhorn iterations (paper Eq. 2-3, spec section 2.2).

    Maximises ``<Q, S> + epsilon * H(Q)`` over plans with marginals ``a`` (rows) and
    ``b`` (columns).  With ``Z = S / epsilon`` and ``u = v = 0`` it repeats
    ``num_iters`` times::

        u = log a - logsumexp_j(Z_ij + v_j)      # rows first
        v = log b - logsumexp_i(Z_ij + u_i)      # then columns

    and returns ``log Q = Z + u[:, None] + v[None, :]``.  Every ``method`` runs these
    same iterations in the same order (so fixed-count results agree to rounding); they
    differ in how the iterations are evaluated:

    * ``"log"``: the log-sum-exp updates above in a ``lax.scan`` (the reference).
    * ``"kernel"``: scaling vectors ``U = a / (K V)``, ``V = b / (K^T U)`` on the kernel
      ``K = exp(Z - max Z)``: two mat-vecs per iteration instead of two exp passes.
      Safe while the problem's log-range (:func:`safe_kernel_range`) fits the dtype;
      outside it (or if a scaling over-flows) it runs the log path instead, under jit.
    * ``"stabilized"``: the kernel iteration with the potentials absorbed into the kernel
      (``K = exp(Z + u + v)``) every ``absorb_every`` iterations; a block whose scalings
      leave the safe range is redone in the log domain.  Safe for any range.
    * ``"auto"`` (default): float32 (and promoted bfloat16/float16) picks ``"kernel"``
      when the whole batch is in its safe range and ``"stabilized"`` otherwise (a
      ``lax.cond``, decided under jit); float64 runs ``"log"`` (the reference's exact
      semantics, used by the parity tests).

    Args:
      similarity: scores ``[..., M, N]``, batched over any leading axes.  Any float dtype;
        the solver runs in float32 at least (float64 under ``jax_enable_x64``).
      epsilon: entropic regularisation (> 0), a static Python number.
      num_iters: number of (row, column) update pairs, a static positive int; the maximum
        when ``tol`` is given.
      row_weights, col_weights: non-negative weights ``[..., M]`` / ``[..., N]``, uniform if
        ``None``; normalised to sum to one over the valid entries of each problem.
      row_mask, col_mask: ``True`` for valid rows/columns (ragged sizes).  Masked rows and
        columns get exactly zero mass and do not influence the rest of the plan.
      method: one of :data:`METHODS` (static).
      tol: early stopping (static, ``None`` = fixed ``num_iters``): checks the marginal
        error every ``check_every`` iterations in a ``lax.while_loop`` and stops once the
        largest one over the batch is ``<= tol``.  The result then equals the
        fixed-count result at the returned ``iterations``.
      check_every: iterations between two checks of ``tol`` (static).
      absorb_every: iterations between two absorptions of ``"stabilized"`` (static); with
        ``tol`` it absorbs at every check instead.

    Returns:
      :class:`SinkhornResult`.  Gradients are stopped: the plan is a constant.
    """
    similarity = jnp.asarray(similarity)
    if similarity.ndim < 2:
        raise ValueError(f"similarity must have shape [..., M, N], got {similarity.shape}")
    check_static_positive("epsilon", epsilon)
    _check_iters(num_iters)
    _check_method(method, tol, check_every, absorb_every)
    dtype = compute_dtype(similarity.dtype)
    *batch, m, n = similarity.shape
    log_a = _log_weights(row_weights, row_mask, (*batch, m), "row", dtype)  # [..., M]
    log_b = _log_weights(col_weights, col_mask, (*batch, n), "col", dtype)  # [..., N]

    scores = jax.lax.stop_gradient(similarity).astype(dtype)
    # Masked entries are ignored through -inf weights; zero them so that garbage
    # (even NaN) in padding cannot leak into the valid part.
    row_valid = jnp.isfinite(log_a)
    col_valid = jnp.isfinite(log_b)
    valid = row_valid[..., :, None] & col_valid[..., None, :]  # [..., M, N]
    log_kernel = jnp.where(valid, scores / jnp.asarray(epsilon, dtype), 0.0)  # [..., M, N]
    problem = _Problem(
        log_kernel=log_kernel,
        log_a=log_a,
        log_b=log_b,
        valid=valid,
        row_ok=row_valid & jnp.any(col_valid, axis=-1, keepdims=True),
        col_ok=col_valid & jnp.any(row_valid, axis=-1, keepdims=True),
    )
    u, v, plan, iterations = _solve(problem, method, num_iters, tol, check_every, absorb_every)

    log_plan = jnp.where(valid, log_kernel + u[..., :, None] + v[..., None, :], -jnp.inf)
    eps = jnp.asarray(epsilon, dtype)
    return SinkhornResult(
        plan=plan,
        log_plan=log_plan,
        row_potential=eps * u,
        col_potential=eps * v,
        marginal_error=_plan_error(plan, problem),
        iterations=iterations,
    )


def _valid_count(mask: Array | None, shape: tuple[int, ...], dtype) -> Array:
    """Number of valid entries along the last axis of ``shape`` ([...])."""
    if mask is None:
        return jnp.full(shape[:-1], shape[-1], dtype)
    return jnp.sum(jnp.broadcast_to(jnp.asarray(mask).astype(bool), shape), axis=-1).astype(dtype)


class BucketProblem(NamedTuple):
    """The padded OT problem behind :func:`sinkhorn_with_bucket` (spec 2.4.6)."""

    similarity: Array  # [..., M+1, N+1]  scores with the bucket as last row and column
    row_weights: Array  # [..., M+1]  1 per real row, n (valid columns) for the bucket row
    col_weights: Array  # [..., N+1]  1 per real column, m (valid rows) for the bucket column
    row_mask: Array | None  # [..., M+1]  None when no row mask was given
    col_mask: Array | None  # [..., N+1]
    log_scale: Array  # [..., 1, 1]  log(m + n): the reference's x (m + n) on the plan


def bucket_problem(
    similarity: Array,  # [..., M, N]
    bucket_value: Array | float,  # scalar or [...]
    *,
    row_mask: Array | None = None,  # [..., M]
    col_mask: Array | None = None,  # [..., N]
) -> BucketProblem:
    """Pads the alignable prompt bucket into the problem (paper Eq. 6, spec 2.4.6).

    ``sinkhorn(problem.similarity, row_weights=..., col_weights=..., row_mask=...,
    col_mask=...)`` then solves Norton's bucket OT; :func:`sinkhorn_with_bucket` does
    exactly that and rescales.  Exposed for benchmarks that feed the same problem to other
    solvers.
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
    log_scale = jnp.log(jnp.maximum(num_rows + num_cols, 1.0))[..., None, None]
    return BucketProblem(padded, row_w, col_w, row_mask_b, col_mask_b, log_scale)


@functools.partial(
    jax.jit, static_argnames=("epsilon", "num_iters", "method", "tol", "check_every", "absorb_every")
)
def sinkhorn_with_bucket(
    similarity: Array,  # [..., M, N]
    bucket_value: Array | float,  # scalar or [...]
    *,
    epsilon: float,
    num_iters: int = 50,
    row_mask: Array | None = None,  # [..., M]
    col_mask: Array | None = None,  # [..., N]
    method: Method = "auto",
    tol: float | None = None,
    check_every: int = 10,
    absorb_every: int = 10,
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
      epsilon, num_iters, method, tol, check_every, absorb_every: as in :func:`sinkhorn`.
      row_mask, col_mask: valid rows/columns for ragged problems.

    Returns:
      The plan ``[..., M, N]`` without the bucket, zero on masked entries, no gradient.
    """
    problem = bucket_problem(similarity, bucket_value, row_mask=row_mask, col_mask=col_mask)
    m, n = problem.similarity.shape[-2] - 1, problem.similarity.shape[-1] - 1
    result = sinkhorn(
        problem.similarity,
        epsilon=epsilon,
        num_iters=num_iters,
        row_weights=problem.row_weights,
        col_weights=problem.col_weights,
        row_mask=problem.row_mask,
        col_mask=problem.col_mask,
        method=method,
        tol=tol,
        check_every=check_every,
        absorb_every=absorb_every,
    )
    # x (m + n): the reference's exp(logP - n0) with n0 = -log(m + n).
    return jnp.exp(result.log_plan[..., :m, :n] + problem.log_scale)
