"""S3D features of a raw video for the alignment tool, extracted once and cached.

``python -m norton_jax.align --video talk.mp4 --s3d-weights s3d_howto100m.pth ...`` needs the
video's ``[T, 512]`` features (one per second, :mod:`norton_jax.extract`, the authors'
settings).  They are cached as ``<video stem>.npy``, the file ``python -m norton_jax.extract``
writes, in ``--features-cache DIR`` or, without it, in the folder of ``--out``; a later run on
the same video reuses them (no S3D weights needed then).  A cached file whose length does not
match the video's duration is refused (it belongs to another video with the same name).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from data_pipeline import fileio
from norton_jax.align.files import read_features
from norton_jax.cli import UserError
from norton_jax.extract import extract_features, load_s3d, write_features
from norton_jax.s3d.video import video_duration

PathLike = str | os.PathLike

__all__ = ["VideoFeatures", "feature_cache_path", "video_features"]

DURATION_TOLERANCE = 1.5  # seconds between the cached features' length and the container's duration


class VideoFeatures(NamedTuple):
    features: np.ndarray  # [T, 512] float16
    path: str  # the cache file
    cached: bool  # True: read from the cache, False: extracted now


def feature_cache_path(video: PathLike, *, cache_dir: PathLike | None = None, out: PathLike | None = None) -> str:
    """``<cache_dir>/<video stem>.npy``, or next to ``out`` without ``cache_dir``."""
    stem = os.path.splitext(os.path.basename(os.fspath(video)))[0]
    folder = os.fspath(cache_dir) if cache_dir is not None else (fileio.dirname(os.fspath(out)) if out else "")
    return fileio.join(folder, f"{stem}.npy") if folder else f"{stem}.npy"


def _check_length(features: np.ndarray, path: str, video: str) -> None:
    duration = video_duration(video)
    if duration is None:
        return
    t = int(features.shape[0])
    if abs(t - duration) > DURATION_TOLERANCE:
        raise UserError(f"{path}: cached features hold {t} s but {video} lasts {duration:.1f} s; they belong to "
                        "another video with the same name: delete the file or give another --features-cache")


def video_features(video: PathLike, *, s3d_weights: PathLike | None = None, cache_dir: PathLike | None = None,
                   out: PathLike | None = None, feature_dim: int = 512, dtype: str = "float32",
                   progress: bool = False) -> VideoFeatures:
    """The video's features: read from :func:`feature_cache_path` if it exists (checked:
    shape, finite values, length against the video's duration), else extracted with the S3D
    weights ``s3d_weights`` (computing in ``dtype``) and written there atomically."""
    video = os.fspath(video)
    if not fileio.exists(video):
        raise UserError(f"--video {video}: no such file")
    path = feature_cache_path(video, cache_dir=cache_dir, out=out)
    if fileio.exists(path):
        features = read_features(path, feature_dim)
        _check_length(features, path, video)
        return VideoFeatures(features, path, True)
    if s3d_weights is None:
        raise UserError(f"--video {video}: no cached features at {path}; give --s3d-weights (the S3D state dict "
                        "s3d_howto100m.pth, see docs/extraction.md) to extract them")
    s3d = load_s3d(s3d_weights, dtype)
    features = extract_features(video, s3d, progress=progress)
    folder = fileio.dirname(path)
    if folder:
        fileio.makedirs(folder)
    write_features(path, features)
    return VideoFeatures(features, path, False)
