"""Retrieval-augmented hard-negative batching (VideoCLIP scheme, spec 4.5).

Before every epoch each host embeds its share of the training videos with the current
model, indexes the vectors with a faiss IVF index, and builds batches of a random seed
video plus its nearest neighbours, so that the in-batch negatives of both contrastive
losses are hard ones.

Differences from the reference, by design:

* the video vector is the mean over the video's sampled clips of
  ``(pooled_video + pooled_text) / 2`` like the reference, but the clips are drawn with
  the training sampler of the epoch (3-16 s clips inside the caption span) instead of the
  reference's caption-span clips (``VariedLenAligner``);
* the number of IVF lists is ``min(512, n // 39)`` (faiss needs about 39 training points
  per list) and the candidate count ``min(192, n)``, so small corpora work;
* when IVF with one probe returns fewer neighbours than a batch needs (a small list),
  the batch is completed with random videos not yet in it.

The plan of each epoch is written to ``<workdir>/batches/epoch_<e>.json`` on every host
(``..._host<h>.json``) and read back on resume, so a resumed run continues with the same
batches although the model has changed since the plan was made.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from data_pipeline.input_pipeline import host_video_order


def build_batches(
    vectors: np.ndarray,  # [n, d] float32
    videos_per_batch: int,
    *,
    rng: np.random.Generator,
    num_lists: int = 512,
    num_candidates: int = 192,
    examples_per_list: int = 48,
) -> list[list[int]]:
    """Seed-plus-neighbours batches over row indices of ``vectors``.

    ``floor(n / videos_per_batch)`` seeds are drawn without replacement; each seed's
    ``num_candidates`` nearest neighbours (L2, faiss ``IndexIVFFlat`` with
    ``min(num_lists, n // 39)`` lists trained on the first ``lists * examples_per_list``
    vectors; exact ``IndexFlatL2`` below two lists) form its candidate list ``[seed] + neighbours``, of which a uniform random
    subset of ``videos_per_batch`` is kept when there are more.
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
        batches.append(candidates)
    return batches


def embed_videos(
    model: Any,
    load_video: Callable[[int], dict[str, np.ndarray]],
    positions: np.ndarray,  # [n] video positions in the split
    *,
    videos_per_call: int = 8,
) -> np.ndarray:
    """``[n, D]`` video vectors: mean over clips of ``(pooled_video + pooled_text) / 2``.

    ``load_video(position)`` returns the sampled clips of one video (the arrays of
    :func:`data_pipeline.sampling.sample_video`).  The model runs in eval mode.
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
    ``steps_per_epoch * videos_per_host`` videos.
    """

    def __init__(self, *, config: Any, workdir: str, iterator: Any, embed_fn: Callable[[], Any]):
        self.config = config
        self.iterator = iterator
        self.embed_fn = embed_fn
        self.dir = os.path.join(workdir, "batches")

    def _path(self, epoch: int) -> str:
        c = self.iterator.config
        host = "" if c.process_count == 1 else f"_host{c.process_index}"
        return os.path.join(self.dir, f"epoch_{epoch}{host}.json")

    def __call__(self, epoch: int) -> np.ndarray:
        path = self._path(epoch)
        if os.path.exists(path):
            with open(path) as f:
                return np.asarray(json.load(f)["positions"], np.int64)
        it = self.iterator
        c = it.config
        n_total = len(it.store)
        # This host's share of the split (every video, in a fixed per-epoch order).
        share = host_video_order(n_total, epoch, seed=c.seed, process_index=c.process_index,
                                 process_count=c.process_count, videos_per_host=1)
        hn = self.config.train.hard_negatives
        vectors = embed_videos(
            self.embed_fn(), lambda p: it.load_video(epoch, p), share,
            videos_per_call=hn.get("videos_per_call", 8),
        )
        rng = np.random.default_rng([int(c.seed), int(epoch), 7])
        batches = build_batches(
            vectors, c.videos_per_device, rng=rng,
            num_lists=hn.num_lists, num_candidates=hn.num_candidates,
        )
        positions = np.asarray([share[i] for batch in batches for i in batch], np.int64)
        positions = positions[: it.steps_per_epoch * it.videos_per_host]
        os.makedirs(self.dir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"epoch": epoch, "videos_per_batch": c.videos_per_device,
                       "positions": positions.tolist()}, f)
        os.replace(tmp, path)
        logging.info("epoch %d: %d hard-negative batches of %d videos", epoch, len(batches), c.videos_per_device)
        return positions
