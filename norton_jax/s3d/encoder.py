"""Batched, jitted S3D-G inference: 30-frame chunks of uint8 frames -> 512-d features.

:class:`S3DEncoder` wraps an :class:`~norton_jax.s3d.model.S3D` with one compiled function of
a fixed batch shape ``[batch_size, F, H, W, 3]`` uint8 (a last, smaller batch is padded with
empty chunks to the next power of two, so a run compiles at most ``log2(batch_size) + 1`` shapes).  Inside it the frames are scaled to
``[0, 1]`` (``/ 255``, as the authors' extractor), embedded, and (by default) L2-normalised
like the authors' ``--l2_normalize 1`` (spec §4.1).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from norton_jax.s3d.model import EMBEDDING_DIM, S3D

__all__ = ["S3DEncoder", "l2_normalize"]


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x / max(||x||, eps)`` over the last axis (``torch.nn.functional.normalize``)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def _embed(graphdef: Any, normalize: bool, state: Any, frames: jax.Array) -> jax.Array:
    """``[B, F, H, W, 3]`` uint8 -> ``[B, 512]`` float32 (jitted below, one cache for all encoders)."""
    net = nnx.merge(graphdef, state)
    out = net(frames.astype(jnp.float32) / 255.0)["video_embedding"]
    return l2_normalize(out) if normalize else out


_embed_jit = jax.jit(_embed, static_argnums=(0, 1))


class S3DEncoder:
    """Embeds chunks of frames with S3D-G, ``batch_size`` chunks per device call."""

    def __init__(self, model: S3D, *, batch_size: int = 8, normalize: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = int(batch_size)
        self.normalize = bool(normalize)
        self.dtype = model.dtype
        self._graphdef, self._state = nnx.split(model)

    def with_batch_size(self, batch_size: int) -> "S3DEncoder":
        """The same weights with another batch size (its shapes compile on first use)."""
        return S3DEncoder(self.model, batch_size=batch_size, normalize=self.normalize)

    def __call__(self, chunks: np.ndarray) -> np.ndarray:
        """``[N, F, H, W, 3]`` uint8 chunks -> ``[N, 512]`` float32 features."""
        chunks = np.asarray(chunks)
        if chunks.ndim != 5 or chunks.shape[-1] != 3:
            raise ValueError(f"expected chunks [N, frames, H, W, 3], got {chunks.shape}")
        if chunks.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames, got {chunks.dtype}")
        n = chunks.shape[0]
        out = np.zeros((n, EMBEDDING_DIM), np.float32)
        for start in range(0, n, self.batch_size):
            batch = chunks[start:start + self.batch_size]
            m = batch.shape[0]
            rows = min(self.batch_size, 1 << (m - 1).bit_length())  # few compiled shapes: B, or 2^k < B
            if m < rows:
                pad = np.zeros((rows - m, *batch.shape[1:]), np.uint8)
                batch = np.concatenate([batch, pad], axis=0)
            out[start:start + m] = np.asarray(_embed_jit(self._graphdef, self.normalize, self._state,
                                                               jnp.asarray(batch)))[:m]
        return out
