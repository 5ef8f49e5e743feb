"""Evaluate a checkpoint on the downstream protocols of the reference (spec §5).

A run is always: load the task's data (:mod:`norton_jax.evaluate.loaders`, or the embedded
``youcook2-mnc`` feature store) -> lay the inputs out as the reference's ``DSAligner``
(spec §3.2, §5.0) -> embed them with the jitted encoders of the model in eval mode ->
build the similarity matrix -> score it with :mod:`norton_jax.evaluate.metrics`.

=========================  ==================================================  ========
task                       scores                                              spec
=========================  ==================================================  ========
``youcook2_clip``          R@1/5/10, MR of ``pooled_text @ pooled_video^T``    5.1
``youcook2_paragraph``     Cap. Avg. / DTW / OTAM R@1/5/10 (background off)    5.2, 5.4
``youcook2_paragraph_bg``  Cap. Avg. / DTW / OTAM R@1/5/10 (16 s windows)      5.3, 5.4
``msrvtt``                 R@1/5/10, MR (1k-A)                                 5.5
``msrvtt_qa``              multiple-choice accuracy (first 16 s)               5.6
``coin``                   zero-shot frame accuracy                            5.7
``htm_align``              alignment recall, ROC-AUC                           5.8
=========================  ==================================================  ========

Library use::

    from norton_jax.evaluate.run import evaluate_checkpoint
    result = evaluate_checkpoint("workdir/", "youcook2_paragraph", "data/build/youcook2-mnc")
    result["metrics"]["dtw"]["R1"]

Command line: ``python -m norton_jax.evaluate --help`` (see ``docs/evaluation.md``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from norton_jax.evaluate import loaders as L
from norton_jax.evaluate import metrics as M
from norton_jax.models.config import ModelConfig, load_config_file
from norton_jax.models.dual_encoder import DualEncoder, init_model

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

TASKS = (
    "youcook2_clip",
    "youcook2_paragraph",
    "youcook2_paragraph_bg",
    "msrvtt",
    "msrvtt_qa",
    "coin",
    "htm_align",
)
YOUCOOK_TASKS = ("youcook2_clip", "youcook2_paragraph", "youcook2_paragraph_bg")
STORE_TASKS = (*YOUCOOK_TASKS, "htm_align")  # tasks that run on the youcook2-mnc store
METHOD_NAMES = {"cap_avg": "Cap. Avg.", "dtw": "DTW", "otam": "OTAM"}

CLS_ID, SEP_ID, PAD_ID = 101, 102, 0


# ---------------------------------------------------------------------------------------
# Input layout (spec §3.2, §5.0)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """``DSAligner`` geometry: ``max_video_len`` frames, ``max_len - max_video_len`` text slots."""

    max_video_len: int
    max_len: int

    @property
    def text_len(self) -> int:  # Lc
        return self.max_len - self.max_video_len


RETRIEVAL_LAYOUT = Layout(32, 96)  # YouCook, MSR-VTT retrieval, COIN, HTM-Align (Lc 64, <= 61 words)
QA_LAYOUT = Layout(16, 96)  # MSR-VTT multiple choice (Lc 80, <= 77 words)


def tokenize_texts(texts: Sequence[object]) -> list[np.ndarray]:
    """bert-base-uncased WordPiece ids of each text, no special tokens, not truncated.

    ``DSAligner`` tokenises the whole sentence (no 96-character / 32-token cut of the
    pretraining store) and truncates to the layout when the sequence is built.
    Non-strings give no tokens.
    """
    from data_pipeline.tokenization import get_tokenizer  # noqa: PLC0415

    tok = get_tokenizer()
    clean = [t if isinstance(t, str) else "" for t in texts]
    if not clean:
        return []
    return [np.asarray(e.ids, np.int32) for e in tok.encode_batch(clean, add_special_tokens=False)]


def text_inputs(texts: Sequence[object], layout: Layout = RETRIEVAL_LAYOUT) -> tuple[np.ndarray, np.ndarray]:
    """``caps [N, Lc] int32 = [CLS] [SEP] w.. [SEP] [PAD]..``, ``cmasks [N, Lc] bool`` (spec §3.2).

    Words are cut to ``Lc - 3`` (61 for the retrieval layout, 77 for QA).
    """
    from data_pipeline.tokenization import build_text_seq  # noqa: PLC0415

    rows = [build_text_seq(t, layout.max_len, layout.max_video_len) for t in tokenize_texts(texts)]
    if not rows:
        lc = layout.text_len
        return np.zeros((0, lc), np.int32), np.zeros((0, lc), bool)
    caps, cmasks = zip(*rows)
    return np.stack(caps), np.stack(cmasks)


def video_inputs(
    segments: Sequence[np.ndarray], max_video_len: int, *, mask_cls: bool = False, feature_dim: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Video side of ``DSAligner`` (spec §3.2): each segment's first ``max_video_len`` rows.

    Returns ``caps [N, 4]`` (``[CLS][SEP][PAD][SEP]``; the video encoder reads ``[:, :2]``),
    ``cmasks [N, 4]`` (``[1,1,0,1]``, or ``[0,1,0,1]`` with ``mask_cls``: the dummy captions
    of COIN and YouCook-with-background that mask [CLS] out of the attention, §3.3 step 5),
    ``vfeats [N, max_video_len, D] float32`` (zeros after the real frames) and
    ``vmasks [N, max_video_len] bool``.
    """
    n = len(segments)
    dims = {int(np.shape(s)[-1]) for s in segments if np.ndim(s) == 2}
    if any(np.ndim(s) != 2 for s in segments) or len(dims) > 1:
        raise ValueError(f"video segments must all be [t, D] with one D; got dims {sorted(dims)}")
    dim = dims.pop() if dims else (feature_dim or 512)
    if feature_dim is not None and dim != feature_dim:
        raise ValueError(f"video features have {dim} dims, the model expects {feature_dim}")
    vfeats = np.zeros((n, max_video_len, dim), np.float32)
    vmasks = np.zeros((n, max_video_len), bool)
    for i, seg in enumerate(segments):
        seg = np.asarray(seg[:max_video_len], np.float32)
        vfeats[i, : len(seg)] = seg
        vmasks[i, : len(seg)] = True
    caps = np.tile(np.asarray([[CLS_ID, SEP_ID, PAD_ID, SEP_ID]], np.int32), (n, 1))
    cmasks = np.tile(np.asarray([[not mask_cls, True, False, True]], bool), (n, 1))
    return caps, cmasks, vfeats, vmasks


