"""Retrieval-augmented hard-negative batching (VideoCLIP scheme, spec §4.5).

Before every epoch each host embeds its share of the training videos with the current
model, indexes the vectors with faiss IVF indices, and builds batches of a random seed
video plus its nearest neighbours, so that the in-batch negatives of both contrastive
losses are hard ones.

Config (``config.train.hard_negatives``, checked by :func:`check_config`):

* ``clips = "caption_span"`` (default, the reference's ``VariedLenAligner``): each video is
  embedded from ``K`` clips drawn fresh for the purpose: captions merged as in training
  (spec §4.2 steps 1-2), the video clip is the merged captions' span
  ``[floor(start), ceil(end))`` clamped to the video, cut to its first 16 s.
  ``"training"``: the clips of the epoch's training sampler (3-16 s around a caption time).
* ``index = "device"`` (default, the reference's one ``VideoVectorPool`` per GPU): the host's
  share is split into one contiguous part per local device, each part gets its own index and
  its own seeds, and the union of the lists is shuffled.  ``"host"``: one index per host.

The video vector is the mean over the clips of ``(pooled_video + pooled_text) / 2`` like
the reference.  Differences from the reference that remain, by design:

* the number of IVF lists is ``min(num_lists, n // 39)`` (faiss needs about 39 training
  points per list) and the candidate count ``min(num_candidates, n)``, so small corpora work;
* when IVF with one probe returns fewer neighbours than a batch needs (a small inverted
  list), the reference trains on a smaller batch; the jitted step has static shapes, so the
  batch is completed with random videos of the same index not yet in it (counted in the
  plan file as ``filled_videos``).  With HowTo100M's ~1.2M videos over 512 lists this does
  not happen.

The plan of each epoch is written to ``<workdir>/batches/epoch_<e>.json`` on every host
(``..._host<h>.json``) through :mod:`data_pipeline.fileio` (local, gs://, ram://) and read
back on resume, so a resumed run continues with the same batches although the model has
changed since the plan was made.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from data_pipeline import fileio
from data_pipeline.input_pipeline import host_video_order
from data_pipeline.sampling import CLIPS_PER_VIDEO, merge_captions
from data_pipeline.tokenization import CLS_ID, MAX_LEN, MAX_VIDEO_LEN, PAD_ID, SEP_ID
from norton_jax.cli import ConfigError

CLIP_MODES = ("caption_span", "training")
INDEX_SCOPES = ("device", "host")


def check_config(hn: Any) -> None:
    """Raises :class:`~norton_jax.cli.ConfigError` naming the bad ``train.hard_negatives`` field."""
    field = "train.hard_negatives"
    for name in ("num_lists", "num_candidates", "videos_per_call"):
        value = hn.get(name, 8 if name == "videos_per_call" else None)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{field}.{name} = {value!r}: expected an integer >= 1")
    for name, allowed in (("clips", CLIP_MODES), ("index", INDEX_SCOPES)):
        value = hn.get(name, allowed[0])
        if value not in allowed:
            raise ConfigError(f"{field}.{name} = {value!r}: expected one of {', '.join(map(repr, allowed))}")


def caption_span_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The Generator of the embedding clips of video ``position`` (independent of training's)."""
    return np.random.Generator(np.random.PCG64([int(seed), int(epoch), int(position), 16]))


def sample_caption_span_video(
    features: np.ndarray,  # [T, d]
    starts: np.ndarray,  # [n] seconds
    ends: np.ndarray,  # [n] seconds
    tokens: Sequence[np.ndarray],  # n id arrays
    rng: np.random.Generator,
    *,
    clips_per_video: int = CLIPS_PER_VIDEO,
    max_len: int = MAX_LEN,
    max_video_len: int = MAX_VIDEO_LEN,
) -> dict[str, np.ndarray]:
    """``K`` caption-span clips of one video, the reference's ``VariedLenAligner`` (spec §4.5).

    Captions are merged as in training (:func:`data_pipeline.sampling.merge_captions`);
    the clip is ``[max(min(floor(start[lo]), e), 0), e)`` with ``e = min(ceil(end[hi-1]), T)``,
    of which the first ``max_video_len`` seconds are kept.  Returns ``caps [K, Lc] int32``,
    ``cmasks [K, Lc] bool``, ``vfeats [K, max_video_len, d] float32``,
    ``vmasks [K, max_video_len] bool`` (``Lc = max_len - max_video_len``), laid out like
    :func:`data_pipeline.sampling.sample_video` (captions cut to ``Lc - 3`` tokens).
    """
    t, d = features.shape
    lc = max_len - max_video_len
    n_tokens = np.asarray([len(x) for x in tokens])
    caps = np.full((clips_per_video, lc), PAD_ID, np.int32)
    cmasks = np.zeros((clips_per_video, lc), bool)
    vfeats = np.zeros((clips_per_video, max_video_len, d), np.float32)
    vmasks = np.zeros((clips_per_video, max_video_len), bool)
    for k in range(clips_per_video):
        lo, hi = merge_captions(n_tokens, starts, ends, rng)
        e = min(math.ceil(float(ends[hi - 1])), t)
        s = max(min(math.floor(float(starts[lo])), e), 0)
        nf = min(max_video_len, e - s)
        vfeats[k, :nf] = features[s:s + nf]
        vmasks[k, :nf] = True
        ids = np.concatenate([tokens[i] for i in range(lo, hi)])[: lc - 3]
        caps[k, 0], caps[k, 1] = CLS_ID, SEP_ID
        caps[k, 2:2 + len(ids)] = ids
        caps[k, 2 + len(ids)] = SEP_ID
        cmasks[k, :len(ids) + 3] = True
    return {"caps": caps, "cmasks": cmasks, "vfeats": vfeats, "vmasks": vmasks}


