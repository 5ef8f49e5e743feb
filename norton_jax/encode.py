"""``python -m norton_jax.encode``: embed your videos' features or your sentences with a Norton model.

Video clips (a folder of ``<video_id>.npy`` S3D features ``[T, 512]``, one row per second, as
``python -m norton_jax.extract`` writes them, or a feature store)::

    python -m norton_jax.encode --checkpoint WORKDIR --features feats/ --out clips.npy

writes ``clips.npy`` (``float32 [clips, D]``, one pooled video embedding per clip of
``--clip-len`` seconds, ``--stride`` apart; a video shorter than a clip is one clip) and
``clips.ids.tsv`` next to it (one line per row: ``video_id<TAB>start<TAB>end`` in seconds).

Sentences (a UTF-8 text file, one per line; blank lines are skipped and counted)::

    python -m norton_jax.encode --checkpoint WORKDIR --texts queries.txt --out caps.npy

writes ``caps.npy`` (``float32 [lines, D]``) and ``caps.ids.tsv`` (``line<TAB>text``).

The embeddings are :func:`norton_jax.inference.encode_videos` / :func:`~norton_jax.inference.encode_texts`
(the model's pooled outputs, as the retrieval evaluation uses them, spec §5.1); ``--normalize``
writes unit rows, so that ``caps @ clips.T`` is the cosine similarity.  Every path may be local
or on any filesystem of :mod:`data_pipeline.fileio` (``gs://``).
"""

from __future__ import annotations

import argparse
import io
import sys
from typing import Sequence

import numpy as np

from data_pipeline import fileio
from data_pipeline.tf_utils import configure_tensorflow_environment

configure_tensorflow_environment()

from norton_jax import cli  # noqa: E402
from norton_jax.inference.checkpoints import parse_step_arg  # noqa: E402

PROG = "python -m norton_jax.encode"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Embed video features (a folder of <id>.npy or a feature store) or sentences (a text "
                    "file, one per line) with a Norton checkpoint, into a .npy of embeddings for search.",
    )
    parser.add_argument("--checkpoint", required=True,
                        help="training workdir, its checkpoints/ folder, one <step>/ folder, or a .pt/.safetensors file")
    parser.add_argument("--step", type=parse_step_arg, default=None,
                        help="orbax step: an integer, 'best' or 'latest' (default: latest)")
    parser.add_argument("--config", default=None, help="config file with the model geometry (.pt files without one)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--features", help="folder of <video_id>.npy [T, 512] features, or a feature store")
    what.add_argument("--texts", help="UTF-8 text file, one sentence per line")
    parser.add_argument("--out", required=True, help="output .npy of embeddings; the ids go to <out stem>.ids.tsv")
    parser.add_argument("--split", default=None, help="feature-store split (default: the store's only split)")
    parser.add_argument("--clip-len", type=int, default=32, help="clip length in seconds (1-32; default 32)")
    parser.add_argument("--stride", type=int, default=None, help="seconds between clip starts (default: --clip-len)")
    parser.add_argument("--batch-size", type=int, default=64, help="encoder batch size (default 64)")
    parser.add_argument("--normalize", action="store_true", help="write unit-length rows (cosine = dot product)")
    cli.add_debug_flag(parser)
    return parser


def ids_path(out: str) -> str:
    """``clips.npy`` -> ``clips.ids.tsv`` (same folder)."""
    stem = out[: -len(".npy")] if out.endswith(".npy") else out
    return stem + ".ids.tsv"