# ---------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------


def _model_config_arg(config: Any) -> ModelConfig | None:
    """``--config`` value -> ModelConfig: a config file (``get_config().model``), a ModelConfig,
    a ConfigDict / mapping (either the model fields or a full config with ``model``)."""
    if config is None:
        return None
    if isinstance(config, (str, os.PathLike)):
        return ModelConfig.from_any(load_config_file(os.fspath(config)).model)
    if isinstance(config, ModelConfig):
        return config
    if isinstance(config, Mapping) or hasattr(config, "to_dict"):
        values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        if "model" in values:
            values = values["model"]
            values = values.to_dict() if hasattr(values, "to_dict") else dict(values)
        return ModelConfig.from_any(values)
    raise TypeError(f"cannot read a model config from {type(config).__name__}")


@dataclass(frozen=True)
class CheckpointRef:
    """Where the weights come from: a reference/exported file, or an orbax root and step."""

    kind: str  # "file" | "orbax"
    path: str  # the file, or the orbax root (folder of <step>/ dirs)
    step: int | None  # orbax step (None = latest)


def resolve_checkpoint(path: PathLike, step: int | None = None) -> CheckpointRef:
    """Accepts a training workdir (``W/checkpoints/<step>``), its ``checkpoints/`` folder, one
    step folder, or a ``.pt`` / ``.safetensors`` file."""
    p = Path(path)
    if p.is_file():
        if p.suffix not in (".pt", ".safetensors", ".pth"):
            raise ValueError(f"{p}: checkpoint files must be .pt or .safetensors")
        return CheckpointRef("file", str(p), None)
    if not p.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {p}")

    def has_steps(d: Path) -> bool:
        return any(c.is_dir() and c.name.isdigit() for c in d.iterdir())

    if (p / "checkpoints").is_dir() and has_steps(p / "checkpoints"):
        return CheckpointRef("orbax", str(p / "checkpoints"), step)
    if p.name.isdigit() and ((p / "params").exists() or (p / "meta").exists()):
        if step is not None and step != int(p.name):
            raise ValueError(f"{p} is step {p.name}, but step={step} was asked for")
        return CheckpointRef("orbax", str(p.parent), int(p.name))
    if has_steps(p):
        return CheckpointRef("orbax", str(p), step)
    raise FileNotFoundError(
        f"{p}: no checkpoint here (expected a training workdir with checkpoints/<step>/, a "
        "checkpoints/ folder, one <step>/ folder, or a .pt/.safetensors file)"
    )


_GEOMETRY = (
    "hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_video_layers",
    "num_hidden_text_layers", "vocab_size", "max_position_embeddings", "type_vocab_size", "video_input_dim",
)


def load_model(
    checkpoint: PathLike | DualEncoder,
    config: Any = None,
    *,
    step: int | None = None,
) -> tuple[DualEncoder, dict[str, Any]]:
    """The model in eval mode (dropout off, spec §5.0) and a description of its source.

    ``config`` (config file path, ModelConfig or mapping) gives the geometry for files that
    do not carry it (a reference ``.pt``); for orbax checkpoints it must agree with the
    stored one.
    """
    if isinstance(checkpoint, DualEncoder):
        checkpoint.eval()
        return checkpoint, {"checkpoint": "<in-memory model>", "step": None}
    cfg = _model_config_arg(config)
    ref = resolve_checkpoint(checkpoint, step)
    if ref.kind == "file":
        from norton_jax.import_torch import build_pretrained  # noqa: PLC0415

        model = build_pretrained(ref.path, cfg)
        used_step = None
    else:
        from norton_jax.checkpoint import Checkpointer  # noqa: PLC0415

        with Checkpointer(ref.path, max_to_keep=None, enable_async=False) as ckpt:
            stored = ckpt.model_config(ref.step)
            if cfg is None:
                if stored is None:
                    raise ValueError(f"{ref.path}: the checkpoint stores no model config; pass --config")
                cfg = ModelConfig.from_any(stored)
            elif stored:
                diffs = [f"{k}: checkpoint {stored[k]} vs config {getattr(cfg, k)}"
                         for k in _GEOMETRY if k in stored and stored[k] != getattr(cfg, k)]
                if diffs:
                    raise ValueError(f"{ref.path}: --config geometry differs from the checkpoint's ({', '.join(diffs)})")
            model = init_model(cfg)
            restored = ckpt.restore(ref.step, params=nnx.state(model, nnx.Param))
        nnx.update(model, restored.params)
        used_step = restored.step
    model.eval()
    return model, {"checkpoint": os.path.abspath(os.fspath(checkpoint)), "step": used_step}


