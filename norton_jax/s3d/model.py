"""S3D-G, the video network of MIL-NCE trained on HowTo100M, as a Flax NNX module.

The architecture is the one of the public PyTorch port (``s3dg.py`` of
``antoine77340/S3D_HowTo100M``, also used by the authors' feature extractor; see
``docs/extraction.md``), rebuilt here from its description:

* input ``[B, T, H, W, 3]`` RGB in ``[0, 1]`` (channels last; the PyTorch port takes
  ``[B, 3, T, H, W]``), ``T``, ``H``, ``W`` even;
* **space to depth**: every ``2 x 2 x 2`` block of pixels becomes 24 channels, ordered
  ``(dt, dh, dw, rgb)``;
* ``conv1`` ``2 x 4 x 4`` (24 -> 64) with TensorFlow-style ``SAME`` padding (the port pads
  ``(1, 2, 2)`` and drops the first output row of each axis: here padding ``(0, 1)`` in time
  and ``(1, 2)`` in space, the same outputs without computing the dropped ones);
* ``maxpool_2a`` ``1x3x3 / 1x2x2``, ``conv_2b`` 1x1x1 (64), ``conv_2c`` separable 3x3x3
  (192), self-gating, ``maxpool_3a``, ``mixed_3b``, ``mixed_3c``, ``maxpool_4a`` ``3x3x3 /
  2x2x2``, ``mixed_4b`` .. ``mixed_4f``, ``maxpool_5a`` ``2x2x2 / 2x2x2``, ``mixed_5b``,
  ``mixed_5c`` (1024 channels), mean over time and space, ``fc`` 1024 -> 512: the
  ``video_embedding`` (``mixed_5c``, the pooled 1024-d vector, is returned too);
* every convolution is bias-free and followed by BatchNorm (inference mode: running mean and
  variance, epsilon 1e-5) and ReLU; a *separable* ``k x k x k`` unit is a ``1 x k x k``
  convolution then a ``k x 1 x 1`` one, each with its BatchNorm and ReLU;
* an Inception block has four branches (1x1x1; 1x1x1 -> separable 3x3x3; 1x1x1 -> separable
  3x3x3; max-pool 3x3x3 stride 1 -> 1x1x1), each self-gated (``x * sigmoid(fc(mean(x)))``),
  concatenated on channels;
* the ``MaxPool3dTFPadding`` pools pad with **zeros** (TensorFlow ``SAME``: ``max(k - s, 0)``
  split low/high) and then pool with ``ceil_mode`` (a last, partial window is kept when it
  starts inside the padded input); the pool inside the Inception blocks pads with ``-inf``.

Attribute names follow the PyTorch state dict (``mixed_4b.conv_b1_b.conv2`` ...), so that
:mod:`norton_jax.s3d.weights` maps keys one to one.  ``dtype`` (float32 or bfloat16) is the
compute dtype; parameters stay float32; the output is float32.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["S3D", "EMBEDDING_DIM", "INCEPTION_CHANNELS", "space_to_depth", "tf_same_max_pool"]

EMBEDDING_DIM = 512
BN_EPSILON = 1e-5

# (branch 0, branch 1 reduce, branch 1, branch 2 reduce, branch 2, branch 3) output channels
INCEPTION_CHANNELS: dict[str, tuple[int, int, int, int, int, int]] = {
    "mixed_3b": (64, 96, 128, 16, 32, 32),
    "mixed_3c": (128, 128, 192, 32, 96, 64),
    "mixed_4b": (192, 96, 208, 16, 48, 64),
    "mixed_4c": (160, 112, 224, 24, 64, 64),
    "mixed_4d": (128, 128, 256, 24, 64, 64),
    "mixed_4e": (112, 144, 288, 32, 64, 64),
    "mixed_4f": (256, 160, 320, 32, 128, 128),
    "mixed_5b": (256, 160, 320, 32, 128, 128),
    "mixed_5c": (384, 192, 384, 48, 128, 128),
}


def space_to_depth(x: jax.Array) -> jax.Array:
    """``[B, T, H, W, C] -> [B, T/2, H/2, W/2, 8C]``, channels ordered ``(dt, dh, dw, c)``."""
    b, t, h, w, c = x.shape
    x = x.reshape(b, t // 2, 2, h // 2, 2, w // 2, 2, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, t // 2, h // 2, w // 2, 8 * c)


def tf_same_max_pool(x: jax.Array, kernel: Sequence[int], strides: Sequence[int]) -> jax.Array:
    """Max-pool over ``T, H, W`` of ``[B, T, H, W, C]``: zero padding ``max(k - s, 0)`` (low
    half first), then windows of ``kernel`` every ``strides`` with a last partial window when it
    starts inside the padded input (PyTorch ``ceil_mode=True``)."""
    pads = [(0, 0)]
    extra = [(0, 0)]
    for size, k, s in zip(x.shape[1:4], kernel, strides):
        along = max(k - s, 0)
        lo, hi = along // 2, along - along // 2
        padded = size + lo + hi
        out = max(math.ceil((padded - k) / s), 0) + 1
        if (out - 1) * s >= padded:
            out -= 1
        pads.append((lo, hi))
        extra.append((0, max((out - 1) * s + k - padded, 0)))
    pads.append((0, 0))
    extra.append((0, 0))
    x = jnp.pad(x, pads)  # zeros, as the reference's ConstantPad3d
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *kernel, 1), (1, *strides, 1),
                                 tuple(extra))


def _max_pool_same(x: jax.Array) -> jax.Array:
    """3x3x3 max-pool, stride 1, padding 1 (padded with ``-inf``)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 3, 1), (1, 1, 1, 1, 1),
                                 ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)))