def read_texts(path: str) -> tuple[list[int], list[str], int]:
    """(1-based line numbers, texts, blank lines skipped) of a UTF-8 text file."""
    if not fileio.isfile(path):
        raise cli.UserError(f"--texts {path}: file not found")
    try:
        with fileio.open(path, "r", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except UnicodeDecodeError as err:
        raise cli.UserError(f"--texts {path}: not UTF-8 text ({err})") from None
    kept = [(i, line.strip()) for i, line in enumerate(lines, 1) if line.strip()]
    if not kept:
        raise cli.UserError(f"--texts {path}: no non-blank line to encode")
    numbers, texts = (list(x) for x in zip(*kept))
    return numbers, texts, len(lines) - len(kept)


def _store_split(path: str, split: str | None) -> str:
    splits = sorted(n[: -len(".index.json")] for n in fileio.listdir(path) if n.endswith(".index.json"))
    if split is None:
        if len(splits) != 1:
            raise cli.UserError(f"--features {path}: a feature store with splits {splits}; choose one with --split")
        return splits[0]
    if split not in splits:
        raise cli.UserError(f"--features {path}: the store has no split {split!r} (it has {splits})")
    return split


def read_videos(path: str, split: str | None, feature_dim: int) -> list[tuple[str, np.ndarray]]:
    """``[(video_id, features [T, D] float32)]`` of a folder of ``<id>.npy`` or a feature store,
    checked (2-D, non-empty, ``feature_dim`` wide, finite); errors name the file."""
    from norton_jax.evaluate.loaders import EvalDataError, check_finite_features  # noqa: PLC0415
    from norton_jax.evaluate.sources import checked_store_record, is_feature_store  # noqa: PLC0415

    if not fileio.isdir(path):
        raise cli.UserError(f"--features {path}: folder not found")
    videos: list[tuple[str, np.ndarray]] = []
    if is_feature_store(path):
        from data_pipeline.feature_store import FeatureStore  # noqa: PLC0415

        store = FeatureStore(path, _store_split(path, split))
        try:
            for i in range(len(store)):
                rec = checked_store_record(store, i)
                videos.append((rec.video_id, np.asarray(rec.features, np.float32)))
        finally:
            store.close()
    else:
        files = fileio.glob(fileio.join(path, "*.npy"))
        if not files:
            raise cli.UserError(f"--features {path}: no <video_id>.npy file in this folder")
        for file in files:
            try:
                with fileio.open(file, "rb") as fh:
                    feat = np.load(io.BytesIO(fh.read()), allow_pickle=False)
            except (ValueError, OSError) as err:
                raise EvalDataError(file, f"not a readable .npy file ({err})") from None
            vid = fileio.basename(file)[: -len(".npy")]
            if feat.ndim != 2 or feat.shape[0] == 0:
                raise EvalDataError(file, f"features must be a non-empty [T, D] array, got shape {feat.shape}")
            check_finite_features(feat, file, vid)
            videos.append((vid, np.asarray(feat, np.float32)))
    for vid, feat in videos:
        if feat.shape[1] != feature_dim:
            raise EvalDataError(path, f"video {vid!r}: features have {feat.shape[1]} dims, the model expects {feature_dim}")
    if not videos:
        raise cli.UserError(f"--features {path}: the store split has no video")
    return videos


def clips_of(videos: Sequence[tuple[str, np.ndarray]], clip_len: int, stride: int) -> tuple[list, list[np.ndarray]]:
    """``([(video_id, start, end)], [features of each clip])``: windows of ``clip_len`` seconds,
    ``stride`` apart (:func:`norton_jax.evaluate.windows.sliding_windows`)."""
    from norton_jax.evaluate.windows import sliding_windows  # noqa: PLC0415

    ids, segments = [], []
    for vid, feat in videos:
        for start, stop in sliding_windows(int(feat.shape[0]), stride=stride, size=clip_len):
            ids.append((vid, start, stop))
            segments.append(feat[start:stop])
    return ids, segments


def _save(out: str, array: np.ndarray, rows: Sequence[str]) -> str:
    folder = fileio.dirname(out)
    if folder:
        fileio.makedirs(folder)
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, np.float32))
    fileio.write_bytes(out, buf.getvalue())
    side = ids_path(out)
    fileio.write_bytes(side, ("\n".join(rows) + "\n").encode("utf-8"))
    return side


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.clip_len <= 32:
        raise cli.UserError(f"--clip-len must be in [1, 32] (the model reads 32 frames), got {args.clip_len}")
    stride = args.clip_len if args.stride is None else args.stride
    if stride < 1:
        raise cli.UserError(f"--stride must be >= 1, got {stride}")
    if args.batch_size < 1:
        raise cli.UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not args.out.endswith(".npy"):
        raise cli.UserError(f"--out {args.out}: give a .npy file name")
    from norton_jax.evaluate.report import check_writable  # noqa: PLC0415
    from norton_jax.inference import Encoder, encode_texts, encode_videos, load_model  # noqa: PLC0415

    check_writable(args.out, "--out")
    texts = read_texts(args.texts) if args.texts else None  # a missing input fails before the model loads
    model, _ = load_model(args.checkpoint, args.config, step=args.step)
    encoder = Encoder(model, batch_size=args.batch_size)
    if texts is not None:
        numbers, lines, blank = texts
        emb = encode_texts(encoder, lines, normalize=args.normalize)
        side = _save(args.out, emb, [f"{n}\t{t}" for n, t in zip(numbers, lines)])
        skipped = f" ({blank} blank lines skipped)" if blank else ""
        print(f"wrote {args.out}: {emb.shape[0]} sentences x {emb.shape[1]} dims{skipped}; line numbers in {side}")
        return 0
    videos = read_videos(args.features, args.split, model.config.video_input_dim)
    ids, segments = clips_of(videos, args.clip_len, stride)
    emb = encode_videos(encoder, segments, normalize=args.normalize)
    side = _save(args.out, emb, [f"{v}\t{a}\t{b}" for v, a, b in ids])
    print(f"wrote {args.out}: {emb.shape[0]} clips of {len(videos)} videos x {emb.shape[1]} dims; "
          f"video_id/start/end in {side}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=PROG))