def build_batches(
    vectors: np.ndarray,  # [n, d] float32
    videos_per_batch: int,
    *,
    rng: np.random.Generator,
    num_lists: int = 512,
    num_candidates: int = 192,
    examples_per_list: int = 48,
    stats: dict[str, int] | None = None,
) -> list[list[int]]:
    """Seed-plus-neighbours batches over row indices of ``vectors`` (one faiss index).

    ``floor(n / videos_per_batch)`` seeds are drawn without replacement; each seed's
    ``num_candidates`` nearest neighbours (L2, faiss ``IndexIVFFlat`` with
    ``min(num_lists, n // 39)`` lists trained on the first ``lists * examples_per_list``
    vectors; exact ``IndexFlatL2`` below two lists) form its candidate list
    ``[seed] + neighbours``, of which a uniform random subset of ``videos_per_batch`` is kept
    when there are more.  Shorter lists are completed with random other rows; their count is
    added to ``stats["filled_videos"]`` when ``stats`` is given.
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if n < videos_per_batch:
        raise ValueError(f"{n} videos cannot fill a batch of {videos_per_batch}")
    lists = min(num_lists, n // 39)
    if lists >= 2:
        quantizer = faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_L2)
        index.train(vectors[: lists * examples_per_list])
    else:  # too few videos for an inverted file: exact search
        index = faiss.IndexFlatL2(dim)
    index.add(vectors)
    k = min(num_candidates, n)
    seeds = rng.choice(n, size=n // videos_per_batch, replace=False)
    _, neighbours = index.search(vectors[seeds], k)  # [seeds, k], -1 where missing
    batches = []
    for seed, row in zip(seeds, neighbours):
        candidates = [int(seed)] + [int(j) for j in row if j >= 0 and j != seed]
        if len(candidates) > videos_per_batch:
            keep = rng.choice(len(candidates), size=videos_per_batch, replace=False)
            candidates = [candidates[i] for i in sorted(keep)]
        elif len(candidates) < videos_per_batch:
            rest = np.setdiff1d(np.arange(n), candidates)
            fill = rng.choice(rest, size=videos_per_batch - len(candidates), replace=False)
            candidates += [int(j) for j in fill]
            if stats is not None:
                stats["filled_videos"] = stats.get("filled_videos", 0) + len(fill)
        batches.append(candidates)
    return batches


def build_device_batches(
    vectors: np.ndarray,  # [n, d] float32
    videos_per_batch: int,
    num_indices: int,
    *,
    rng: np.random.Generator,
    stats: dict[str, int] | None = None,
    **index_kwargs: int,
) -> list[list[int]]:
    """:func:`build_batches` over ``num_indices`` contiguous parts of the rows, one index each.

    The reference's per-GPU vector pools (spec §4.5): neighbourhoods are found within each
    part only.  The lists of all parts are concatenated and shuffled; row indices refer to
    ``vectors``.
    """
    parts = np.array_split(np.arange(len(vectors)), num_indices)
    batches = []
    for part in parts:
        local = build_batches(vectors[part], videos_per_batch, rng=rng, stats=stats, **index_kwargs)
        batches += [[int(part[i]) for i in batch] for batch in local]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def embed_videos(
    model: Any,
    load_video: Callable[[int], dict[str, np.ndarray]],
    positions: np.ndarray,  # [n] video positions in the split
    *,
    videos_per_call: int = 8,
) -> np.ndarray:
    """``[n, D]`` video vectors: mean over clips of ``(pooled_video + pooled_text) / 2``.

    ``load_video(position)`` returns the clips of one video (``caps, cmasks, vfeats, vmasks``
    as :func:`sample_caption_span_video` or :func:`data_pipeline.sampling.sample_video`
    give them).  The model runs in eval mode.
    """
    from flax import nnx

    graphdef, state = nnx.split(model)

    @jax.jit
    def embed(state, caps, cmasks, vfeats, vmasks):
        m = nnx.merge(graphdef, state)
        out = m(caps, cmasks, vfeats, vmasks, deterministic=True)
        return (out["pooled_video"].astype(jnp.float32) + out["pooled_text"].astype(jnp.float32)) / 2

    vectors = []
    for start in range(0, len(positions), videos_per_call):
        chunk = [load_video(int(p)) for p in positions[start : start + videos_per_call]]
        clips = chunk[0]["caps"].shape[0]
        count = len(chunk)
        # Pad the last chunk to a fixed size so that `embed` compiles once.
        chunk = chunk + [chunk[-1]] * (videos_per_call - count)
        arrays = [np.concatenate([c[key] for c in chunk]) for key in ("caps", "cmasks", "vfeats", "vmasks")]
        pooled = np.asarray(embed(state, *arrays)).reshape(videos_per_call, clips, -1)
        vectors.append(pooled[:count].mean(axis=1))
    return np.concatenate(vectors).astype(np.float32)


class EpochPlanner:
    """``order_fn(epoch) -> positions`` for :class:`data_pipeline.input_pipeline.TrainIterator`.

    Returns the host's video positions for ``epoch``: consecutive groups of
    ``videos_per_device`` positions are the hard-negative batches, cut to the iterator's
    ``steps_per_epoch * videos_per_host`` videos.  ``embed_fn()`` returns the current model.
    """

    def __init__(self, *, config: Any, workdir: str, iterator: Any, embed_fn: Callable[[], Any]):
        check_config(config.train.hard_negatives)
        self.config = config
        self.iterator = iterator
        self.embed_fn = embed_fn
        self.dir = fileio.join(workdir, "batches")

    def _path(self, epoch: int) -> str:
        c = self.iterator.config
        host = "" if c.process_count == 1 else f"_host{c.process_index}"
        return fileio.join(self.dir, f"epoch_{epoch}{host}.json")

    def embedding_clips(self, epoch: int, position: int) -> dict[str, np.ndarray]:
        """The clips video ``position`` is embedded from in ``epoch`` (``train.hard_negatives.clips``)."""
        it = self.iterator
        if self.config.train.hard_negatives.get("clips", CLIP_MODES[0]) == "training":
            return it.load_video(epoch, position)
        c = it.config
        rec = it.store[int(position)]
        return sample_caption_span_video(
            rec.features, rec.starts, rec.ends, rec.tokens, caption_span_rng(c.seed, epoch, position),
            clips_per_video=c.clips_per_video, max_len=c.max_len, max_video_len=c.max_video_len)

    def __call__(self, epoch: int) -> np.ndarray:
        path = self._path(epoch)
        if fileio.exists(path):
            return np.asarray(fileio.read_json(path)["positions"], np.int64)
        it = self.iterator
        c = it.config
        n_total = len(it.store)
        # This host's share of the split (every video, in a fixed per-epoch order).
        share = host_video_order(n_total, epoch, seed=c.seed, process_index=c.process_index,
                                 process_count=c.process_count, videos_per_host=1)
        hn = self.config.train.hard_negatives
        vectors = embed_videos(
            self.embed_fn(), lambda p: self.embedding_clips(epoch, p), share,
            videos_per_call=hn.get("videos_per_call", 8),
        )
        rng = np.random.default_rng([int(c.seed), int(epoch), 7])
        stats: dict[str, int] = {"filled_videos": 0}
        index_kwargs = dict(num_lists=hn.num_lists, num_candidates=hn.num_candidates)
        if hn.get("index", INDEX_SCOPES[0]) == "device":
            batches = build_device_batches(vectors, c.videos_per_device, c.num_local_devices, rng=rng,
                                           stats=stats, **index_kwargs)
        else:
            batches = build_batches(vectors, c.videos_per_device, rng=rng, stats=stats, **index_kwargs)
        positions = np.asarray([share[i] for batch in batches for i in batch], np.int64)
        positions = positions[: it.steps_per_epoch * it.videos_per_host]
        fileio.makedirs(self.dir)
        fileio.atomic_write_json(path, {
            "epoch": epoch, "videos_per_batch": c.videos_per_device, "positions": positions.tolist(),
            "clips": hn.get("clips", CLIP_MODES[0]), "index": hn.get("index", INDEX_SCOPES[0]),
            "filled_videos": stats["filled_videos"]})
        logging.info("epoch %d: %d hard-negative batches of %d videos (%d filled with random videos)",
                     epoch, len(batches), c.videos_per_device, stats["filled_videos"])
        return positions
