"""Test helpers for S3D-G: a small PyTorch S3D-G written for the tests, random weights in the
public ``s3d_howto100m.pth`` key layout, and short synthetic videos encoded with PyAV.

Usage (from a test; ``tests/`` is on ``sys.path`` under pytest)::

    from s3d_testing import write_random_s3d_weights, write_test_video
    weights = write_random_s3d_weights(tmp_path / "s3d.pth", seed=0)      # ~40 MB, 2-3 s
    video = write_test_video(tmp_path / "talk.mp4", seconds=3, size=(96, 128))

The PyTorch model (:class:`TorchS3D`) follows the architecture described in
``norton_jax/s3d/model.py`` in PyTorch's own terms (``[B, 3, T, H, W]``, ``ConstantPad3d`` +
``MaxPool3d(ceil_mode=True)``, padding then cropping the first conv), so that the parity test
compares two independent implementations.
"""
from __future__ import annotations

import os
from fractions import Fraction

import numpy as np

INCEPTION = [  # name, (b0, b1 reduce, b1, b2 reduce, b2, b3)
    ("mixed_3b", (64, 96, 128, 16, 32, 32)), ("mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("mixed_4b", (192, 96, 208, 16, 48, 64)), ("mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("mixed_4d", (128, 128, 256, 24, 64, 64)), ("mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("mixed_4f", (256, 160, 320, 32, 128, 128)), ("mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("mixed_5c", (384, 192, 384, 48, 128, 128)),
]


def _torch_modules():
    import torch
    from torch import nn

    class Unit(nn.Module):
        """conv (no bias) -> BN -> ReLU; separable: spatial 1xkxk unit then temporal kx1x1 unit."""

        def __init__(self, cin, cout, k, pad=0, separable=False):
            super().__init__()
            self.separable = separable
            if separable:
                self.conv1 = nn.Conv3d(cin, cout, (1, k, k), padding=(0, pad, pad), bias=False)
                self.bn1 = nn.BatchNorm3d(cout)
                self.conv2 = nn.Conv3d(cout, cout, (k, 1, 1), padding=(pad, 0, 0), bias=False)
                self.bn2 = nn.BatchNorm3d(cout)
            else:
                self.conv1 = nn.Conv3d(cin, cout, k, padding=pad, bias=False)
                self.bn1 = nn.BatchNorm3d(cout)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(x))) if self.separable else x

    class Gate(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.fc = nn.Linear(c, c)

        def forward(self, x):
            g = torch.sigmoid(self.fc(x.mean(dim=(2, 3, 4))))
            return x * g.view(g.shape[0], g.shape[1], 1, 1, 1)

    class Mixed(nn.Module):
        def __init__(self, cin, c):
            super().__init__()
            self.conv_b0 = Unit(cin, c[0], 1)
            self.conv_b1_a = Unit(cin, c[1], 1)
            self.conv_b1_b = Unit(c[1], c[2], 3, 1, separable=True)
            self.conv_b2_a = Unit(cin, c[3], 1)
            self.conv_b2_b = Unit(c[3], c[4], 3, 1, separable=True)
            self.pool = nn.MaxPool3d(3, stride=1, padding=1)
            self.conv_b3_b = Unit(cin, c[5], 1)
            for i, ch in enumerate((c[0], c[2], c[4], c[5])):
                setattr(self, f"gating_b{i}", Gate(ch))
            self.out = c[0] + c[2] + c[4] + c[5]

        def forward(self, x):
            parts = [self.conv_b0(x), self.conv_b1_b(self.conv_b1_a(x)), self.conv_b2_b(self.conv_b2_a(x)),
                     self.conv_b3_b(self.pool(x))]
            return torch.cat([getattr(self, f"gating_b{i}")(p) for i, p in enumerate(parts)], dim=1)

    def tf_pool(x, k, s):
        pads = []
        for kk, ss in zip(k, s):
            along = max(kk - ss, 0)
            pads.append((along // 2, along - along // 2))
        (t0, t1), (h0, h1), (w0, w1) = pads
        x = nn.functional.pad(x, (w0, w1, h0, h1, t0, t1), value=0.0)
        return nn.functional.max_pool3d(x, k, s, ceil_mode=True)

    class TorchS3D(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = Unit(24, 64, (2, 4, 4), (1, 2, 2))
            self.conv_2b = Unit(64, 64, 1)
            self.conv_2c = Unit(64, 192, 3, 1, separable=True)
            self.gating = Gate(192)
            cin = 192
            for name, c in INCEPTION:
                setattr(self, name, Mixed(cin, c))
                cin = getattr(self, name).out
            self.fc = nn.Linear(cin, 512)

        def forward(self, x):  # [B, 3, T, H, W] in [0, 1]
            b, c, t, h, w = x.shape
            x = x.reshape(b, c, t // 2, 2, h // 2, 2, w // 2, 2).permute(0, 3, 5, 7, 1, 2, 4, 6)
            x = x.reshape(b, 8 * c, t // 2, h // 2, w // 2)
            x = self.conv1(x)[:, :, 1:, 1:, 1:]
            x = tf_pool(x, (1, 3, 3), (1, 2, 2))
            x = self.gating(self.conv_2c(self.conv_2b(x)))
            x = tf_pool(x, (1, 3, 3), (1, 2, 2))
            x = self.mixed_3c(self.mixed_3b(x))
            x = tf_pool(x, (3, 3, 3), (2, 2, 2))
            for name in ("mixed_4b", "mixed_4c", "mixed_4d", "mixed_4e", "mixed_4f"):
                x = getattr(self, name)(x)
            x = tf_pool(x, (2, 2, 2), (2, 2, 2))
            x = self.mixed_5c(self.mixed_5b(x))
            return self.fc(x.mean(dim=(2, 3, 4)))

    return TorchS3D


def torch_s3d(seed: int = 0):
    """A :class:`TorchS3D` in eval mode with random weights and randomised BatchNorm statistics.

    The running statistics are first measured on one random ``[1, 3, 16, 64, 64]`` clip (so
    that activations keep a sensible scale through the 60 layers), then perturbed: mean +
    N(0, 0.2) std, variance (+ 0.05) x U(0.5, 2); BatchNorm weight ~ U(0.5, 1.5), bias ~ N(0, 0.1).
    """
    import torch

    torch.manual_seed(seed)
    model = _torch_modules()()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    for bn in bns:
        bn.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(torch.rand(1, 3, 16, 64, 64))
        for bn in bns:
            std = bn.running_var.sqrt()
            bn.running_mean.add_(0.2 * std * torch.randn_like(std))
            bn.running_var.add_(0.05).mul_(torch.empty_like(std).uniform_(0.5, 2.0))
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.1)
            bn.num_batches_tracked.fill_(1000)
            bn.momentum = 0.1
    return model.eval()


def write_random_s3d_weights(path, seed: int = 0, *, with_text_module: bool = True) -> str:
    """Saves the state dict of :func:`torch_s3d` (``torch.save``, the public key layout; plus a
    tiny ``text_module.*`` entry like the real file unless ``with_text_module=False``)."""
    import torch

    state = torch_s3d(seed).state_dict()
    if with_text_module:
        state["text_module.fc2.weight"] = torch.zeros(4, 4)
    torch.save(state, os.fspath(path))
    return os.fspath(path)


def test_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``uint8 [num_frames, height, width, 3]``: a moving gradient with noise (not constant)."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames)[:, None, None, None]
    y = np.arange(height)[None, :, None, None]
    x = np.arange(width)[None, None, :, None]
    c = np.arange(3)[None, None, None, :]
    base = (x * 3 + y * 2 + t * 8 + c * 60) % 256
    return np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)


test_frames.__test__ = False  # not a pytest test


def write_test_video(path, seconds: float = 2.0, *, fps: int = 25, size: tuple[int, int] = (96, 128),
                     codec: str | None = None, seed: int = 0) -> str:
    """Encodes :func:`test_frames` (``size`` = height, width) as a video with PyAV: ``.mp4`` and
    ``.mkv`` in ``mpeg4`` (built into ffmpeg), ``.webm`` in VP9.  Returns the path."""
    import av

    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    codec = codec or {"webm": "libvpx-vp9"}.get(suffix.lstrip("."), "mpeg4")
    n = int(round(seconds * fps))
    frames = test_frames(n, size[0], size[1], seed)
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        if codec == "mpeg4":
            stream.options = {"qscale": "2"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