def _conv_bn(cin: int, cout: int, kernel: Sequence[int], padding, *, dtype, rngs: nnx.Rngs):
    """A bias-free 3-D convolution and its inference-mode BatchNorm."""
    conv = nnx.Conv(cin, cout, tuple(kernel), 1, padding=padding, use_bias=False, dtype=dtype, rngs=rngs)
    bn = nnx.BatchNorm(cout, use_running_average=True, epsilon=BN_EPSILON, dtype=dtype, rngs=rngs)
    return conv, bn


class STConv3D(nnx.Module):
    """Conv + BN + ReLU (``conv1``/``bn1``), or the separable pair (``conv2``/``bn2`` after)."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int], *, padding: Sequence[tuple[int, int]] | None = None,
                 separable: bool = False, dtype=jnp.float32, rngs: nnx.Rngs):
        kernel = tuple(kernel)
        pad = tuple(padding) if padding is not None else tuple((k // 2, k // 2) for k in kernel)
        self.separable = separable
        if separable:
            self.conv1, self.bn1 = _conv_bn(cin, cout, (1, kernel[1], kernel[2]), ((0, 0), pad[1], pad[2]),
                                            dtype=dtype, rngs=rngs)
            self.conv2, self.bn2 = _conv_bn(cout, cout, (kernel[0], 1, 1), (pad[0], (0, 0), (0, 0)),
                                            dtype=dtype, rngs=rngs)
        else:
            self.conv1, self.bn1 = _conv_bn(cin, cout, kernel, pad, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        if self.separable:
            x = jax.nn.relu(self.bn2(self.conv2(x)))
        return x


class SelfGating(nnx.Module):
    """``x * sigmoid(fc(mean over T, H, W of x))`` per channel (S3D-G feature gating)."""

    def __init__(self, channels: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.fc = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        weights = jax.nn.sigmoid(self.fc(jnp.mean(x, axis=(1, 2, 3))))  # [B, C]
        return x * weights[:, None, None, None, :]


class InceptionBlock(nnx.Module):
    """Four gated branches concatenated on channels (see the module docstring)."""

    def __init__(self, cin: int, channels: Sequence[int], *, dtype=jnp.float32, rngs: nnx.Rngs):
        c0, c1a, c1, c2a, c2, c3 = channels
        kw = dict(dtype=dtype, rngs=rngs)
        self.conv_b0 = STConv3D(cin, c0, (1, 1, 1), **kw)
        self.conv_b1_a = STConv3D(cin, c1a, (1, 1, 1), **kw)
        self.conv_b1_b = STConv3D(c1a, c1, (3, 3, 3), separable=True, **kw)
        self.conv_b2_a = STConv3D(cin, c2a, (1, 1, 1), **kw)
        self.conv_b2_b = STConv3D(c2a, c2, (3, 3, 3), separable=True, **kw)
        self.conv_b3_b = STConv3D(cin, c3, (1, 1, 1), **kw)
        self.gating_b0 = SelfGating(c0, **kw)
        self.gating_b1 = SelfGating(c1, **kw)
        self.gating_b2 = SelfGating(c2, **kw)
        self.gating_b3 = SelfGating(c3, **kw)
        self.output_dim = c0 + c1 + c2 + c3

    def __call__(self, x: jax.Array) -> jax.Array:
        b0 = self.gating_b0(self.conv_b0(x))
        b1 = self.gating_b1(self.conv_b1_b(self.conv_b1_a(x)))
        b2 = self.gating_b2(self.conv_b2_b(self.conv_b2_a(x)))
        b3 = self.gating_b3(self.conv_b3_b(_max_pool_same(x)))
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class S3D(nnx.Module):
    """S3D-G video tower: ``[B, T, H, W, 3]`` in ``[0, 1]`` -> ``{"video_embedding": [B, 512],
    "mixed_5c": [B, 1024]}`` (float32)."""

    def __init__(self, *, dtype=jnp.float32, num_classes: int = EMBEDDING_DIM, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, rngs=rngs)
        self.dtype = dtype
        self.conv1 = STConv3D(24, 64, (2, 4, 4), padding=((0, 1), (1, 2), (1, 2)), **kw)
        self.conv_2b = STConv3D(64, 64, (1, 1, 1), **kw)
        self.conv_2c = STConv3D(64, 192, (3, 3, 3), separable=True, **kw)
        self.gating = SelfGating(192, **kw)
        cin = 192
        for name, channels in INCEPTION_CHANNELS.items():
            block = InceptionBlock(cin, channels, **kw)
            setattr(self, name, block)
            cin = block.output_dim
        self.fc = nnx.Linear(cin, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, video: jax.Array) -> dict[str, jax.Array]:
        b, t, h, w, c = video.shape
        if c != 3 or t % 2 or h % 2 or w % 2:
            raise ValueError(f"S3D takes [B, T, H, W, 3] with T, H, W even, got {video.shape}")
        x = space_to_depth(video.astype(self.dtype))
        x = self.conv1(x)
        x = tf_same_max_pool(x, (1, 3, 3), (1, 2, 2))  # maxpool_2a
        x = self.gating(self.conv_2c(self.conv_2b(x)))
        x = tf_same_max_pool(x, (1, 3, 3), (1, 2, 2))  # maxpool_3a
        x = self.mixed_3c(self.mixed_3b(x))
        x = tf_same_max_pool(x, (3, 3, 3), (2, 2, 2))  # maxpool_4a
        for name in ("mixed_4b", "mixed_4c", "mixed_4d", "mixed_4e", "mixed_4f"):
            x = getattr(self, name)(x)
        x = tf_same_max_pool(x, (2, 2, 2), (2, 2, 2))  # maxpool_5a
        x = self.mixed_5c(self.mixed_5b(x))
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))  # [B, 1024]
        embedding = self.fc(pooled.astype(self.dtype)).astype(jnp.float32)  # [B, 512]
        return {"video_embedding": embedding, "mixed_5c": pooled}
