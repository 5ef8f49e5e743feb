"""Dynamic time warping and OTAM, vectorised over anti-diagonals.

``D[i, j] = cost[i, j] + min(D[i-1, j-1], D[i-1, j], D[i, j-1])`` with ``D[0, 0] =
cost[0, 0]``.  The recursion is evaluated one anti-diagonal ``i + j = k`` at a time in a
``jax.lax.scan`` (every cell of a diagonal depends only on the two previous diagonals),
so one problem costs ``M + N - 1`` vector steps instead of ``M * N`` Python steps, and
any leading batch axes are handled in the same pass.

The same scan evaluates soft-DTW (Cuturi & Blondel, 2017; the TempCLR-style sequence
distance, :func:`soft_dtw_distance`): the hard minimum becomes
``min_gamma(a, b, c) = -gamma * log(exp(-a/gamma) + exp(-b/gamma) + exp(-c/gamma))``,
which is differentiable (reverse-mode through the scan) and tends to DTW as ``gamma -> 0``.

The same scan also evaluates the OTAM recursion of the reference evaluation (spec §5.4,
``OTAM_eval_cum_dist``), and :func:`pad_dtw` / :func:`pad_otam` reproduce the reference's
padding helpers (``DTW_pad`` / ``OTAM_pad``: torch ``F.pad`` semantics, negative amounts
crop, plus the zero block with its Python-slice quirks, trap T22) for a whole batch of
matrices of different sizes at once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from norton_jax.ot import compute_dtype

Array = jax.Array

OTAM_VARIANTS = ("reference", "textbook")

#: Default soft-DTW smoothing ``gamma``: for per-cell costs in ``[0, 1]`` (``1 - C`` of the
#: fused similarity of Eq. 5) ``0.1`` keeps the soft minimum within ``gamma * log 3 ~ 0.11``
#: of the hard one per step while still spreading gradient over near-optimal paths.
DEFAULT_SOFT_DTW_GAMMA = 0.1

#: Finite stand-in for ``+inf`` inside the soft minimum: keeps its gradient NaN-free at the
#: borders (where all three predecessors may be outside the matrix).
_SOFT_BIG = 1e20


def _soft_min3(a: Array, b: Array, c: Array, gamma: Array) -> Array:
    """``-gamma * logsumexp(-[a, b, c] / gamma)`` elementwise, with ``+inf`` entries ignored."""
    x = jnp.stack([a, b, c], axis=0)
    x = jnp.where(jnp.isfinite(x), x, jnp.asarray(_SOFT_BIG, x.dtype))
    return -gamma * jax.nn.logsumexp(-x / gamma, axis=0)


def _cell_rule(rule: str, c, diag, up, left, rows, cols, k, n, gamma=None):
    """Value of every cell ``(rows, cols)`` of anti-diagonal ``k`` (vectors over rows).

    ``diag = D[i-1, j-1]``, ``up = D[i-1, j]``, ``left = D[i, j-1]`` (``+inf`` outside).
    ``gamma`` is the smoothing of ``rule == "soft_dtw"`` (unused otherwise).
    """
    if rule == "dtw":
        best = jnp.minimum(jnp.minimum(diag, up), left)
        return c + jnp.where(k == 0, jnp.zeros_like(best), best)
    if rule == "soft_dtw":
        best = _soft_min3(diag, up, left, gamma)
        return c + jnp.where(k == 0, jnp.zeros_like(best), best)
    # OTAM (spec §5.4): row 0 is a running sum from column 1 on (D[0, 0] = 0); column 0
    # stays 0; column 1 takes the three-way minimum (subtracted in the reference, added in
    # Cao et al. 2020); middle columns may only move diagonally or right; the last column
    # takes the three-way minimum again.  The last-column rule wins when N == 2, as in the
    # reference, whose loop writes column -1 after column 1.
    zero = jnp.zeros_like(c)
    three = jnp.minimum(jnp.minimum(diag, up), left)
    col1 = c - three if rule == "otam_reference" else c + three
    middle = c + jnp.minimum(diag, left)
    last = c + three
    row0 = jnp.where(cols == 0, zero, c + left)
    other = jnp.where(cols == n - 1, last, jnp.where(cols == 1, col1, middle))
    other = jnp.where(cols == 0, zero, other)
    return jnp.where(rows == 0, row0, other)


@functools.partial(jax.jit, static_argnames=("rule", "full"))
def _antidiagonal_scan(cost: Array, rule: str, full: bool, gamma: Array | float | None = None) -> Array:
    """Runs the recursion ``rule`` over ``cost [..., M, N]``.

    Returns the accumulated matrix ``[..., M, N]`` when ``full`` else only ``D[..., -1, -1]``.
    ``gamma`` (a traced scalar; only ``rule == "soft_dtw"``) is the soft-minimum smoothing.
    """
    dtype = compute_dtype(cost.dtype)
    cost = cost.astype(dtype)
    if gamma is not None:
        gamma = jnp.asarray(gamma, dtype)
    *batch, m, n = cost.shape
    inf = jnp.asarray(jnp.inf, dtype)
    rows = jnp.arange(m)

    def shift_down(diag):  # diag[i] -> diag[i-1], with +inf entering at row 0
        return jnp.concatenate([jnp.full((*batch, 1), inf, dtype), diag[..., :-1]], axis=-1)

    num_diags = m + n - 1
    # skewed[k, ..., i] = cost[..., i, k - i] (clipped; masked below when outside): one gather
    # up front is much cheaper than a gather inside every scan step.
    skew_index = jnp.clip(jnp.arange(num_diags)[None, :] - rows[:, None], 0, n - 1)  # [M, K]
    skewed = jnp.take_along_axis(cost, jnp.broadcast_to(skew_index, (*batch, m, num_diags)), axis=-1)
    skewed = jnp.moveaxis(skewed, -1, 0)  # [K, ..., M]

    def step(carry, xs):
        prev2, prev1 = carry  # D on diagonals k-2 and k-1, indexed by row i: [..., M]
        k, c = xs  # c[..., i] = cost[..., i, k - i]
        cols = k - rows  # [M]
        inside = (cols >= 0) & (cols < n)
        value = _cell_rule(rule, c, shift_down(prev2), shift_down(prev1), prev1, rows, cols, k, n, gamma)
        diag = jnp.where(inside, value, inf)
        return (prev1, diag), (diag if full else None)

    # +inf rows derived from ``cost`` so that they carry its manual-axis type inside
    # ``shard_map`` (the training step), matching the scan's outputs.
    inf_row = jnp.where(jnp.isnan(cost[..., 0]), inf, inf)  # [..., M]
    init = (inf_row, inf_row)
    (_, last), diags = jax.lax.scan(step, init, (jnp.arange(num_diags), skewed))
    if not full:
        return last[..., m - 1]  # the final diagonal holds only (M-1, N-1)
    diags = jnp.moveaxis(diags, 0, -1)  # [..., M, M+N-1]: diags[..., i, k] = D[i, k-i]
    index = rows[:, None] + jnp.arange(n)[None, :]  # [M, N] -> k = i + j
    return jnp.take_along_axis(diags, jnp.broadcast_to(index, (*batch, m, n)), axis=-1)


def _check_cost(cost) -> Array:
    cost = jnp.asarray(cost)
    if cost.ndim < 2:
        raise ValueError(f"cost must be [..., M, N], got {cost.shape}")
    return cost


def _otam_rule(variant: str) -> str:
    if variant not in OTAM_VARIANTS:
        raise ValueError(f"OTAM variant must be one of {OTAM_VARIANTS}, got {variant!r}")
    return "otam_" + variant


def dtw_cumulative_cost(cost: Array) -> Array:
    """Accumulated DTW cost matrix ``D [..., M, N]`` of ``cost [..., M, N]``.

    ``D[..., -1, -1]`` is the DTW distance.  Moves: diagonal, down, right.
    """
    return _antidiagonal_scan(_check_cost(cost), "dtw", True)


def dtw_distance(cost: Array) -> Array:
    """DTW distance ``D[..., -1, -1]`` of ``cost [..., M, N]`` -> ``[...]`` (spec §5.4 ``dtw_cum``).

    Same recursion as :func:`dtw_cumulative_cost` without materialising ``D``.
    """
    return _antidiagonal_scan(_check_cost(cost), "dtw", False)


def _check_gamma(gamma) -> None:
    if isinstance(gamma, (int, float)) and not gamma > 0:
        raise ValueError(f"soft-DTW gamma must be > 0, got {gamma!r}")


def soft_dtw_cumulative_cost(cost: Array, gamma: float | Array = DEFAULT_SOFT_DTW_GAMMA) -> Array:
    """Accumulated soft-DTW cost matrix ``R [..., M, N]`` of ``cost [..., M, N]``.

    Cuturi & Blondel (2017), Eq. (1)-(2) of "Soft-DTW": ``R[0, 0] = cost[0, 0]`` and
    ``R[i, j] = cost[i, j] + min_gamma(R[i-1, j-1], R[i-1, j], R[i, j-1])`` with
    ``min_gamma(a) = -gamma * log sum_k exp(-a_k / gamma)`` (out-of-matrix terms dropped).
    ``gamma -> 0`` recovers :func:`dtw_cumulative_cost`; for ``gamma > 0`` every value is
    at most the DTW value (the soft minimum is below the hard one, by up to ``gamma log 3``
    per step).
    """
    _check_gamma(gamma)
    return _antidiagonal_scan(_check_cost(cost), "soft_dtw", True, gamma)


def soft_dtw_distance(cost: Array, gamma: float | Array = DEFAULT_SOFT_DTW_GAMMA) -> Array:
    """Soft-DTW distance ``R[..., -1, -1]`` of ``cost [..., M, N]`` -> ``[...]``.

    Differentiable in ``cost`` (and ``gamma``): the gradient ``dR/dcost`` is the expected
    alignment matrix under the Gibbs distribution over monotone paths with temperature
    ``gamma`` (Cuturi & Blondel 2017, Eq. 3), computed by reverse-mode differentiation of
    the anti-diagonal scan.  Any leading batch axes are evaluated in one pass (e.g. the
    ``[N, N]`` sequence pairs of :func:`norton_jax.losses.video_paragraph_loss`).
    """
    _check_gamma(gamma)
    return _antidiagonal_scan(_check_cost(cost), "soft_dtw", False, gamma)


def otam_cumulative_cost(cost: Array, *, variant: str = "reference") -> Array:
    """Accumulated OTAM cost matrix ``C [..., H, W]`` of an OTAM-padded ``cost [..., H, W]``.

    Spec §5.4 ``otam_cum``: ``C[0, 0] = 0``, ``C[0, j] = Y[0, j] + C[0, j-1]``; for ``i >= 1``
    ``C[i, 0] = 0``, ``C[i, 1] = Y[i, 1] -/+ min(C[i-1, 0], C[i-1, 1], C[i, 0])``,
    ``C[i, j] = Y[i, j] + min(C[i-1, j-1], C[i, j-1])`` for ``2 <= j <= W-2`` and
    ``C[i, W-1] = Y[i, W-1] + min(C[i-1, W-2], C[i-1, W-1], C[i, W-2])``.

    ``variant="reference"`` (default) *subtracts* the minimum in column 1 as the reference
    code does (trap T22, needed for parity with the paper's numbers); ``"textbook"`` adds
    it as in OTAM (Cao et al., 2020) with a hard minimum.  ``W`` should be >= 2.
    """
    return _antidiagonal_scan(_check_cost(cost), _otam_rule(variant), True)


def otam_distance(cost: Array, *, variant: str = "reference") -> Array:
    """OTAM distance ``C[..., -1, -1]`` of an OTAM-padded ``cost [..., H, W]`` -> ``[...]``."""
    return _antidiagonal_scan(_check_cost(cost), _otam_rule(variant), False)


def _py_slice_start(xp, start, length: int):
    """Where a Python slice ``[start:]`` over ``length`` items begins (negative counts from the end)."""
    return xp.where(start >= 0, start, xp.maximum(length + start, 0))


def reference_pad(x, rows, cols, height: int, width: int, *, otam: bool, columns=None):
    """The reference's ``DTW_pad`` (``otam=False``) or ``OTAM_pad`` (``otam=True``), batched.

    ``x [..., R, C]`` holds one matrix per batch entry in its top-left ``rows x cols`` corner
    (``rows``, ``cols`` broadcast to the batch shape; the rest of the buffer is ignored).
    Each matrix ``X`` becomes (spec §5.4, trap T22):

    * DTW: ``X`` padded with ``+inf`` to ``height x width`` (negative amounts crop);
    * OTAM: ``[0 | X | 0]`` (zero columns left and right) padded/cropped with ``+inf`` by
      the amounts ``height - rows``, ``width - cols`` computed *before* the zero columns,
      i.e. to ``height x (width + 2)``;

    then ``Y[r0:, c0:] = 0`` with ``r0, c0`` the Python slice starts ``-(height-rows)-1`` and
    ``-(width-cols)``: normally the last real row plus the bottom-right padding, but the
    *whole* last real row (and everything below) when ``cols == width``, and the reference's
    odd offsets when the amounts are negative.  Returns ``[..., height, width(+2)]``.

    ``columns`` (static, increasing) evaluates only those columns of the padded matrix (see
    :func:`equivalent_columns`).  Works on numpy arrays (returns numpy) and on jax arrays,
    also inside ``jit``.
    """
    xp = jnp if isinstance(x, jax.Array) or isinstance(rows, jax.Array) else np
    x = xp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"x must be [..., R, C], got {x.shape}")
    batch = x.shape[:-2]
    nr = xp.broadcast_to(xp.asarray(rows), batch)[..., None, None]
    nc = xp.broadcast_to(xp.asarray(cols), batch)[..., None, None]
    if xp is np and (
        np.any(nr < 1) or np.any(nc < 1) or np.any(nr > x.shape[-2]) or np.any(nc > x.shape[-1])
    ):
        raise ValueError("every matrix needs 1 <= rows <= R and 1 <= cols <= C")
    full_width = width + 2 if otam else width
    r = xp.arange(height)[:, None]  # [H, 1]
    c = xp.asarray(np.arange(full_width) if columns is None else np.asarray(columns))[None, :]  # [1, W']
    src_c = c - 1 if otam else c
    gathered = x[..., xp.clip(r, 0, x.shape[-2] - 1), xp.clip(src_c, 0, x.shape[-1] - 1)]
    in_rows = r < nr
    in_data = in_rows & (src_c >= 0) & (src_c < nc)
    zero = xp.zeros((), x.dtype)
    if otam:
        y = xp.where(in_data, gathered, xp.where(in_rows & ((c == 0) | (c == nc + 1)), zero, xp.inf))
    else:
        y = xp.where(in_data, gathered, xp.inf)
    d0 = height - nr
    d1 = width - nc
    r0 = _py_slice_start(xp, -d0 - 1, height)
    c0 = _py_slice_start(xp, -d1, full_width)
    return xp.where((r >= r0) & (c >= c0), zero, y).astype(x.dtype)


def equivalent_columns(width: int, max_cols: int, *, otam: bool) -> np.ndarray | None:
    """Columns of a padded matrix that give the same distance as all of them, or ``None``.

    When every matrix of a batch has ``cols <= max_cols < width`` real columns, each padded
    matrix ends in a run of identical padding columns (``+inf`` above the zero block's first
    row ``r0``, 0 from it down).  DTW: every column of the run has the same accumulated
    column as the run's first, so one run column suffices.  OTAM: the run's middle columns
    only shift minima downwards and the last column takes the minimum down the rows, so
    the distance is the minimum of the column before the run over rows ``>= r0 - 1`` for
    any run length >= 1.  Keeping columns ``[0, a)`` and the last one (DTW, ``a = max_cols``)
    or the last two (OTAM, ``a = max_cols + 2``) therefore preserves the distance exactly
    while the scan shrinks from ``width`` to about ``max_cols`` columns.
    """
    full_width = width + 2 if otam else width
    tail = 2 if otam else 1
    keep = max_cols + 2 if otam else max_cols
    if keep + tail >= full_width:
        return None
    return np.concatenate([np.arange(keep), np.arange(full_width - tail, full_width)])


def pad_dtw(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """``DTW_pad`` of one matrix ``x [R, C]`` -> ``[height, width]`` (spec §5.4)."""
    x = np.asarray(x)
    return reference_pad(x, x.shape[-2], x.shape[-1], height, width, otam=False)


def pad_otam(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """``OTAM_pad`` of one matrix ``x [R, C]`` -> ``[height, width + 2]`` (spec §5.4)."""
    x = np.asarray(x)
    return reference_pad(x, x.shape[-2], x.shape[-1], height, width, otam=True)


def dtw_path(cost: np.ndarray) -> list[tuple[int, int]]:
    """The optimal DTW path of one ``cost [M, N]`` as ``[(i, j), ...]`` from (0, 0) to (M-1, N-1)."""
    d = np.asarray(dtw_cumulative_cost(jnp.asarray(cost)))
    i, j = d.shape[0] - 1, d.shape[1] - 1
    path = [(i, j)]
    while i > 0 or j > 0:
        candidates = []
        if i > 0 and j > 0:
            candidates.append((d[i - 1, j - 1], i - 1, j - 1))
        if i > 0:
            candidates.append((d[i - 1, j], i - 1, j))
        if j > 0:
            candidates.append((d[i, j - 1], i, j - 1))
        _, i, j = min(candidates, key=lambda t: t[0])
        path.append((i, j))
    return path[::-1]
