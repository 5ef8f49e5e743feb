"""Extract S3D features from videos: one 512-d float16 vector per second, as Norton reads them.

Follows the authors' extractor (``scripts/video_feature_extractor``; spec §4.1,
``docs/extraction.md``): frames at 30 fps, shorter side resized to 224 and centre-cropped to
224 x 224, values / 255, zero-padded to a multiple of 30 frames, one S3D-G ``video_embedding``
per 30-frame chunk, L2-normalised, saved as float16 ``<video id>.npy`` ``[T, 512]``: the
per-video layout that ``data_pipeline.convert`` (``convert_per_video``) and
``norton_jax.align --features`` read.

Command line::

    python -m norton_jax.extract --weights s3d_howto100m.pth --video talk.mp4 --out features/
    python -m norton_jax.extract --weights s3d_howto100m.pth --video videos/ --out features/
    python -m norton_jax.extract --weights s3d_howto100m.pth --frames clip.npy --out features/

``--video DIR`` processes every video file in the folder (``.mp4 .webm .mkv .mov .m4v
.avi``; the video id is the file stem); videos whose ``<id>.npy`` already exists in ``--out``
are skipped, so an interrupted run resumes where it stopped (each file is written to a
temporary name and renamed, so a half-written file is never taken as done).  ``--frames F.npy``
takes frames decoded elsewhere (``uint8 [T, 224, 224, 3]`` at 30 fps) and writes ``<stem of
F>.npy``.  A video that cannot be decoded stops the run with an error naming it, or with
``--skip-bad`` is counted and listed at the end.

From Python: :func:`load_s3d`, :func:`extract_features`, :func:`extract_frames_features`.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Iterable, Iterator

import numpy as np

from data_pipeline import fileio
from norton_jax import cli
from norton_jax.s3d import EMBEDDING_DIM, S3DEncoder, build_s3d, read_state_dict
from norton_jax.s3d.video import FPS, SIZE, VIDEO_SUFFIXES, VideoError, iter_chunks, iter_frames, video_duration

__all__ = ["load_s3d", "extract_features", "extract_frames_features", "features_from_chunks", "write_features",
           "main", "DTYPES"]

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16")
DEFAULT_BATCH_SIZE = 8  # 30-frame chunks per device call


def load_s3d(weights_path: str | os.PathLike, dtype: str = "float32", *, batch_size: int = DEFAULT_BATCH_SIZE,
             normalize: bool = True) -> S3DEncoder:
    """S3D-G with the PyTorch state dict at ``weights_path`` (``s3d_howto100m.pth`` layout),
    computing in ``dtype`` (``float32`` or ``bfloat16``), ``batch_size`` chunks per call;
    ``normalize`` L2-normalises each feature (the authors' default)."""
    import jax.numpy as jnp  # noqa: PLC0415

    if dtype not in DTYPES:
        raise cli.UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if batch_size < 1:
        raise cli.UserError(f"--batch-size must be >= 1, got {batch_size}")
    path = os.fspath(weights_path)
    model = build_s3d(read_state_dict(path), dtype=getattr(jnp, dtype), source=path)
    return S3DEncoder(model, batch_size=batch_size, normalize=normalize)


def _encoder(s3d: S3DEncoder, batch_size: int | None) -> S3DEncoder:
    if not isinstance(s3d, S3DEncoder):
        raise TypeError(f"s3d must be what load_s3d returns (an S3DEncoder), got {type(s3d).__name__}")
    if batch_size is None or batch_size == s3d.batch_size:
        return s3d
    if batch_size < 1:
        raise cli.UserError(f"batch_size must be >= 1, got {batch_size}")
    return s3d.with_batch_size(batch_size)


def features_from_chunks(chunks: Iterable[np.ndarray], s3d: S3DEncoder, *, source: str = "frames",
                         progress=None) -> np.ndarray:
    """``[T, 512]`` float16 features of ``uint8 [30, H, W, 3]`` chunks, ``s3d.batch_size`` at a
    time (``progress``: a tqdm bar advanced by one per chunk)."""
    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        out.append(s3d(np.stack(batch)))
        if progress is not None:
            progress.update(len(batch))
        batch.clear()

    for chunk in chunks:
        batch.append(chunk)
        if len(batch) == s3d.batch_size:
            flush()
    if batch:
        flush()
    if not out:
        raise VideoError(f"{source}: no frames")
    feats = np.concatenate(out, axis=0)  # [T, 512] float32
    half = feats.astype(np.float16)
    if not np.all(np.isfinite(half)):
        row = int(np.argmax(~np.all(np.isfinite(half), axis=1)))
        raise cli.UserError(f"{source}: feature of second {row} is not finite in float16 "
                                 f"(max |x| = {np.nanmax(np.abs(feats)):.3g})")
    return half


def extract_features(video_path: str | os.PathLike, s3d: S3DEncoder, *, batch_size: int | None = None,
                     size: int = SIZE, progress: bool = False) -> np.ndarray:
    """``[T, 512]`` float16 S3D features of a video file, ``T = ceil(frames at 30 fps / 30)``.

    ``size`` is the crop size (224 for Norton's features; smaller only to test quickly)."""
    path = os.fspath(video_path)
    s3d = _encoder(s3d, batch_size)
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415

        duration = video_duration(path)
        bar = tqdm(total=math.ceil(duration) if duration else None, desc=os.path.basename(path), unit="s",
                   leave=False)
    try:
        return features_from_chunks(iter_chunks(iter_frames(path, fps=FPS, size=size), FPS), s3d, source=path,
                                    progress=bar)
    finally:
        if bar is not None:
            bar.close()


def extract_frames_features(frames: np.ndarray, s3d: S3DEncoder, *, batch_size: int | None = None,
                            size: int = SIZE, source: str = "frames") -> np.ndarray:
    """``[T, 512]`` float16 features of decoded frames ``uint8 [N, size, size, 3]`` at 30 fps
    (``T = ceil(N / 30)``, the last chunk zero-padded)."""
    frames = frames if isinstance(frames, np.ndarray) else np.asarray(frames)
    if frames.ndim != 4 or frames.shape[1:] != (size, size, 3) or frames.dtype != np.uint8:
        raise cli.UserError(f"{source}: expected uint8 frames [N, {size}, {size}, 3] at {FPS} fps "
                            f"(RGB, resized and centre-cropped), got {frames.dtype} {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise cli.UserError(f"{source}: no frames")
    return features_from_chunks(_array_chunks(frames), _encoder(s3d, batch_size), source=source)


def _array_chunks(frames: np.ndarray) -> Iterator[np.ndarray]:
    n = frames.shape[0]
    for start in range(0, n, FPS):
        chunk = np.asarray(frames[start:start + FPS], np.uint8)
        if chunk.shape[0] < FPS:
            chunk = np.concatenate([chunk, np.zeros((FPS - chunk.shape[0], *chunk.shape[1:]), np.uint8)])
        yield chunk


def write_features(path: str | os.PathLike, features: np.ndarray) -> None:
    """Saves ``features`` as ``.npy`` at ``path`` atomically (temporary name, then rename)."""
    with fileio.atomic_output(os.fspath(path), "wb") as fh:
        np.save(fh, np.ascontiguousarray(features), allow_pickle=False)


def _videos_in(folder: str) -> list[tuple[str, str]]:
    """``(video id, path)`` of the video files of ``folder``, sorted; duplicate ids are an error."""
    found: dict[str, str] = {}
    for name in sorted(fileio.listdir(folder)):
        stem, suffix = os.path.splitext(name.rstrip("/"))
        if suffix.lower() not in VIDEO_SUFFIXES or stem.startswith("."):
            continue
        path = fileio.join(folder, name.rstrip("/"))
        if stem in found:
            raise cli.UserError(f"two videos would write {stem}.npy: {found[stem]} and {path}; rename one")
        found[stem] = path
    if not found:
        raise cli.UserError(f"--video {folder}: no video files ({' '.join(VIDEO_SUFFIXES)}) in this folder")
    return sorted(found.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m norton_jax.extract",
        description="Extract S3D-G video features (one 512-d float16 vector per second, the authors' settings: "
                    "30 fps, 224 px centre crop, 30-frame chunks) from video files or decoded frames into "
                    "<out>/<video id>.npy.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", help="a video file, or a folder of them (resumable: done ids are skipped)")
    source.add_argument("--frames", help="F.npy: uint8 [T, 224, 224, 3] RGB frames at 30 fps; writes <stem of F>.npy")
    parser.add_argument("--weights", required=True,
                        help="S3D-G PyTorch state dict (s3d_howto100m.pth; see docs/extraction.md)")
    parser.add_argument("--out", required=True, help="output folder for <video id>.npy [T, 512] float16")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"30-frame chunks per device call (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype (output is float16)")
    parser.add_argument("--no-l2-normalize", action="store_true",
                        help="keep the raw video_embedding (the authors L2-normalise; Norton expects that)")
    parser.add_argument("--overwrite", action="store_true", help="re-extract videos whose .npy exists")
    parser.add_argument("--skip-bad", action="store_true",
                        help="with a folder: count and list videos that cannot be decoded instead of stopping")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    cli.add_debug_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    src = args.video if args.video is not None else args.frames
    if not fileio.exists(src):
        raise cli.UserError(f"{'--video' if args.video is not None else '--frames'} {src}: no such file or folder")
    fileio.makedirs(args.out)
    if args.frames is not None:
        stem = os.path.splitext(os.path.basename(args.frames))[0]
        try:
            if fileio.is_url(args.frames):
                with fileio.open(args.frames, "rb") as fh:
                    frames = np.load(fh, allow_pickle=False)
            else:
                frames = np.load(args.frames, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise cli.UserError(f"--frames {args.frames}: not a readable .npy array ({err})") from None
        s3d = load_s3d(args.weights, args.dtype, batch_size=args.batch_size, normalize=not args.no_l2_normalize)
        feats = extract_frames_features(frames, s3d, source=args.frames)
        out = fileio.join(args.out, f"{stem}.npy")
        write_features(out, feats)
        print(f"{args.frames}: {frames.shape[0]} frames -> {out} {list(feats.shape)} float16")
        return 0
    folder = fileio.isdir(args.video)
    if folder:
        videos = _videos_in(args.video)
    else:
        videos = [(os.path.splitext(os.path.basename(args.video))[0], args.video)]
    todo = [(vid, path) for vid, path in videos
            if args.overwrite or not fileio.exists(fileio.join(args.out, f"{vid}.npy"))]
    done_before = len(videos) - len(todo)
    if not todo:
        print(f"nothing to do: all {len(videos)} video(s) already have features in {args.out}")
        return 0
    s3d = load_s3d(args.weights, args.dtype, batch_size=args.batch_size, normalize=not args.no_l2_normalize)
    from tqdm import tqdm  # noqa: PLC0415

    failed: list[str] = []
    seconds = 0
    bar = tqdm(todo, desc="extract", unit="video", disable=args.no_progress or not folder)
    for vid, path in bar:
        try:
            feats = extract_features(path, s3d, progress=not args.no_progress)
        except VideoError as err:
            if not (args.skip_bad and folder):
                raise
            failed.append(str(err))
            log.warning("%s", err)
            continue
        out = fileio.join(args.out, f"{vid}.npy")
        write_features(out, feats)
        seconds += feats.shape[0]
        if not folder:
            print(f"{path} -> {out} {list(feats.shape)} float16")
            return 0
    print(f"extracted {len(todo) - len(failed)} video(s), {seconds} s of features; skipped {done_before} already "
          f"done; {len(failed)} failed -> {args.out}")
    for message in failed:
        print(f"  failed: {message}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m norton_jax.extract"))
