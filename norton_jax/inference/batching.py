"""Padded batching: run a jitted function over arrays of any length with few compiled shapes.

Rows are processed in chunks of ``bucket_size(n, batch_size)`` rows, the next power of two
of ``n`` (at least ``minimum``, at most ``batch_size``); a short last chunk is padded by
repeating its first row, and the pad rows' outputs are dropped.  A run over inputs of many
lengths therefore compiles ``log2(batch_size)`` shapes at the most.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np

__all__ = ["bucket_size", "run_padded"]


def bucket_size(n: int, batch_size: int | None = None, *, minimum: int = 1) -> int:
    """The next power of two ``>= n`` (and ``>= minimum``), capped at ``batch_size``."""
    size = max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))
    return size if batch_size is None else min(batch_size, size)


def run_padded(
    fn: Callable[..., object], arrays: Sequence[np.ndarray], batch_size: int, *, minimum: int = 1
) -> list[np.ndarray | None]:
    """``fn(*chunk)`` over row chunks of ``arrays`` (all ``[N, ...]``), outputs concatenated.

    ``fn`` returns one array ``[b, ...]`` or a tuple of them (``None`` entries stay ``None``);
    the result is the list of its outputs over all ``N`` rows, pad rows removed.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(arrays[0])
    if n == 0:
        raise ValueError("nothing to encode")
    if any(len(a) != n for a in arrays):
        raise ValueError(f"arrays have different numbers of rows: {[len(a) for a in arrays]}")
    size = bucket_size(n, max(batch_size, minimum), minimum=minimum)
    outs: list[list[np.ndarray | None]] = []
    for start in range(0, n, size):
        chunk = [a[start : start + size] for a in arrays]
        real = len(chunk[0])
        if real < size:
            chunk = [np.concatenate([c, np.repeat(c[:1], size - real, axis=0)]) for c in chunk]
        res = fn(*[jnp.asarray(c) for c in chunk])
        res = res if isinstance(res, tuple) else (res,)
        outs.append([None if r is None else np.asarray(r)[:real] for r in res])
    return [None if parts[0] is None else np.concatenate(parts) for parts in zip(*outs)]
