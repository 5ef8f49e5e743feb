"""Decode videos for S3D the way the authors' extractor does, with PyAV (ffmpeg bundled).

The authors' ``scripts/video_feature_extractor`` (S3D settings, spec §4.1) runs the ffmpeg
filters ``fps=30``, ``scale`` (shorter side to 224, the other side ``int(side * 224 / shorter)``,
ffmpeg's default bicubic scaler), ``crop`` 224 x 224 at ``(int((w - 224) / 2), int((h - 224) /
2))`` and converts to ``rgb24``; :func:`iter_frames` builds the same ffmpeg filter graph in
PyAV.  :func:`iter_chunks` groups frames into 30-frame chunks (one chunk per second of features),
padding the last chunk with black (zero) frames, as the authors' ``_zero_pad``.

Any container/codec ffmpeg reads works (mp4, webm, mkv, mov, ...).  Files are opened through
:mod:`data_pipeline.fileio`, so ``gs://`` paths work too.  A file that cannot be decoded raises
:class:`VideoError` naming it.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator

import numpy as np

from data_pipeline import fileio
from norton_jax.cli import UserError

__all__ = ["FPS", "SIZE", "VIDEO_SUFFIXES", "VideoError", "scaled_size", "video_duration", "iter_frames",
           "iter_chunks"]

FPS = 30  # frames per second fed to S3D, and frames per feature (one feature per second)
SIZE = 224  # crop size
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".m4v", ".avi")


class VideoError(UserError):
    """A video file that cannot be opened or decoded; the message names the file."""


def scaled_size(height: int, width: int, size: int = SIZE) -> tuple[int, int]:
    """``(height, width)`` after scaling the shorter side to ``size`` (the authors' rule)."""
    if height >= width:
        return int(height * size / width), size
    return size, int(width * size / height)


def _open(path: str):
    import av  # noqa: PLC0415 - PyAV is only needed to decode

    fh = fileio.open(path, "rb")
    try:
        container = av.open(fh, mode="r")
    except Exception as err:  # noqa: BLE001 - av raises its own error family
        fh.close()
        raise VideoError(f"{path}: cannot open the video ({type(err).__name__}: {err})") from None
    if not container.streams.video:
        container.close()
        fh.close()
        raise VideoError(f"{path}: the file has no video stream")
    return fh, container


def video_duration(path: str | os.PathLike) -> float | None:
    """Duration in seconds from the container header (``None`` if it does not say)."""
    path = os.fspath(path)
    fh, container = _open(path)
    try:
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        return container.duration / 1e6 if container.duration else None
    finally:
        container.close()
        fh.close()


def iter_frames(path: str | os.PathLike, *, fps: int = FPS, size: int = SIZE) -> Iterator[np.ndarray]:
    """Yields ``uint8 [size, size, 3]`` RGB frames resampled to ``fps`` (see the module docstring)."""
    import av  # noqa: PLC0415
    import av.filter  # noqa: PLC0415

    path = os.fspath(path)
    fh, container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        graph = None
        count = 0
        try:
            for frame in container.decode(stream):
                if graph is None:
                    graph = _filter_graph(av, stream, frame.height, frame.width, fps, size)
                graph.push(frame)
                for out in _pull(av, graph):
                    count += 1
                    yield out
            if graph is not None:
                graph.push(None)
                for out in _pull(av, graph):
                    count += 1
                    yield out
        except av.FFmpegError as err:
            raise VideoError(f"{path}: cannot decode the video after {count} frames "
                             f"({type(err).__name__}: {err})") from None
        if count == 0:
            raise VideoError(f"{path}: no frame could be decoded")
    finally:
        container.close()
        fh.close()


def _filter_graph(av, stream, height: int, width: int, fps: int, size: int):
    out_h, out_w = scaled_size(height, width, size)
    graph = av.filter.Graph()
    nodes = [
        graph.add_buffer(template=stream),
        graph.add("fps", f"fps={fps}"),
        graph.add("scale", f"{out_w}:{out_h}"),
        graph.add("crop", f"{size}:{size}:{int((out_w - size) / 2)}:{int((out_h - size) / 2)}"),
        graph.add("format", "rgb24"),
        graph.add("buffersink"),
    ]
    for a, b in zip(nodes, nodes[1:]):
        a.link_to(b)
    graph.configure()
    return graph


def _pull(av, graph) -> Iterator[np.ndarray]:
    while True:
        try:
            frame = graph.pull()
        except (av.BlockingIOError, av.EOFError):
            return
        yield frame.to_ndarray(format="rgb24")


def iter_chunks(frames: Iterable[np.ndarray], frames_per_chunk: int = FPS) -> Iterator[np.ndarray]:
    """Groups ``[H, W, 3]`` frames into ``uint8 [frames_per_chunk, H, W, 3]`` chunks; the last
    chunk is completed with zero frames (none is added when the count divides evenly)."""
    buf: np.ndarray | None = None
    n = 0
    for frame in frames:
        if buf is None:
            buf = np.zeros((frames_per_chunk, *np.shape(frame)), np.uint8)
        buf[n] = frame
        n += 1
        if n == frames_per_chunk:
            yield buf.copy()
            buf[:] = 0
            n = 0
    if n:
        yield buf.copy()
