"""Dynamic time warping, vectorised over anti-diagonals.

``D[i, j] = cost[i, j] + min(D[i-1, j-1], D[i-1, j], D[i, j-1])`` with ``D[0, 0] =
cost[0, 0]``.  The recursion is evaluated one anti-diagonal ``i + j = k`` at a time in a
``jax.lax.scan`` (every cell of a diagonal depends only on the two previous diagonals),
so one problem costs ``M + N - 1`` vector steps instead of ``M * N`` Python steps, and
any leading batch axes are handled in the same pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from norton_jax.ot import compute_dtype

Array = jax.Array


@jax.jit
def dtw_cumulative_cost(cost: Array) -> Array:
    """Accumulated DTW cost matrix ``D [..., M, N]`` of ``cost [..., M, N]``.

    ``D[..., -1, -1]`` is the DTW distance.  Moves: diagonal, down, right.
    """
    cost = jnp.asarray(cost)
    if cost.ndim < 2:
        raise ValueError(f"cost must be [..., M, N], got {cost.shape}")
    dtype = compute_dtype(cost.dtype)
    cost = cost.astype(dtype)
    *batch, m, n = cost.shape
    inf = jnp.asarray(jnp.inf, dtype)
    rows = jnp.arange(m)

    def shift_down(diag):  # diag[i] -> diag[i-1], with +inf entering at row 0
        return jnp.concatenate([jnp.full((*batch, 1), inf, dtype), diag[..., :-1]], axis=-1)

    num_diags = m + n - 1
    # skewed[..., i, k] = cost[..., i, k - i] (clipped; masked below when outside).
    skew_index = jnp.clip(jnp.arange(num_diags)[None, :] - rows[:, None], 0, n - 1)  # [M, K]
    skewed = jnp.take_along_axis(cost, jnp.broadcast_to(skew_index, (*batch, m, num_diags)), axis=-1)

    def step(carry, xs):
        prev2, prev1 = carry  # D on diagonals k-2 and k-1, indexed by row i: [..., M]
        k, c = xs  # c[..., i] = cost[..., i, k - i]
        cols = k - rows
        inside = (cols >= 0) & (cols < n)
        best = jnp.minimum(jnp.minimum(shift_down(prev2), shift_down(prev1)), prev1)
        best = jnp.where(k == 0, jnp.zeros_like(best), best)
        diag = jnp.where(inside, c + best, inf)
        return (prev1, diag), diag

    init = (jnp.full((*batch, m), inf, dtype), jnp.full((*batch, m), inf, dtype))
    _, diags = jax.lax.scan(step, init, (jnp.arange(num_diags), jnp.moveaxis(skewed, -1, 0)))
    diags = jnp.moveaxis(diags, 0, -1)  # [..., M, M+N-1]: diags[..., i, k] = D[i, k-i]
    index = rows[:, None] + jnp.arange(n)[None, :]  # [M, N] -> k = i + j
    return jnp.take_along_axis(diags, jnp.broadcast_to(index, (*batch, m, n)), axis=-1)


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
