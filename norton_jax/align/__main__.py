"""``python -m norton_jax.align``: re-align a noisy transcript to its video with Norton's plan.

One video from pre-extracted features::

    python -m norton_jax.align --checkpoint WORKDIR --features video.npy \\
        --captions captions.csv --out aligned.json --plot aligned.png

One raw video and its subtitles (features extracted with S3D, cached as ``<video stem>.npy``
next to ``--out`` or in ``--features-cache DIR``, reused by later runs)::

    python -m norton_jax.align --checkpoint WORKDIR --video talk.mp4 --subtitles talk.vtt \\
        --s3d-weights s3d_howto100m.pth --out aligned.vtt [--plot aligned.png] [--keep-rejected]

The output format follows the suffix of ``--out``: ``.vtt``, ``.srt`` or ``.csv`` hold the
re-timed transcript (captions the bucket rejects dropped, or with ``--keep-rejected`` kept at
their original time, marked ``[rejected]``); ``.json`` is the full alignment report, whose
``segments`` are the same transcript in Whisper's layout.  Captions (``--captions`` or
``--subtitles``, the same flag) are ``start,end,text`` CSV, JSON, WebVTT, SRT or Whisper JSON
(see :func:`norton_jax.align.read_captions`).  Times must be finite, non-negative and lie on
the features: a caption that starts at or after the last feature second (or ends more than
2 s after it) stops the run with an error naming its line, unless ``--clamp-to-video`` cuts
it to the video (the count is printed).  Features holding NaN or inf are refused.

Corpus (a feature store, e.g. to filter noisy pairs before training)::

    python -m norton_jax.align --checkpoint WORKDIR --store data/build/youcook2-mnc \\
        --split train --out train_alignment.jsonl [--filtered-store DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import asdict

from data_pipeline import fileio
from data_pipeline.tf_utils import configure_tensorflow_environment
from norton_jax import cli
from norton_jax.align.algorithm import END_TOLERANCE, AlignConfig, align_video, fit_captions_to_video
from norton_jax.align.corpus import align_store
from norton_jax.align.files import OUTPUT_SUFFIXES, read_captions, read_features, write_alignment
from norton_jax.evaluate.report import check_writable
from norton_jax.inference import Encoder, load_model

PROG = "python -m norton_jax.align"


def build_parser() -> argparse.ArgumentParser:
    d = AlignConfig()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Re-align a noisy transcript to its video with Norton's transport plan (prompt bucket): "
                    "from a video file and its subtitles, from pre-extracted features, or for a feature store.",
        epilog="Captions must lie on the features: one that starts at or after the last feature second, or "
               f"ends more than {END_TOLERANCE:g} s after it, is an error naming its line unless "
               "--clamp-to-video is given.  Features with NaN/inf values are refused.  A mistake in the "
               "arguments or files prints one 'error:' line and exits with status 2 (--debug: traceback).",
    )
    parser.add_argument("--checkpoint", required=True,
                        help="training workdir, checkpoints/ folder, <step>/ folder or .pt/.safetensors")
    parser.add_argument("--config", default=None, help="config file with the model geometry (for .pt files)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="one video file (mp4, webm, mkv, ...): S3D features are extracted and cached")
    src.add_argument("--features", help="one video's features .npy [T, 512] (one row per second)")
    src.add_argument("--store", help="a feature store: align every video of --split")
    parser.add_argument("--captions", "--subtitles", dest="captions",
                        help="the video's captions: .vtt, .srt, Whisper .json, start,end,text .csv, or JSON "
                             "(with --video / --features)")
    parser.add_argument("--s3d-weights", default=None,
                        help="with --video: the S3D state dict (s3d_howto100m.pth, see docs/extraction.md); "
                             "not needed when the features are cached")
    parser.add_argument("--features-cache", default=None,
                        help="with --video: folder of cached <video stem>.npy features (default: the folder of --out)")
    parser.add_argument("--s3d-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="with --video: S3D compute dtype (features are stored as float16)")
    parser.add_argument("--clamp-to-video", action="store_true",
                        help="with --video/--features: cut captions that run past the features to the video "
                             "(and say how many) instead of stopping with an error")
    parser.add_argument("--keep-rejected", action="store_true",
                        help="keep the captions the bucket rejects in the transcript, at their original time, "
                             "marked '[rejected]' (default: drop them)")
    parser.add_argument("--split", default="train", help="store split (with --store; default train)")
    parser.add_argument("--max-videos", type=int, default=None, help="with --store: only the first N videos")
    parser.add_argument("--filtered-store", default=None,
                        help="with --store: write a store without the rejected captions, re-timed")
    parser.add_argument("--keep-times", action="store_true", help="with --filtered-store: keep the original times")
    parser.add_argument("--out", required=True,
                        help="one video: aligned.vtt / .srt / .csv (the re-timed transcript) or .json (the "
                             "report); store: .jsonl.  Checked writable before the work")
    parser.add_argument("--plot", default=None, help="PNG of the plan over time (one video)")
    parser.add_argument("--video-id", default=None, help="name used in the outputs (default: the file stem)")
    parser.add_argument("--epsilon", type=float, default=d.epsilon)
    parser.add_argument("--prompt-ratio", type=float, default=d.prompt_ratio)
    parser.add_argument("--prior-sigma", type=float, default=d.prior_sigma,
                        help="seconds of the Gaussian shift prior; 0 disables it")
    parser.add_argument("--window", type=int, default=d.window)
    parser.add_argument("--stride", type=int, default=d.stride, help="at most --window / 2")
    parser.add_argument("--num-iters", type=int, default=d.num_iters)
    parser.add_argument("--reject-threshold", type=float, default=d.reject_threshold)
    parser.add_argument("--batch-size", type=int, default=64)
    cli.add_debug_flag(parser)
    return parser


def _config(args: argparse.Namespace) -> AlignConfig:
    try:
        return AlignConfig(
            window=args.window, stride=args.stride, epsilon=args.epsilon, prompt_ratio=args.prompt_ratio,
            prior_sigma=args.prior_sigma if args.prior_sigma and args.prior_sigma > 0 else None,
            num_iters=args.num_iters, reject_threshold=args.reject_threshold,
        )
    except ValueError as err:
        raise cli.UserError(f"alignment settings: {err}") from None


def _check_args(args: argparse.Namespace) -> None:
    one = args.store is None
    flag = "--video" if args.video is not None else "--features"
    if one and not args.captions:
        raise cli.UserError(f"{flag} needs --captions (or --subtitles)")
    if args.video is None and (args.s3d_weights or args.features_cache):
        raise cli.UserError("--s3d-weights and --features-cache go with --video")
    suffix = os.path.splitext(args.out)[1].lower()
    if one and suffix not in OUTPUT_SUFFIXES:
        raise cli.UserError(f"--out {args.out}: one video writes {', '.join(OUTPUT_SUFFIXES)} "
                            f"(the format follows the suffix), got {suffix or 'no suffix'!r}")
    if not one and (args.plot or args.keep_rejected):
        raise cli.UserError("--plot and --keep-rejected go with one video (--video or --features)")


def main(argv: list[str] | None = None) -> int:
    configure_tensorflow_environment()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _check_args(args)
    config = _config(args)
    # outputs first: an unwritable path fails now, not after the alignment
    check_writable(args.out, "--out")
    if args.plot:
        check_writable(args.plot, "--plot")
    if args.filtered_store:
        check_writable(fileio.join(args.filtered_store, f"{args.split}.index.json"), "--filtered-store")
    captions = features = None
    source = args.video if args.video is not None else args.features
    if args.store is None:  # inputs next, so that their mistakes show before the model loads
        captions = read_captions(args.captions)
        if args.video is not None:
            from norton_jax.align.video import video_features  # noqa: PLC0415 - S3D and PyAV only for videos

            found = video_features(args.video, s3d_weights=args.s3d_weights, cache_dir=args.features_cache,
                                   out=args.out, dtype=args.s3d_dtype, progress=sys.stderr.isatty())
            features = found.features
            verb = "reusing cached" if found.cached else "extracted"
            print(f"{args.video}: {verb} features {found.path} [{features.shape[0]}, {features.shape[1]}]")
        else:
            features = read_features(args.features)
        captions, clamped = fit_captions_to_video(captions, int(features.shape[0]), clamp=args.clamp_to_video,
                                                  source=args.captions)
    model, info = load_model(args.checkpoint, args.config)
    encoder = Encoder(model, args.batch_size)
    if args.store is not None:
        summary = align_store(encoder, args.store, args.split, config, out_jsonl=args.out,
                              filtered_store=args.filtered_store, retime=not args.keep_times,
                              max_videos=args.max_videos)
        for key, value in asdict(summary).items():
            if value is not None:
                print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
        print(f"wrote {args.out}")
        return 0
    t, dim = features.shape
    if dim != model.config.video_input_dim:
        raise ValueError(f"{source}: expected [T, {model.config.video_input_dim}] features for this "
                         f"model, got {features.shape}")
    if clamped:
        print(f"{args.captions}: clamped {clamped} of {len(captions.texts)} captions to the video's {t} s")
    vid = args.video_id or os.path.splitext(os.path.basename(source))[0]
    result = align_video(encoder, features, captions, config, video_id=vid)
    written = write_alignment(args.out, result, keep_rejected=args.keep_rejected,
                              extra={"checkpoint": info["checkpoint"], "step": info["step"],
                                     "clamped_captions": clamped})
    rejected = int(result.rejected.sum())
    kept = "kept, marked" if args.keep_rejected else "dropped"
    print(f"{vid}: {len(captions.texts)} captions, {rejected} rejected by the bucket "
          f"(p = {result.bucket_value:.3f}, {kept}); wrote {written} cues to {args.out}")
    for i, text in enumerate(captions.texts):
        tag = "REJECTED" if result.rejected[i] else "aligned "
        print(f"  [{tag}] {result.alignability[i]:.2f}  {captions.starts[i]:7.1f}-{captions.ends[i]:7.1f} -> "
              f"{result.aligned_starts[i]:7.1f}-{result.aligned_ends[i]:7.1f}  {text[:60]!r}")
    if args.plot:
        from norton_jax.align.plot import plot_alignment  # noqa: PLC0415 - matplotlib only for a picture

        plot_alignment(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=PROG))
