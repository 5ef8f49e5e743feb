"""Command line: build the embedded corpus or convert feature corpora into a feature store.

    python -m data_pipeline.build youcook2-mnc --out DIR [--full | --max-videos N] [--irrelevant-fraction F]
                                               [--shift-std S] [--filler-prob P] [--seed K] [--force] ...
    python -m data_pipeline.build howto100m --vfeat-dir DIR --out DIR [--split train] [--skip-bad] [--resume]
    python -m data_pipeline.build per-video --features DIR --captions DIR --out DIR [--split train] [--skip-bad]
        (both: [--strict] [--num-tasks N --task-index I])
    python -m data_pipeline.build merge --out DIR --split train --num-tasks N

Everything runs offline.  Folders may be local or URLs (gs://bucket/path, through tf.io.gfile).

Late captions (starting at or after the last feature second, or ending more than
--time-tolerance seconds after it) are kept with their times as they are and counted
(clamped_captions / clamped_videos in the summary and the index): the sampler clamps the clip
centre into the video, as the reference does.  --strict rejects such videos instead.

Conversion in parts: --num-tasks N --task-index I converts task I's contiguous share of the
videos (per-video: of the sorted ids; howto100m: of the input shards) into shards
<split>-tIIIII-NNNNN.tfrecord and a partial index <split>.task-IIIII-of-NNNNN.index.json; the
tasks may run at the same time, on several machines, into the same --out.  The task that
finishes last merges the partial indexes into <split>.index.json by itself; `merge` does the
same by hand (for example after re-running one task with --resume).  The merged store holds
the videos at the same positions as a conversion in one task.

``--skip-bad`` turns data errors into counted skips: the summary
lists the skipped video ids per reason (the first few on the terminal, all of them in
``<split>.index.json``, ``skipped_videos``); without it the first bad video stops the run with
an error that names the file and the video.

A mistake in what was given (a missing folder, a bad value, bad data) prints one line
``error: ...`` and exits with status 2; ``--debug`` (anywhere on the line) or
``NORTON_DEBUG=1`` shows the traceback. A folder that already holds a build with other
settings is refused: ``--force`` replaces a youcook2-mnc build; for the converters use another
``--out`` (``--resume`` continues an interrupted conversion with the same settings).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time

from norton_jax import cli

PROG = "python -m data_pipeline.build"
PRINTED_SKIPS = 10  # skipped video ids shown per reason on the terminal


def _parser() -> argparse.ArgumentParser:
    from data_pipeline.youcook2_mnc import MNCConfig

    paragraphs = __doc__.split("\n\n")
    parts_help = next(x for x in paragraphs if x.startswith("Conversion in parts"))
    late_help = next(x for x in paragraphs if x.startswith("Late captions"))
    p = argparse.ArgumentParser(prog=PROG, description=paragraphs[0],
                                epilog=late_help + "\n\n" + parts_help,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_debug_flag(p)
    sub = p.add_subparsers(dest="what", required=True)

    y = sub.add_parser("youcook2-mnc", help="build the embedded noisy-correspondence corpus")
    y.add_argument("--out", required=True)
    y.add_argument("--data-root", default=None, help="folder with youcook2/ and howto100m/ (default: repo data/)")
    y.add_argument("--cache-dir", default="~/.cache/norton_jax", help="MiniLM embedding cache ('' to disable)")
    y.add_argument("--force", action="store_true",
                   help="rebuild even if DIR holds a build (with the same or other settings)")
    y.add_argument("--full", action="store_true", help="all 1,333 train + 457 val videos (same as --max-videos 0)")
    for f in dataclasses.fields(MNCConfig):
        flag = "--" + f.name.replace("_", "-")
        typ = int if f.name in ("seed", "videos_per_shard", "max_videos") else float
        extra = "; 0 = all videos" if f.name == "max_videos" else ""
        y.add_argument(flag, type=typ, default=None, help=f"default {f.default}{extra}")

    conv = dict(epilog=late_help + "\n\n" + parts_help, formatter_class=argparse.RawDescriptionHelpFormatter)
    h = sub.add_parser("howto100m", help="convert the reference HowTo100M ShardedTensor layout", **conv)
    h.add_argument("--vfeat-dir", required=True)
    h.add_argument("--tfeat-prefix", default=None)
    h.add_argument("--out", required=True)
    h.add_argument("--split", default="train")

    v = sub.add_parser("per-video", help="convert <id>.npy features + <id>.csv (start,end,text) captions", **conv)
    v.add_argument("--features", required=True)
    v.add_argument("--captions", required=True)
    v.add_argument("--out", required=True)
    v.add_argument("--split", default="train")
    for q in (h, v):
        q.add_argument("--videos-per-shard", type=int, default=512)
        q.add_argument("--skip-bad", action="store_true", help="skip (and count and list) bad videos instead of failing")
        q.add_argument("--time-tolerance", type=float, default=2.0,
                       help="seconds a caption may end after the last feature second before it counts as late")
        q.add_argument("--strict", action="store_true",
                       help="reject a video with a late caption (starts at or after the last feature second, or "
                            "ends more than --time-tolerance after it) instead of keeping and counting it")
        q.add_argument("--resume", action="store_true",
                       help="keep finished shards of an interrupted run with the same settings")
        q.add_argument("--num-tasks", type=int, default=1,
                       help="split the conversion into N tasks (processes or machines) writing into the same --out")
        q.add_argument("--task-index", type=int, default=0,
                       help="which task this is, 0..N-1; the last task to finish merges the indexes")

    m = sub.add_parser("merge", help="write <split>.index.json from the partial indexes of N finished tasks",
                       epilog=parts_help, formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("--out", required=True)
    m.add_argument("--split", default="train")
    m.add_argument("--num-tasks", type=int, required=True)
    for q in (y, h, v, m):
        cli.add_debug_flag(q)
    return p


def _check_converter_args(a) -> None:
    if a.videos_per_shard < 1:
        raise cli.UserError(f"--videos-per-shard must be >= 1, got {a.videos_per_shard}")
    if not math.isfinite(a.time_tolerance) or a.time_tolerance < 0:
        raise cli.UserError(f"--time-tolerance must be a finite number >= 0, got {a.time_tolerance}")
    if not a.split or "/" in a.split or a.split.startswith("."):
        raise cli.UserError(f"--split must be a plain name such as 'train', got {a.split!r}")
    _check_tasks(a)


def _check_tasks(a) -> None:
    if a.num_tasks < 1:
        raise cli.UserError(f"--num-tasks must be >= 1, got {a.num_tasks}")
    if not 0 <= getattr(a, "task_index", 0) < a.num_tasks:
        raise cli.UserError(f"--task-index must be in 0..{a.num_tasks - 1} for --num-tasks {a.num_tasks}, "
                            f"got {a.task_index}")


def _mnc_config(a):
    from data_pipeline.youcook2_mnc import MNCConfig

    kw = {}
    for f in dataclasses.fields(MNCConfig):
        value = getattr(a, f.name)
        if value is None:
            value = f.default
        else:
            try:
                MNCConfig.check(f.name, value, label="--" + f.name.replace("_", "-"))
            except ValueError as e:
                raise cli.UserError(str(e)) from None
        kw[f.name] = value
    if a.full:
        if a.max_videos not in (None, 0):
            raise cli.UserError(f"--full (all videos) contradicts --max-videos {a.max_videos}; give one of them")
        kw["max_videos"] = None
    return MNCConfig(**kw)  # max_videos 0 -> None (all videos)


def _print_skips(summary: dict, out_dir: str) -> None:
    """The skipped videos per reason on stderr (the first PRINTED_SKIPS ids of each)."""
    skipped = summary.get("skipped") or {}
    if not skipped:
        return
    total = sum(skipped.values())
    print(f"skipped {total} bad video(s) (--skip-bad); all ids are in {out_dir}/{summary['split']}.index.json "
          "(skipped_videos):", file=sys.stderr)
    examples = summary.get("skipped_examples") or {}
    for reason, ids in (summary.get("skipped_videos") or {}).items():
        shown = ", ".join(ids[:PRINTED_SKIPS]) + (f", ... and {len(ids) - PRINTED_SKIPS} more"
                                                   if len(ids) > PRINTED_SKIPS else "")
        print(f"  {reason}: {len(ids)}: {shown}", file=sys.stderr)
        if reason in examples:
            print(f"    e.g. {examples[reason]}", file=sys.stderr)


def _print_late(summary: dict) -> None:
    """One line on stderr about the late captions that were kept (or that --strict rejects)."""
    n, videos = summary.get("clamped_captions", 0), summary.get("clamped_videos", 0)
    if summary.get("late_captions") == "reject":
        late = (summary.get("skipped") or {}).get("caption_outside_video", 0)
        if late:
            print(f"--strict: {late} video(s) with a late caption were rejected (caption_outside_video)",
                  file=sys.stderr)
        return
    if not n:
        return
    print(f"late captions: kept {n} caption(s) in {videos} video(s) that start after the features or end more "
          "than --time-tolerance after them (clamped_captions / clamped_videos; the sampler clamps their clip "
          "centre into the video; --strict rejects such videos)", file=sys.stderr)


def _capped(summary: dict) -> dict:
    """The summary with each reason's id list cut to PRINTED_SKIPS (for printing)."""
    out = dict(summary)
    out["skipped_videos"] = {r: ids[:PRINTED_SKIPS] + ([f"... and {len(ids) - PRINTED_SKIPS} more"]
                                                       if len(ids) > PRINTED_SKIPS else [])
                             for r, ids in (summary.get("skipped_videos") or {}).items()}
    if isinstance(out.get("merged"), dict):
        out["merged"] = _capped(out["merged"])
    return out


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    t0 = time.time()
    if a.what == "youcook2-mnc":
        from data_pipeline.youcook2_mnc import build
        cfg = _mnc_config(a)
        meta = build(a.out, cfg, data_root=a.data_root, cache_dir=a.cache_dir or None, force=a.force)
        print(json.dumps(meta, indent=1))
        return 0
    if a.what == "merge":
        _check_tasks(a)
        from data_pipeline.convert import SUMMARY_KEYS
        from data_pipeline.feature_store import merge_task_indexes
        index = merge_task_indexes(a.out, a.split, a.num_tasks)
        summary = {k: index[k] for k in SUMMARY_KEYS}
        summary["num_tasks"] = a.num_tasks
        summary["seconds"] = round(time.time() - t0, 1)
        print(json.dumps(_capped(summary), indent=1))
        _print_late(summary)
        _print_skips(summary, a.out)
        return 0
    _check_converter_args(a)
    from data_pipeline import convert
    common = dict(split=a.split, videos_per_shard=a.videos_per_shard, time_tolerance=a.time_tolerance,
                  on_error="skip" if a.skip_bad else "raise", resume=a.resume, progress=True,
                  strict=a.strict, num_tasks=a.num_tasks, task_index=a.task_index)
    if a.what == "howto100m":
        summary = convert.convert_reference_howto100m(a.vfeat_dir, a.out, tfeat_prefix=a.tfeat_prefix, **common)
    else:
        summary = convert.convert_per_video(a.features, a.captions, a.out, **common)
    summary["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(_capped(summary), indent=1))
    _print_late(summary)
    _print_skips(summary, a.out)
    if a.num_tasks > 1:
        if summary.get("merged") is not None:
            print(f"all {a.num_tasks} tasks have finished: merged their indexes into "
                  f"{a.out}/{a.split}.index.json", file=sys.stderr)
        else:
            print(f"task {a.task_index} of {a.num_tasks} done; {a.out}/{a.split}.index.json is written when the "
                  f"last task finishes (or run: {PROG} merge --out {a.out} --split {a.split} "
                  f"--num-tasks {a.num_tasks})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=PROG))