# ---------------------------------------------------------------------------------------
# Jitted, batched encoders
# ---------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(0,))
def _text_fn(graphdef, state, caps, cmasks):
    model = nnx.merge(graphdef, state)
    return model.encode_text(caps, cmasks, deterministic=True)["pooled_text"]  # [B, D]


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("frames",))
def _video_fn(graphdef, state, caps, cmasks, vfeats, vmasks, *, frames: bool):
    model = nnx.merge(graphdef, state)
    out = model.encode_video(caps, cmasks, vfeats, vmasks, deterministic=True)
    # pooled [B, D]; frame outputs [B, Lv, D] (positions 1..Lv, padded slots included)
    return out["pooled_video"], (out["video_outputs"][:, 1:-1] if frames else None)


def _bucket(n: int, batch_size: int) -> int:
    """Batch shape for ``n`` rows: the next power of two up to ``batch_size`` (few compiles)."""
    return min(batch_size, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


class Encoder:
    """The model's text and video encoders, jitted and batched (eval mode, spec §5.0).

    Inputs are numpy arrays of any length; they are processed in chunks of at most
    ``batch_size`` rows padded to a power of two (the pad rows repeat row 0), so a run
    compiles a handful of shapes.
    """

    def __init__(self, model: DualEncoder, batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        model.eval()
        self.config = model.config
        self.graphdef, self.state = nnx.split(model)
        self.batch_size = batch_size

    def _run(self, fn: Callable, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        n = len(arrays[0])
        if n == 0:
            raise ValueError("nothing to encode")
        size = _bucket(n, self.batch_size)
        outs: list[list[np.ndarray]] = []
        for start in range(0, n, size):
            chunk = [a[start : start + size] for a in arrays]
            real = len(chunk[0])
            if real < size:
                chunk = [np.concatenate([c, np.repeat(c[:1], size - real, axis=0)]) for c in chunk]
            res = fn(*[jnp.asarray(c) for c in chunk])
            res = res if isinstance(res, tuple) else (res,)
            outs.append([None if r is None else np.asarray(r)[:real] for r in res])
        return [None if parts[0] is None else np.concatenate(parts) for parts in zip(*outs)]

    def pooled_text(self, caps: np.ndarray, cmasks: np.ndarray) -> np.ndarray:
        """``pooled_text [N, D]`` of ``caps/cmasks [N, Lc]``."""
        fn = functools.partial(_text_fn, self.graphdef, self.state)
        return self._run(fn, [caps, cmasks])[0]

    def texts(self, texts: Sequence[object], layout: Layout = RETRIEVAL_LAYOUT) -> np.ndarray:
        """``pooled_text [N, D]`` of raw sentences laid out as ``DSAligner``."""
        return self.pooled_text(*text_inputs(texts, layout))

    def video(
        self, caps: np.ndarray, cmasks: np.ndarray, vfeats: np.ndarray, vmasks: np.ndarray, *, frames: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``pooled_video [N, D]`` and (with ``frames``) frame outputs ``[N, Lv, D]``."""
        fn = functools.partial(_video_fn, self.graphdef, self.state, frames=frames)
        pooled, frame_out = self._run(fn, [caps, cmasks, vfeats, vmasks])
        return pooled, frame_out

    def segments(
        self, segments: Sequence[np.ndarray], max_video_len: int = 32, *, mask_cls: bool = False, frames: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Encodes feature segments ``[t_i, D]`` (first ``max_video_len`` rows of each)."""
        return self.video(
            *video_inputs(segments, max_video_len, mask_cls=mask_cls, feature_dim=self.config.video_input_dim),
            frames=frames,
        )


# ---------------------------------------------------------------------------------------
# Data sources
# ---------------------------------------------------------------------------------------


@dataclass
class ClipSet:
    """YouCookII-style clips (one caption per annotated segment), from files or the store."""

    clips: list[L.YouCookClip]  # a video's clips contiguous, in temporal order
    load: Callable[[str], np.ndarray]  # video id -> features [T, D]
    missing: L.MissingFeatures
    source: str

    @property
    def video_ids(self) -> list[str]:
        return list(dict.fromkeys(c.video_id for c in self.clips))


@dataclass
class AlignSet:
    """HTM-Align-style videos (all narration lines, alignable flags, annotated times)."""

    videos: list[L.HTMAlignVideo]
    load: Callable[[str], np.ndarray]
    missing: L.MissingFeatures
    source: str


def is_feature_store(path: PathLike) -> bool:
    """True for a feature-store folder (``<split>.index.json``), e.g. a youcook2-mnc build."""
    p = Path(path)
    return p.is_dir() and (any(p.glob("*.index.json")) or (p / "youcook2_mnc.json").exists())


def read_store(store_dir: PathLike, split: str = "val", *, max_videos: int | None = None) -> list:
    """``VideoRecord``s of one split of a feature store, with ground truth checked present."""
    from data_pipeline.feature_store import FeatureStore  # noqa: PLC0415

    store = FeatureStore(os.fspath(store_dir), split)
    try:
        n = len(store) if max_videos is None else min(len(store), max_videos)
        records = [checked_store_record(store, i) for i in range(n)]
    finally:
        store.close()
    return records


def checked_store_record(store, i: int):
    """Record ``i`` of an open ``FeatureStore``, its features checked finite (the error names
    the shard file, the video and the first bad frame)."""
    rec = store[i]
    L.check_finite_features(np.asarray(rec.features), _shard_path(store, i), rec.video_id)
    return rec


def _shard_path(store, i: int) -> str:
    """The shard file holding record ``i`` (the store folder if the store hides it)."""
    try:
        return store.paths[store._entries[i][0]]  # noqa: SLF001 - for the error message only
    except (AttributeError, IndexError, TypeError):
        return os.path.join(os.fspath(store.store_dir), f"{store.split}.index.json")


def _require_gt(records: Sequence, store_dir: PathLike, split: str) -> None:
    absent = [r.video_id for r in records if r.gt_start is None or r.gt_alignable is None]
    if absent:
        raise L.EvalDataError(
            store_dir,
            f"split {split!r}: {len(absent)} of {len(records)} videos have no ground-truth fields "
            f"(gt_start, gt_end, gt_alignable), e.g. {absent[:5]}; the youcook2 and htm_align tasks "
            "on a store need a youcook2-mnc build (python -m data_pipeline.build youcook2-mnc)",
        )


def _store_loader(records: Sequence) -> Callable[[str], np.ndarray]:
    by_id = {r.video_id: r for r in records}
    return lambda vid: np.asarray(by_id[vid].features, np.float32)


def store_clips(records: Sequence) -> list[L.YouCookClip]:
    """youcook2-mnc ``val`` clips: the true segment of every alignable caption (spec §5.1 analogue).

    Clip = ``feat[int(gt_start):int(gt_end)]`` (integer seconds as the YouCookII annotations);
    caption = the clean step sentence (``gt_text``; the caption text if the store has none).
    A video's clips are in the temporal order of the true segments.
    """
    clips = []
    for rec in records:
        flags = np.asarray(rec.gt_alignable).astype(bool)
        idx = [int(i) for i in np.flatnonzero(flags)]
        idx.sort(key=lambda i: (float(rec.gt_start[i]), float(rec.gt_end[i]), i))
        for i in idx:
            text = rec.gt_text[i] if rec.gt_text is not None and rec.gt_text[i] else (rec.texts[i] if rec.texts else "")
            start = max(0, int(rec.gt_start[i]))
            end = min(rec.num_frames, max(start, int(rec.gt_end[i])))
            clips.append(L.YouCookClip(rec.video_id, i, start, end, text))
    return clips


def store_htm_align(records: Sequence) -> list[L.HTMAlignVideo]:
    """youcook2-mnc as HTM-Align (spec §5.8): every narration line (the noisy caption text) in
    store order; alignable = ``gt_alignable``; times = the true segment for alignable lines and
    the original (noisy) times for the others, as ``htm_align.json``."""
    videos = []
    for rec in records:
        flags = np.asarray(rec.gt_alignable).astype(bool)
        starts = np.where(flags, rec.gt_start, rec.starts).astype(np.float64)
        ends = np.where(flags, rec.gt_end, rec.ends).astype(np.float64)
        texts = list(rec.texts) if rec.texts is not None else [""] * len(flags)
        videos.append(L.HTMAlignVideo(rec.video_id, flags, starts, ends, texts))
    return sorted(videos, key=lambda v: v.video_id)


def _no_missing(n: int) -> L.MissingFeatures:
    return L.MissingFeatures(None, [], n, 0)


def _first(data: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (data / name).exists():
            return data / name
    return None


def _features_dir(data: Path, features: PathLike | None, names: Sequence[str], *, allow_data_dir: bool = False) -> L.FeatureDir:
    if features is not None:
        return L.FeatureDir(features)
    found = _first(data, names)
    if found is not None and found.is_dir():
        return L.FeatureDir(found)
    if allow_data_dir and any(data.glob("*.npy")):
        return L.FeatureDir(data)
    raise L.EvalDataError(
        data, f"no feature directory: expected one of {list(names)} under it (or pass --features DIR)"
    )


def _main_file(data: Path, names: Sequence[str], what: str) -> tuple[Path, Path]:
    """(data folder, the task's file): ``data`` may also be the file itself."""
    if data.is_file():
        return data.parent, data
    if not data.is_dir():
        raise L.EvalDataError(data, "data folder does not exist")
    found = _first(data, names)
    if found is None:
        raise L.EvalDataError(data, f"no {what} file: expected one of {list(names)}")
    return data, found


YOUCOOK_FEATURES = ("youcook_validation_feature_fps30_512", "features")
MSRVTT_FEATURES = ("msrvtt_feature_fps30_512", "features")
COIN_FEATURES = ("coin_feature_fps30_512", "features")
HTM_FEATURES = ("features", "how2-align")


def youcook_clip_set(data: PathLike, features: PathLike | None = None, *, split: str = "val",
                     max_videos: int | None = None) -> ClipSet:
    """YouCookII clips from the official files in ``data`` or from a youcook2-mnc store."""
    data = Path(data)
    if is_feature_store(data):
        records = read_store(data, split, max_videos=max_videos)
        _require_gt(records, data, split)
        return ClipSet(store_clips(records), _store_loader(records), _no_missing(len(records)), "youcook2-mnc")
    folder = data.parent if data.is_file() else data
    if not folder.is_dir():
        raise L.EvalDataError(data, "data folder does not exist")
    annotations = _first(folder, ("youcookii_annotations_trainval.json",))
    clips = data if data.is_file() else _first(folder, ("youcook_val.pkl", "validation_youcook.csv"))
    if annotations is None and clips is None:
        raise L.EvalDataError(
            folder, "no YouCookII files: expected youcookii_annotations_trainval.json and/or "
            "youcook_val.pkl / validation_youcook.csv"
        )
    fdir = _features_dir(folder, features, YOUCOOK_FEATURES)
    yc = L.load_youcook(annotations, clips, fdir)
    if max_videos is not None:
        keep = set(yc.video_ids[:max_videos])
        yc.clips = [c for c in yc.clips if c.video_id in keep]
    return ClipSet(yc.clips, fdir.load, yc.missing, f"official ({yc.source})")


def htm_align_set(data: PathLike, features: PathLike | None = None, *, split: str = "val",
                  max_videos: int | None = None) -> AlignSet:
    """HTM-Align videos from ``htm_align.json`` + features, or from a youcook2-mnc store."""
    data = Path(data)
    if is_feature_store(data):
        records = read_store(data, split, max_videos=max_videos)
        _require_gt(records, data, split)
        return AlignSet(store_htm_align(records), _store_loader(records), _no_missing(len(records)), "youcook2-mnc")
    folder, path = _main_file(data, ("htm_align.json",), "HTM-Align")
    fdir = _features_dir(folder, features, HTM_FEATURES, allow_data_dir=True)
    ha = L.load_htm_align(path, fdir)
    videos = ha.videos[:max_videos] if max_videos is not None else ha.videos
    return AlignSet(videos, fdir.load, ha.missing, "official")


# ---------------------------------------------------------------------------------------
# Task scoring
# ---------------------------------------------------------------------------------------


def _missing_dict(missing: L.MissingFeatures) -> dict[str, Any]:
    return {
        "count": missing.count,
        "video_ids": missing.video_ids,
        "total_videos": missing.total_videos,
        "dropped_items": missing.dropped_items,
    }


def _check_nonempty(n: int, what: str, missing: L.MissingFeatures) -> None:
    if n == 0:
        detail = f"; {missing.summary()}" if missing else ""
        raise L.EvalDataError(missing.feature_dir or "<data>", f"no {what} left to evaluate{detail}")


def clip_similarity_matrix(encoder: Encoder, clip_set: ClipSet) -> np.ndarray:
    """``sim [captions, clips]`` = raw dot products of pooled embeddings (spec §5.1, T20).

    Clip = ``feat[start:end]``, first 32 s (``DSAligner``); caption <= 61 words.
    """
    cache: dict[str, np.ndarray] = {}

    def feats(vid: str) -> np.ndarray:
        if vid not in cache:
            cache.clear()  # clips of a video are contiguous: keep one video in memory
            cache[vid] = clip_set.load(vid)
        return cache[vid]

    segments = [np.asarray(feats(c.video_id)[c.start : c.end][: RETRIEVAL_LAYOUT.max_video_len], np.float32)
                for c in clip_set.clips]
    text = encoder.texts([c.text for c in clip_set.clips])
    video, _ = encoder.segments(segments, RETRIEVAL_LAYOUT.max_video_len)
    return text @ video.T


def eval_youcook_clip(encoder: Encoder, clip_set: ClipSet) -> dict[str, Any]:
    """Spec §5.1: R@1/5/10 and MR of every caption against every clip."""
    _check_nonempty(len(clip_set.clips), "YouCookII clips", clip_set.missing)
    sim = clip_similarity_matrix(encoder, clip_set)
    return {
        "metrics": M.retrieval_metrics(sim),
        "counts": {"videos": len(clip_set.video_ids), "clips": len(clip_set.clips)},
    }


def eval_youcook_paragraph(encoder: Encoder, clip_set: ClipSet, *, otam_variant: str = "reference") -> dict[str, Any]:
    """Spec §5.2: video-paragraph retrieval with the background removed (Cap. Avg., DTW, OTAM)."""
    _check_nonempty(len(clip_set.clips), "YouCookII clips", clip_set.missing)
    sim = clip_similarity_matrix(encoder, clip_set)
    ids = [c.video_id for c in clip_set.clips]
    metrics = {
        method: M.paragraph_retrieval(sim, ids, ids, method=method, background=False, otam_variant=otam_variant)
        for method in M.PARAGRAPH_METHODS
    }
    return {"metrics": metrics, "counts": {"videos": len(clip_set.video_ids), "clips": len(clip_set.clips)}}


def eval_youcook_paragraph_bg(encoder: Encoder, clip_set: ClipSet, *, otam_variant: str = "reference") -> dict[str, Any]:
    """Spec §5.3 (trap T23): whole videos in 16 s windows padded to 32 frames with [CLS]
    masked; captions = every annotated sentence of the video; Cap. Avg. / DTW / OTAM."""
    _check_nonempty(len(clip_set.clips), "YouCookII clips", clip_set.missing)
    videos = sorted(clip_set.video_ids)
    segments, window_ids = [], []
    for vid in videos:
        feat = clip_set.load(vid)
        for a, b in L.youcook_background_windows(int(feat.shape[0])):
            segments.append(np.asarray(feat[a:b], np.float32))
            window_ids.append(vid)
    by_video: dict[str, list[L.YouCookClip]] = {}
    for c in clip_set.clips:
        by_video.setdefault(c.video_id, []).append(c)
    captions = [c for vid in videos for c in by_video[vid]]
    text = encoder.texts([c.text for c in captions])
    video, _ = encoder.segments(segments, RETRIEVAL_LAYOUT.max_video_len, mask_cls=True)
    sim = text @ video.T  # [captions, windows]
    caption_ids = [c.video_id for c in captions]
    metrics = {
        method: M.paragraph_retrieval(sim, caption_ids, window_ids, method=method, background=True,
                                      otam_variant=otam_variant)
        for method in M.PARAGRAPH_METHODS
    }
    return {
        "metrics": metrics,
        "counts": {"videos": len(videos), "captions": len(captions), "windows": len(segments)},
    }


def eval_msrvtt(encoder: Encoder, data: L.MSRVTTRetrieval) -> dict[str, Any]:
    """Spec §5.5: text-to-video retrieval, caption i <-> video i, first 32 s."""
    _check_nonempty(len(data.video_ids), "MSR-VTT pairs", data.missing)
    segments = [np.asarray(data.features.load(v)[: RETRIEVAL_LAYOUT.max_video_len], np.float32) for v in data.video_ids]
    text = encoder.texts(data.sentences)
    video, _ = encoder.segments(segments, RETRIEVAL_LAYOUT.max_video_len)
    return {"metrics": M.retrieval_metrics(text @ video.T), "counts": {"pairs": len(data.video_ids)}}


def eval_msrvtt_qa(encoder: Encoder, data: L.MSRVTTMultipleChoice) -> dict[str, Any]:
    """Spec §5.6: ``argmax_k <pooled_video, pooled_text(option k)>``; video = first 16 s,
    options <= 77 words (max_video_len 16, max_len 96)."""
    _check_nonempty(len(data.video_ids), "MSR-VTT questions", data.missing)
    segments = [np.asarray(data.features.load(v)[: QA_LAYOUT.max_video_len], np.float32) for v in data.video_ids]
    video, _ = encoder.segments(segments, QA_LAYOUT.max_video_len)  # [Q, D]
    k = len(data.options[0])
    text = encoder.texts([o for opts in data.options for o in opts], QA_LAYOUT).reshape(len(data.options), k, -1)
    scores = np.einsum("qd,qkd->qk", video, text)  # [Q, options]
    return {"metrics": M.multiple_choice_accuracy(scores, data.answers), "counts": {"questions": len(data.video_ids)}}


def eval_coin(encoder: Encoder, data: L.COINData, *, stride: int = 16, size: int = 32) -> dict[str, Any]:
    """Spec §5.7, zero-shot (trap T24): label embeddings = pooled text of the label names;
    ``lbd`` = largest off-diagonal label-label dot product; frame scores = frame outputs of
    16 s-stride windows of 32 frames ([CLS] masked) @ labels, averaged over windows;
    prediction ``argmax + 1`` where the best score > ``lbd``, else background."""
    _check_nonempty(len(data.videos), "COIN videos", data.missing)
    labels = encoder.texts(data.label_names)  # [L, D]
    threshold = M.coin_zero_shot_threshold(labels)
    preds, targets = [], []
    for video in data.videos:
        feat = data.features.load(video.video_id)
        t = int(feat.shape[0])
        windows = M.coin_windows(t, stride=stride, size=size)
        _, frames = encoder.segments([np.asarray(feat[a:b], np.float32) for a, b in windows], size,
                                     mask_cls=True, frames=True)  # [W, 32, D]
        scores = M.merge_window_scores(t, list(frames @ labels.T), stride=stride, size=size)  # [T, L]
        preds.append(M.coin_zero_shot_predictions(scores, threshold))
        targets.append(M.coin_video_targets(t, video.segments))
    metrics = M.frame_accuracy(preds, targets)
    metrics["threshold"] = threshold
    return {"metrics": metrics, "counts": {"videos": len(data.videos), "labels": len(data.label_names)}}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def htm_align_similarity(encoder: Encoder, feat: np.ndarray, texts: Sequence[str], starts, ends, aligned,
                         *, seq_len: int = 32, active: str = "reference") -> np.ndarray:
    """``S [captions, T]`` of one video by the HTM-Align protocol (spec §5.8): cosine of the
    frame outputs (all 32 slots, ``DSAligner``, [CLS] attended) with the captions' pooled text,
    averaged over the 32 s / 8 s windows of the active captions (``active``: see
    :func:`~norton_jax.evaluate.metrics.htm_align_windows`)."""
    t = int(feat.shape[0])
    windows = M.htm_align_windows(t, starts, ends, aligned, seq_len=seq_len, active=active)
    if not windows:
        return np.full((len(texts), t), M.UNCOVERED)
    text = _unit(encoder.texts(texts))  # [C, D]
    _, frames = encoder.segments([np.asarray(feat[w.start : w.stop], np.float32) for w in windows], seq_len,
                                 frames=True)  # [W, 32, D]
    frames = _unit(frames)
    blocks = [text[w.captions] @ frames[i].T for i, w in enumerate(windows)]
    return M.htm_align_stitch(t, len(texts), windows, blocks)


def eval_htm_align(encoder: Encoder, align_set: AlignSet) -> dict[str, Any]:
    """Spec §5.8: recall of ``argmax_t S[c, t]`` inside the annotated segment, ROC-AUC of the
    alignable flags; on youcook2-mnc also the recall of the original (noisy) timestamps.

    ``recall``/``auc`` follow the reference's window choice; ``dense_recall``/``dense_auc``
    score every caption on every second (``active="dense"``), which does not depend on
    where the unalignable captions are.
    """
    _check_nonempty(len(align_set.videos), "HTM-Align videos", align_set.missing)
    modes = (("reference", ""), ("dense", "dense_"))
    sims: dict[str, list[np.ndarray]] = {active: [] for active, _ in modes}
    for v in align_set.videos:
        feat = align_set.load(v.video_id)  # read once, scored by both window choices
        for active, _ in modes:
            sims[active].append(htm_align_similarity(encoder, feat, v.texts, v.starts, v.ends, v.aligned,
                                                     active=active))
    starts = [v.starts for v in align_set.videos]
    ends = [v.ends for v in align_set.videos]
    flags = [v.aligned for v in align_set.videos]
    metrics: dict[str, Any] = {}
    for active, prefix in modes:
        found = M.htm_align_metrics(sims[active], starts, ends, flags)
        if prefix:
            found = {f"{prefix}{k}": found[k] for k in ("recall", "auc")}
        metrics.update(found)
    return {"metrics": metrics, "counts": {"videos": len(align_set.videos), "captions": metrics["num_captions"]}}


def _store_timestamp_baseline(records: Sequence) -> float:
    """Recall of the original caption times (midpoint) against the truth, youcook2-mnc."""
    from norton_jax.align import alignment_recall  # noqa: PLC0415

    points, gs, ge, flags = [], [], [], []
    for r in records:
        points.append((np.asarray(r.starts) + np.asarray(r.ends)) / 2)
        gs.append(r.gt_start)
        ge.append(r.gt_end)
        flags.append(r.gt_alignable)
    return alignment_recall(points, gs, ge, flags)["recall"]


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def evaluate_checkpoint(
    checkpoint: PathLike | DualEncoder,
    task: str,
    data: PathLike,
    *,
    config: Any = None,
    features: PathLike | None = None,
    split: str = "val",
    step: int | None = None,
    batch_size: int = 64,
    max_videos: int | None = None,
    coin_split: str = "testing",
    otam_variant: str = "reference",
    out: PathLike | None = None,
) -> dict[str, Any]:
    """Evaluates ``checkpoint`` on one ``task`` (see :data:`TASKS`).

    Args:
      checkpoint: training workdir, its ``checkpoints/`` folder, one step folder, a
        ``.pt``/``.safetensors`` file, or a :class:`DualEncoder` already loaded.
      task: one of :data:`TASKS`.
      data: the folder with the task's official files (``docs/evaluation.md``), the task's
        main file itself, or a youcook2-mnc feature store (youcook2 tasks and ``htm_align``).
      config: model geometry (config file path / ModelConfig / mapping) for checkpoints
        that do not store it.
      features: feature folder (``<video_id>.npy``) overriding the default place in ``data``.
      split: store split for youcook2-mnc (default ``val``).
      step: orbax step (default: the latest; a step folder picks its own).
      max_videos: evaluate only the first N videos (quick checks; not the protocol).
      coin_split, otam_variant: ``load_coin`` split; ``paragraph_retrieval`` OTAM variant.
      out: write the result as JSON there.

    Returns:
      ``{"task", "data", "source", "split", "checkpoint", "step", "metrics", "counts",
      "missing", "seconds"}``; ``metrics`` is the metric function's dict (per method
      ``{"cap_avg", "dtw", "otam"}`` of ``{"R1", "R5", "R10"}`` for the paragraph tasks).
      Recalls and accuracies are fractions in [0, 1].
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    t0 = time.perf_counter()
    data_path = Path(data)
    store = is_feature_store(data_path)
    if store and task not in STORE_TASKS:
        raise ValueError(f"{data}: a feature store supports the tasks {', '.join(STORE_TASKS)}, not {task!r}")
    if out is not None:
        check_writable(out, "out")
    model, info = load_model(checkpoint, config, step=step)
    encoder = Encoder(model, batch_size=batch_size)
    extra: dict[str, Any] = {}
    if task in YOUCOOK_TASKS:
        clip_set = youcook_clip_set(data_path, features, split=split, max_videos=max_videos)
        source, missing = clip_set.source, clip_set.missing
        if task == "youcook2_clip":
            res = eval_youcook_clip(encoder, clip_set)
        elif task == "youcook2_paragraph":
            res = eval_youcook_paragraph(encoder, clip_set, otam_variant=otam_variant)
        else:
            res = eval_youcook_paragraph_bg(encoder, clip_set, otam_variant=otam_variant)
    elif task == "htm_align":
        align_set = htm_align_set(data_path, features, split=split, max_videos=max_videos)
        source, missing = align_set.source, align_set.missing
        res = eval_htm_align(encoder, align_set)
        if store:
            records = read_store(data_path, split, max_videos=max_videos)
            extra["timestamp_recall"] = _store_timestamp_baseline(records)
    elif task in ("msrvtt", "msrvtt_qa"):
        names = ("MSRVTT_JSFUSION_test.csv", "msrvtt_test.csv") if task == "msrvtt" else (
            "MSR_MC_test.csv", "msrvtt_mc_test.jsonl")
        folder, path = _main_file(data_path, names, "MSR-VTT")
        fdir = _features_dir(folder, features, MSRVTT_FEATURES)
        loaded = L.load_msrvtt(path, fdir) if task == "msrvtt" else L.load_msrvtt_mc(path, fdir)
        if max_videos is not None:
            loaded = _truncate(loaded, max_videos)
        source, missing = "official", loaded.missing
        res = eval_msrvtt(encoder, loaded) if task == "msrvtt" else eval_msrvtt_qa(encoder, loaded)
    else:  # coin
        folder, path = _main_file(data_path, ("COIN.json",), "COIN")
        fdir = _features_dir(folder, features, COIN_FEATURES)
        loaded = L.load_coin(path, fdir, split=coin_split)
        if max_videos is not None:
            loaded.videos = loaded.videos[:max_videos]
        source, missing = "official", loaded.missing
        res = eval_coin(encoder, loaded)
    res["metrics"].update(extra)
    result = {
        "task": task,
        "data": os.path.abspath(os.fspath(data)),
        "source": source,
        "split": split if store else None,
        **info,
        "metrics": res["metrics"],
        "counts": res["counts"],
        "missing": _missing_dict(missing),
        "max_videos": max_videos,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if out is not None:
        write_json(result, out)
    return result


def _truncate(loaded, n: int):
    """First ``n`` items of an MSR-VTT dataclass (quick checks)."""
    fields = {f.name: getattr(loaded, f.name) for f in dataclasses.fields(loaded)}
    for name, value in fields.items():
        if isinstance(value, (list, np.ndarray)) and name not in ("features", "missing"):
            fields[name] = value[:n]
    return type(loaded)(**fields)


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def check_writable(path: PathLike, flag: str = "--out") -> Path:
    """Checks, before any work, that the file ``path`` can be written later.

    Creates its folder if needed, then writes and removes a probe file next to it; a
    problem raises :class:`norton_jax.cli.UserError` naming ``flag`` and the path, so a
    long evaluation does not end with its result lost.  Returns ``path`` as a Path.
    """
    from norton_jax.cli import UserError  # noqa: PLC0415

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file name")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".{path.name}.{os.getpid()}.probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or str(err)
        raise UserError(f"{flag} {path}: cannot write in {folder} ({reason})") from err
    return path


def write_json(obj: Any, path: PathLike) -> None:
    """Writes ``obj`` atomically (temporary file + rename); NaN becomes null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(clean(obj), indent=1, default=_json_default) + "\n")
    os.replace(tmp, path)


def _pct(x: Any) -> str:
    return "   -" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:5.1f}"


def format_table(result: Mapping[str, Any]) -> str:
    """A plain-text table of one result (recalls/accuracies in percent)."""
    task, m = result["task"], result["metrics"]
    counts = ", ".join(f"{v} {k}" for k, v in result["counts"].items())
    where = result["source"] + (f" {result['split']}" if result.get("split") else "")
    step = "" if result.get("step") is None else f" (step {result['step']})"
    lines = [f"{task} on {where}: {counts}; checkpoint {result['checkpoint']}{step}"]
    if result["missing"]["count"]:
        miss = result["missing"]
        lines.append(f"  missing features: {miss['count']} of {miss['total_videos']} videos "
                     f"({miss['dropped_items']} items dropped)")
    if task in ("youcook2_paragraph", "youcook2_paragraph_bg"):
        lines.append(f"  {'method':<10} {'R@1':>5} {'R@5':>5} {'R@10':>5}")
        for method in M.PARAGRAPH_METHODS:
            r = m[method]
            lines.append(f"  {METHOD_NAMES[method]:<10} {_pct(r['R1'])} {_pct(r['R5'])} {_pct(r['R10'])}")
    elif task in ("youcook2_clip", "msrvtt"):
        lines.append(f"  {'R@1':>5} {'R@5':>5} {'R@10':>5} {'MR':>6}")
        lines.append(f"  {_pct(m['R1'])} {_pct(m['R5'])} {_pct(m['R10'])} {m['MR']:6.1f}")
    elif task == "msrvtt_qa":
        lines.append(f"  accuracy {_pct(m['acc'])}")
    elif task == "coin":
        lines.append(f"  frame accuracy {_pct(m['frame_acc'])} over {m['num_frames']} frames "
                     f"(zero-shot threshold {m['threshold']:.4f})")
    else:
        lines.append(f"  recall {_pct(m['recall'])}  ROC-AUC {_pct(m['auc'])}  "
                     f"({m['num_alignable']} alignable of {m['num_captions']} captions)")
        if "dense_recall" in m:
            lines.append(f"  dense windows (every caption on every second): recall {_pct(m['dense_recall'])}  "
                         f"ROC-AUC {_pct(m['dense_auc'])}")
        if "timestamp_recall" in m:
            lines.append(f"  original (noisy) timestamps: recall {_pct(m['timestamp_recall'])}")
    return "\n".join(lines)
