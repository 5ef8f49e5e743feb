"""``youcook2-mnc``: an embedded, offline corpus with Multi-granularity Noisy Correspondence.

Built from the real YouCookII annotations (``data/youcook2/``: 1,790 trainval videos, 13,829
annotated steps with start/end seconds, official training/validation split) and real HowTo100M
ASR chatter (``data/howto100m/small_train_captions/``). No video is involved: the "visual"
features are synthesised from sentence embeddings, so the corpus has exactly known ground truth.

Visual side, per video of ``T = ceil(duration)`` seconds (float16 ``[T, 512]``):
  * every annotated step k gets ``e_k`` = all-MiniLM-L6-v2 embedding (384-d, unit) of a
    *perturbed* copy of its sentence (word dropout + one adjacent-word swap), so the visual
    side is not a copy of the text the model reads;
  * seconds outside every step get the video's background vector ``b_v = unit(g + 0.7 r_recipe +
    0.3 u_video)`` (global, recipe-type and per-video random parts, in the 384-d space);
  * the per-second signal is projected to 512-d by a fixed random Gaussian map ``W [384, 512]``
    (variance 1/512), smoothed over time by a Gaussian of ``smoothing_seconds``, perturbed by
    i.i.d. Gaussian noise of norm ~``feature_noise`` and L2-normalised per second (like S3D).

Narration (what the model reads as captions), per video:
  * fine (token) level: filler words ("um", "you know", ...) inserted between words with
    probability ``filler_prob`` per gap;
  * clip level, asynchronous: each step's caption times are shifted by
    ``delta ~ N(0, shift_std)`` clipped to ``+-max_shift`` seconds (then clamped to the video);
  * video level, irrelevant: real ASR chatter lines inserted at random times so that a
    fraction ``irrelevant_fraction`` of all captions describe nothing that is shown.
Ground truth per caption: ``gt_start``/``gt_end`` (the annotated segment, -1 for chatter),
``gt_alignable`` (1 for step captions, 0 for chatter) and ``gt_text`` (the clean sentence).

All randomness is derived from ``seed`` and the video id (never from the order of processing),
so a subset build (``max_videos``) holds exactly the same videos as the full build.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Optional

import numpy as np

from data_pipeline import fileio
from data_pipeline.convert import read_captions_csv
from data_pipeline.feature_store import FEATURE_DIM, FeatureStoreWriter, VideoRecord
from data_pipeline.tokenization import tokenize_captions

NAME = "youcook2-mnc"
BUILD_VERSION = 2  # 2: embeddings rounded to float16 on every path (cold/warm/no cache)
SPLITS = {"train": "training", "val": "validation"}
FILLERS = ("um", "uh", "so", "okay", "you know", "like", "basically", "alright", "right",
           "now", "just", "actually", "i mean", "and then", "let's see")


def default_data_root() -> str:
    """``<repo>/data`` (the real annotation files shipped with norton-jax)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")


@dataclasses.dataclass(frozen=True)
class MNCConfig:
    """Noise and size settings of youcook2-mnc (all sweepable).

    ``max_videos``: the first N ids (sorted) of each split; ``None`` or ``0`` means all
    1,333 + 457 videos (``0`` is stored as ``None``); negative values are refused.
    """
    seed: int = 0
    irrelevant_fraction: float = 0.3   # share of captions that are ASR chatter, in [0, 1)
    shift_std: float = 4.0             # s, std of the per-caption time shift
    max_shift: float = 12.0            # s, |shift| is clipped to this
    filler_prob: float = 0.15          # per word gap
    word_dropout: float = 0.25         # perturbation of the sentence embedded for the visual side
    feature_noise: float = 0.5         # norm of the per-second noise (signal norm ~1)
    smoothing_seconds: float = 1.5     # Gaussian sigma of the temporal smoothing
    max_videos: Optional[int] = 300    # per split (first ids in sorted order); None = all 1,333 + 457
    videos_per_shard: int = 128

    def __post_init__(self):
        for f in dataclasses.fields(self):
            self.check(f.name, getattr(self, f.name))
        if self.max_videos == 0:
            object.__setattr__(self, "max_videos", None)

    @staticmethod
    def check(name: str, value, label: Optional[str] = None) -> None:
        """Raises ValueError if ``value`` is not allowed for the field ``name``.

        ``label`` is how the message names the setting (default: the field name; the command
        line passes its flag, e.g. ``--max-videos``).
        """
        label = label or name
        if name in ("seed", "videos_per_shard", "max_videos"):
            if value is None and name == "max_videos":
                return
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{label} must be an integer, got {value!r}")
            low = 1 if name == "videos_per_shard" else 0
            if value < low:
                extra = " (0 means all videos)" if name == "max_videos" else ""
                raise ValueError(f"{label} must be >= {low}{extra}, got {value}")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not math.isfinite(value):
            raise ValueError(f"{label} must be a finite number, got {value!r}")
        if name == "irrelevant_fraction" and not 0.0 <= value < 1.0:
            raise ValueError(f"{label} must be in [0, 1), got {value}")
        if name in ("filler_prob", "word_dropout") and not 0.0 <= value <= 1.0:
            raise ValueError(f"{label} must be in [0, 1], got {value}")
        if name in ("shift_std", "max_shift", "feature_noise", "smoothing_seconds") and value < 0:
            raise ValueError(f"{label} must be >= 0, got {value}")


