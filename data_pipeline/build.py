"""Command line: build the embedded corpus or convert feature corpora into a feature store.

    python -m data_pipeline.build youcook2-mnc --out DIR [--full | --max-videos N] [--irrelevant-fraction F]
                                               [--shift-std S] [--filler-prob P] [--seed K] ...
    python -m data_pipeline.build howto100m --vfeat-dir DIR --out DIR [--split train] [--skip-bad]
    python -m data_pipeline.build per-video --features DIR --captions DIR --out DIR [--split train]

Everything runs offline. ``--skip-bad`` turns data errors into counted skips (reported at the
end and stored in ``<split>.index.json``); without it the first bad video stops the run with an
error that names the file and the video.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_pipeline.build", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)

    from data_pipeline.youcook2_mnc import MNCConfig
    y = sub.add_parser("youcook2-mnc", help="build the embedded noisy-correspondence corpus")
    y.add_argument("--out", required=True)
    y.add_argument("--data-root", default=None, help="folder with youcook2/ and howto100m/ (default: repo data/)")
    y.add_argument("--cache-dir", default="~/.cache/norton_jax", help="MiniLM embedding cache ('' to disable)")
    y.add_argument("--force", action="store_true", help="rebuild even if DIR holds a build with the same settings")
    y.add_argument("--full", action="store_true", help="all 1,333 train + 457 val videos (same as --max-videos 0)")
    for f in dataclasses.fields(MNCConfig):
        flag = "--" + f.name.replace("_", "-")
        typ = int if f.name in ("seed", "videos_per_shard", "max_videos") else float
        y.add_argument(flag, type=typ, default=f.default, help=f"default {f.default}")

    h = sub.add_parser("howto100m", help="convert the reference HowTo100M ShardedTensor layout (spec 4.1)")
    h.add_argument("--vfeat-dir", required=True)
    h.add_argument("--tfeat-prefix", default=None)
    h.add_argument("--out", required=True)
    h.add_argument("--split", default="train")

    v = sub.add_parser("per-video", help="convert <id>.npy features + <id>.csv (start,end,text) captions")
    v.add_argument("--features", required=True)
    v.add_argument("--captions", required=True)
    v.add_argument("--out", required=True)
    v.add_argument("--split", default="train")
    for q in (h, v):
        q.add_argument("--videos-per-shard", type=int, default=512)
        q.add_argument("--skip-bad", action="store_true", help="skip (and count) bad videos instead of failing")
        q.add_argument("--time-tolerance", type=float, default=2.0,
                       help="seconds a caption may end after the last feature second")
        q.add_argument("--resume", action="store_true", help="keep finished shards of an interrupted run")

    a = p.parse_args(argv)
    t0 = time.time()
    if a.what == "youcook2-mnc":
        from data_pipeline.youcook2_mnc import build
        kw = {f.name: getattr(a, f.name) for f in dataclasses.fields(MNCConfig)}
        if a.full or kw["max_videos"] == 0:
            kw["max_videos"] = None
        cfg = MNCConfig(**kw)
        meta = build(a.out, cfg, data_root=a.data_root, cache_dir=a.cache_dir or None, force=a.force)
        print(json.dumps(meta, indent=1))
    else:
        from data_pipeline import convert
        common = dict(split=a.split, videos_per_shard=a.videos_per_shard, time_tolerance=a.time_tolerance,
                      on_error="skip" if a.skip_bad else "raise", resume=a.resume, progress=True)
        if a.what == "howto100m":
            summary = convert.convert_reference_howto100m(a.vfeat_dir, a.out, tfeat_prefix=a.tfeat_prefix, **common)
        else:
            summary = convert.convert_per_video(a.features, a.captions, a.out, **common)
        summary["seconds"] = round(time.time() - t0, 1)
        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
