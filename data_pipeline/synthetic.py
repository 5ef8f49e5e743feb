"""Small synthetic corpora in the two input layouts (for tests, benchmarks and examples).

Features are random unit vectors (float16 [T, 512]); captions are random word strings from a
fixed list, tokenised with the real bert-base-uncased vocabulary; times are increasing and
inside the video. Nothing here is meant to be learnable. Output folders may be local or URLs
(``ram://...``, ``gs://...``; written through :mod:`data_pipeline.fileio`).
"""
from __future__ import annotations

import csv
import pickle

import numpy as np

from data_pipeline import fileio
from data_pipeline.convert import DEFAULT_TFEAT_NAME
from data_pipeline.tokenization import MAX_STORED_TOKENS, tokenize_captions

WORDS = ("add the onion garlic pan oil salt pepper stir mix bowl cut slice chop heat minutes "
         "water sauce cook boil chicken rice flour butter sugar egg whisk bake oven serve plate").split()


def random_video(rng: np.random.Generator, video_id: str, *, min_seconds: int = 40, max_seconds: int = 160,
                 feature_dim: int = 512) -> dict:
    """One random video: ``features [T, 512] float16``, ``starts/ends [n]`` float32, ``texts``."""
    t = int(rng.integers(min_seconds, max_seconds + 1))
    f = rng.standard_normal((t, feature_dim)).astype(np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    starts, ends, texts = [], [], []
    cur = float(rng.uniform(0, 3))
    while cur < t - 2:
        dur = float(rng.uniform(1.5, 6.0))
        end = min(cur + dur, float(t))
        starts.append(round(cur, 2))
        ends.append(round(end, 2))
        texts.append(" ".join(rng.choice(WORDS, size=int(rng.integers(2, 9)))))
        cur = end + float(rng.uniform(0, 2))
    return {"video_id": video_id, "features": f.astype(np.float16),
            "starts": np.asarray(starts, np.float32), "ends": np.asarray(ends, np.float32), "texts": texts}


def write_reference_layout(out_dir: str, num_videos: int, *, split: str = "train", videos_per_shard: int = 4,
                           seed: int = 0, **kw) -> list[dict]:
    """Write a corpus in the reference HowTo100M layout (spec §4.1). Returns the videos written."""
    fileio.makedirs(out_dir)
    rng = np.random.default_rng(seed)
    videos = [random_video(rng, f"vid{seed}_{i:05d}", **kw) for i in range(num_videos)]
    meta = {}
    prefix = fileio.join(out_dir, DEFAULT_TFEAT_NAME)
    for s in range(0, (num_videos + videos_per_shard - 1) // videos_per_shard):
        chunk = videos[s * videos_per_shard:(s + 1) * videos_per_shard]
        meta[s] = [v["video_id"] for v in chunk]

        def save(pfx, items, dtype):
            starts = np.concatenate([[0], np.cumsum([len(x) for x in items])]).astype(np.int64)
            _save_npy(f"{pfx}_starts.npy", starts)
            _save_npy(f"{pfx}_data.npy", np.concatenate(items).astype(dtype))

        save(fileio.join(out_dir, f"{split}_{s}"), [v["features"] for v in chunk], np.float16)
        save(f"{prefix}{split}_{s}.startends", [np.stack([v["starts"], v["ends"]], 1) for v in chunk], np.float32)
        caps = []
        for v in chunk:
            toks = tokenize_captions(v["texts"])
            v["tokens"] = toks
            arr = np.full((len(toks), MAX_STORED_TOKENS), -1, np.int32)
            for i, tk in enumerate(toks):
                arr[i, :len(tk)] = tk
            caps.append(arr)
        save(f"{prefix}{split}_{s}.caps_ids", caps, np.int32)
    with fileio.open(fileio.join(out_dir, f"{split}_meta.pkl"), "wb") as fh:
        pickle.dump(meta, fh)
    return videos


def _save_npy(path: str, array: np.ndarray) -> None:
    with fileio.open(path, "wb") as fh:
        np.save(fh, array)


def write_captions_csv(path: str, starts, ends, texts) -> None:
    """A ``start,end,text`` captions CSV (times with 2 decimals)."""
    with fileio.open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["start", "end", "text"])
        for s, e, t in zip(starts, ends, texts):
            w.writerow([f"{s:.2f}", f"{e:.2f}", t])


def write_per_video_layout(feature_dir: str, caption_dir: str, num_videos: int, *, seed: int = 0,
                           **kw) -> list[dict]:
    """Write ``<id>.npy`` + ``<id>.csv`` (start,end,text) pairs. Returns the videos written."""
    fileio.makedirs(feature_dir)
    fileio.makedirs(caption_dir)
    rng = np.random.default_rng(seed)
    videos = [random_video(rng, f"pv{seed}_{i:05d}", **kw) for i in range(num_videos)]
    for v in videos:
        _save_npy(fileio.join(feature_dir, v["video_id"] + ".npy"), v["features"])
        write_captions_csv(fileio.join(caption_dir, v["video_id"] + ".csv"), v["starts"], v["ends"], v["texts"])
        v["tokens"] = tokenize_captions(v["texts"])
    return videos