def _vid_key(video_id: str) -> int:
    return int.from_bytes(hashlib.sha1(video_id.encode()).digest()[:7], "little")


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([int(seed), *[int(k) for k in keys]]))


def perturb_sentence(sentence: str, rng: np.random.Generator, word_dropout: float) -> str:
    """Drop words (keeping at least 2 if possible) and swap one adjacent pair."""
    words = sentence.split()
    if len(words) > 2:
        keep = rng.random(len(words)) >= word_dropout
        if keep.sum() < 2:
            keep[rng.choice(len(words), size=2, replace=False)] = True
        words = [w for w, k in zip(words, keep) if k]
    if len(words) > 2:
        i = int(rng.integers(0, len(words) - 1))
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def add_fillers(sentence: str, rng: np.random.Generator, prob: float) -> str:
    """Insert filler words between words (and before the first) with probability ``prob`` each."""
    out = []
    for w in sentence.split():
        if rng.random() < prob:
            out.append(FILLERS[int(rng.integers(0, len(FILLERS)))])
        out.append(w)
    return " ".join(out)


def load_chatter(data_root: str) -> list[tuple[str, float]]:
    """Real ASR lines (text, duration s) with at least 3 words from HowTo100M small_train_captions."""
    lines = []
    for path in fileio.glob(fileio.join(data_root, "howto100m", "small_train_captions", "*.csv")):
        s, e, texts = read_captions_csv(path)
        for a, b, t in zip(s, e, texts):
            if isinstance(t, str) and len(t.split()) >= 3:
                lines.append((t, float(b - a)))
    if not lines:
        raise FileNotFoundError(f"no ASR chatter found under {data_root}/howto100m/small_train_captions")
    return lines


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along axis 0, truncated at 3 sigma, renormalised at the borders. x: [T, D]."""
    if sigma <= 0:
        return x
    t = x.shape[0]
    r = int(math.ceil(3 * sigma))
    w = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    acc = np.zeros_like(x, dtype=np.float32)
    norm = np.zeros((t, 1), np.float32)
    for o, wo in zip(range(-r, r + 1), w):  # acc[i] += w[o] * x[i + o]
        lo, hi = max(0, -o), min(t, t - o)
        if lo < hi:
            acc[lo:hi] += wo * x[lo + o:hi + o]
            norm[lo:hi] += wo
    return acc / norm


def _embed_with_cache(sentences: list[str], cache_dir: Optional[str], progress: bool) -> np.ndarray:
    """MiniLM embeddings [n, 384], cached as float16 keyed by the sentence list.

    Every path returns the float16-rounded values (as float32): a fresh encoding is rounded the
    way the cache stores it, so a build with a cold cache, a warm cache or no cache gets the same
    bytes (a float32 embedding differing from its cached float16 copy flipped the last bit of
    about a fifth of the float16 features).
    """
    from data_pipeline import minilm

    key = hashlib.sha256("\n".join(sentences).encode()).hexdigest()[:20]
    path = fileio.join(cache_dir, f"minilm_{key}.npy") if cache_dir else None
    if path and fileio.isfile(path):
        with fileio.open(path, "rb") as fh:
            emb = np.load(fh, allow_pickle=False).astype(np.float32)
        if emb.shape == (len(sentences), minilm.HIDDEN):
            return emb
    emb16 = minilm.encode(sentences, progress=progress).astype(np.float16)
    if path:
        fileio.makedirs(cache_dir)
        with fileio.atomic_output(path, "wb") as fh:
            np.save(fh, emb16)
    return emb16.astype(np.float32)


def build(out_dir: str, config: MNCConfig = MNCConfig(), *, data_root: Optional[str] = None,
          cache_dir: Optional[str] = "~/.cache/norton_jax", force: bool = False,
          progress: bool = True) -> dict:
    """Build youcook2-mnc into ``out_dir`` (feature store with splits ``train`` and ``val``).

    Writes into ``<out_dir>.partial`` and renames it to ``out_dir`` when complete (on an object
    store, ``gs://...``, the rename is a copy; ``youcook2_mnc.json`` is copied with the rest). If
    ``out_dir`` already holds a build with the same settings it is kept (unless ``force``).
    Returns the metadata dict that is also written to ``<out_dir>/youcook2_mnc.json``.
    """
    t0 = time.time()
    data_root = data_root or default_data_root()
    cache_dir = (cache_dir if fileio.is_url(cache_dir) else os.path.expanduser(cache_dir)) if cache_dir else None
    settings = {"name": NAME, "version": BUILD_VERSION, **dataclasses.asdict(config)}
    out_dir = os.fspath(out_dir)
    meta_path = fileio.join(out_dir, "youcook2_mnc.json")
    if fileio.exists(out_dir) and not fileio.isdir(out_dir):
        raise FileExistsError(f"--out {out_dir} is a file, not a folder")
    if fileio.isfile(meta_path) and not force:
        try:
            old = fileio.read_json(meta_path)
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path} is not valid JSON ({e}); pass --force (force=True) to rebuild "
                             "into that folder, or use another --out") from e
        if old.get("settings") == settings:
            if progress:
                print(f"{out_dir}: up to date ({NAME}, same settings); pass --force (force=True) to rebuild")
            return old
        old_settings = old.get("settings") or {}
        diff = [f"{k}: {old_settings.get(k)!r} in the existing build, {settings.get(k)!r} now"
                for k in sorted(set(old_settings) | set(settings)) if old_settings.get(k) != settings.get(k)]
        raise FileExistsError(f"{out_dir} holds a {NAME} build with other settings ({'; '.join(diff)}); "
                              "pass --force (force=True) to replace it, or use another --out")
    if fileio.isdir(out_dir) and fileio.listdir(out_dir) and not fileio.isfile(meta_path):
        raise FileExistsError(f"{out_dir} exists and is not a {NAME} build; not overwriting it "
                              "(use another --out, or empty that folder)")
    ann_path = fileio.join(data_root, "youcook2", "youcookii_annotations_trainval.json")
    db = fileio.read_json(ann_path)["database"]
    with fileio.open(fileio.join(data_root, "youcook2", "label_foodtype.csv")) as fh:
        recipe_names = dict(line.strip().split(",", 1) for line in fh if line.strip())
    chatter = load_chatter(data_root)

    videos = {}
    for split, subset in SPLITS.items():
        ids = sorted(v for v, e in db.items() if e["subset"] == subset)
        videos[split] = ids[:config.max_videos] if config.max_videos is not None else ids

    # 1. perturbed sentences -> MiniLM embeddings (the expensive part; cached).
    perturbed = {}
    for split in SPLITS:
        for vid in videos[split]:
            rng = _rng(config.seed, _vid_key(vid), 1)
            perturbed[vid] = [perturb_sentence(a["sentence"], rng, config.word_dropout)
                              for a in db[vid]["annotations"]]
    uniq = sorted({s for v in perturbed.values() for s in v})
    t_enc = time.time()
    emb = _embed_with_cache(uniq, cache_dir, progress)
    t_enc = time.time() - t_enc
    row = {s: i for i, s in enumerate(uniq)}

    # 2. fixed random map, background parts.
    g_rng = _rng(config.seed, 0x5EED)
    w_proj = (g_rng.standard_normal((emb.shape[1], FEATURE_DIM)) / math.sqrt(FEATURE_DIM)).astype(np.float32)
    g_bg = g_rng.standard_normal(emb.shape[1])
    recipe_vecs = {r: _rng(config.seed, 0xBC, int(r)).standard_normal(emb.shape[1]) for r in recipe_names}

    tmp_dir = out_dir.rstrip("/") + ".partial"
    if fileio.exists(tmp_dir):
        fileio.rmtree(tmp_dir)
    fileio.makedirs(tmp_dir)
    stats = {}
    for split in SPLITS:
        writer = FeatureStoreWriter(tmp_dir, split, videos_per_shard=config.videos_per_shard,
                                    source=f"{NAME} built from {ann_path}", metadata={"settings": settings})
        gt_lines = []
        n_align = n_irr = 0
        shifts = []
        it = videos[split]
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc=f"{NAME} {split}", unit="video")
        for vid in it:
            entry = db[vid]
            rec, info = make_video(vid, entry, emb[[row[s] for s in perturbed[vid]]], w_proj, g_bg,
                                   recipe_vecs.get(entry["recipe_type"], np.zeros(emb.shape[1])), chatter, config)
            writer.add(rec)
            n_align += int(rec.gt_alignable.sum())
            n_irr += int((rec.gt_alignable == 0).sum())
            shifts.extend(info["shifts"])
            for i in range(rec.num_captions):
                gt_lines.append(json.dumps({
                    "video_id": vid, "caption": i, "start": float(rec.starts[i]), "end": float(rec.ends[i]),
                    "text": rec.texts[i], "alignable": int(rec.gt_alignable[i]),
                    "gt_start": float(rec.gt_start[i]), "gt_end": float(rec.gt_end[i]),
                    "gt_text": rec.gt_text[i], "step": int(info["step_of_caption"][i])}))
        index = writer.close()
        with fileio.open(fileio.join(tmp_dir, f"{split}.ground_truth.jsonl"), "w") as fh:
            fh.write("\n".join(gt_lines) + "\n")
        sh = np.abs(np.asarray(shifts)) if shifts else np.zeros(1)
        stats[split] = {"videos": index["num_videos"], "seconds": index["num_frames"],
                        "captions": index["num_captions"], "alignable_captions": n_align,
                        "irrelevant_captions": n_irr,
                        "irrelevant_share": round(n_irr / max(1, n_align + n_irr), 4),
                        "mean_abs_shift_s": round(float(sh.mean()), 3),
                        "bytes": sum(s["bytes"] for s in index["shards"])}
    meta = {"name": NAME, "settings": settings, "splits": stats, "unique_perturbed_sentences": len(uniq),
            "encode_seconds": round(t_enc, 1), "build_seconds": round(time.time() - t0, 1),
            "data_root": fileio.abspath(data_root)}
    fileio.atomic_write_json(fileio.join(tmp_dir, "youcook2_mnc.json"), meta, indent=1)
    if fileio.exists(out_dir):
        if fileio.listdir(out_dir) and not fileio.isfile(meta_path):
            raise FileExistsError(f"{out_dir} exists and is not a {NAME} build; not overwriting it "
                                  f"(the new build is in {tmp_dir})")
        fileio.rmtree(out_dir)
    fileio.move_tree(tmp_dir, out_dir)
    return meta


def make_video(video_id: str, entry: dict, step_emb: np.ndarray, w_proj: np.ndarray, g_bg: np.ndarray,
               recipe_vec: np.ndarray, chatter: list, config: MNCConfig) -> tuple[VideoRecord, dict]:
    """One video: features from step embeddings ``step_emb [n_steps, 384]``, noisy narration, ground truth."""
    anns = entry["annotations"]
    t = int(math.ceil(entry["duration"]))
    frng = _rng(config.seed, _vid_key(video_id), 3)
    bg = g_bg + 0.7 * recipe_vec + 0.3 * frng.standard_normal(g_bg.shape)
    bg = bg / np.linalg.norm(bg)
    sig = np.tile(bg.astype(np.float32), (t, 1))  # [T, 384]
    for k, a in enumerate(anns):
        s, e = int(a["segment"][0]), int(a["segment"][1])
        sig[max(0, s):min(t, max(e, s + 1))] = step_emb[k]
    x = _smooth(sig @ w_proj, config.smoothing_seconds)  # [T, 512]
    x = x + frng.standard_normal(x.shape).astype(np.float32) * (config.feature_noise / math.sqrt(FEATURE_DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    feats = x.astype(np.float16)

    nrng = _rng(config.seed, _vid_key(video_id), 2)
    caps = []  # (start, end, text, gt_start, gt_end, alignable, gt_text, step)
    shifts = []
    for k, a in enumerate(anns):
        s, e = float(a["segment"][0]), float(a["segment"][1])
        d = float(np.clip(nrng.normal(0.0, config.shift_std), -config.max_shift, config.max_shift)) \
            if config.shift_std > 0 else 0.0
        shifts.append(d)
        cs = min(max(s + d, 0.0), t - 1.0)
        ce = min(max(e + d, cs + 1.0), float(t))
        caps.append((cs, ce, add_fillers(a["sentence"], nrng, config.filler_prob), s, e, 1, a["sentence"], k))
    f = config.irrelevant_fraction
    m = int(round(len(anns) * f / (1.0 - f)))
    for _ in range(m):
        text, dur = chatter[int(nrng.integers(0, len(chatter)))]
        dur = float(np.clip(dur, 1.0, 8.0))
        cs = float(nrng.uniform(0.0, max(0.0, t - dur)))
        caps.append((cs, min(cs + dur, float(t)), text, -1.0, -1.0, 0, "", -1))
    caps.sort(key=lambda c: (c[0], c[1]))
    rec = VideoRecord(
        video_id=video_id, features=feats,
        starts=np.asarray([c[0] for c in caps], np.float32), ends=np.asarray([c[1] for c in caps], np.float32),
        tokens=tokenize_captions([c[2] for c in caps]), texts=[c[2] for c in caps],
        gt_start=np.asarray([c[3] for c in caps], np.float32), gt_end=np.asarray([c[4] for c in caps], np.float32),
        gt_alignable=np.asarray([c[5] for c in caps], np.int64), gt_text=[c[6] for c in caps])
    return rec, {"shifts": shifts, "step_of_caption": [c[7] for c in caps]}
