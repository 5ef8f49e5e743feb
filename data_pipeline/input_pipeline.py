"""Per-host ``tf.data`` training pipeline over a feature store (spec §4.2-4.4).

Order of videos: every epoch ``e`` has one global permutation of the split,
``perm_e(j) = tf.random.experimental.index_shuffle(j, [seed, e], N - 1)`` (stateless, computed
once per epoch by :func:`host_video_order`); host ``h`` of ``P`` takes ``perm_e(h), perm_e(h + P), ...`` cut to ``steps_per_epoch * videos_per_host`` videos (``steps_per_epoch =
(N // P) // videos_per_host``, identical on all hosts; the few videos left over are different
ones every epoch). Each video's 16 clips are drawn by :func:`data_pipeline.sampling.sample_video`
with the Generator ``(seed, e, video_position)``, so the data depend only on
``(seed, epoch, step)``: the iterator state is that position (a small dict of ints) and a
restored iterator continues with exactly the batches the original would have produced.

Where the work runs: the per-video work (record read and parse, the reference sampling,
slicing and padding) runs in ``PipelineConfig.num_workers`` worker processes
(:mod:`data_pipeline.batch_workers`; default one per core this process may use), which fill
whole host batches into shared memory; ``tf.data`` (``Dataset.from_generator`` + ``prefetch``)
hands them on.  Threads inside ``tf.data`` could not do this work in parallel: it is Python,
and it needs the GIL.  The batches do not depend on the number of workers.

Closing: :meth:`TrainIterator.close` (or ``with TrainIterator(...) as it:``) stops the
workers; iterators left open are closed at interpreter exit.

Batch layout (one dict of numpy arrays per step, ``R = videos_per_device * K`` rows per device,
rows video-major: row ``v*K + c`` = clip ``c`` of the device's video ``v``)::

    layout="device" (default)                     layout="flat" (host-global)
    caps        [D, R, 32]      int32             [D*R, 32]
    cmasks      [D, R, 32]      bool              [D*R, 32]
    vfeats      [D, R, 16, 512] float32           [D*R, 16, 512]
    vmasks      [D, R, 16]      bool              [D*R, 16]
    video_index [D, R]          int32  position of the row's video in the split
    text_start, text_end, video_start, video_end  [D, R] int32 (merged caption range, clip seconds)

``D = num_local_devices`` (``jax.local_device_count()`` by default). With ``layout="device"``
``batch[k][d]`` is what local device ``d`` gets; sequences of L = 8 rows never straddle
videos or devices because K = 16 is a multiple of 8.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Optional, Union

import numpy as np

from data_pipeline import fileio
from data_pipeline.batch_workers import (ROW_DTYPES, ROW_KEYS, BatchWorkers, available_cores,
                                         sample_stored_video)
from data_pipeline.feature_store import FeatureStore
from data_pipeline.sampling import CLIPS_PER_VIDEO
from data_pipeline.tf_utils import import_tensorflow
from data_pipeline.tokenization import MAX_LEN, MAX_VIDEO_LEN



@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Settings of :class:`TrainIterator`. ``None`` fields are filled from JAX at construction."""
    videos_per_device: int = 64          # V_b of the reference (per GPU)
    clips_per_video: int = CLIPS_PER_VIDEO
    max_len: int = MAX_LEN
    max_video_len: int = MAX_VIDEO_LEN
    seed: int = 0
    num_epochs: Optional[int] = None     # None: repeat forever
    layout: str = "device"               # "device" -> [D, R, ...]; "flat" -> [D*R, ...]
    num_local_devices: Optional[int] = None
    process_index: Optional[int] = None
    process_count: Optional[int] = None
    num_parallel_calls: int = -1         # unused (kept for configs that set it)
    prefetch: int = 2                    # batches
    deterministic: bool = True           # batches never depend on worker timing
    num_workers: Optional[int] = None    # batch-assembly processes; None: one per available core, 0: none


def host_video_order(num_videos: int, epoch: int, *, seed: int, process_index: int, process_count: int,
                     videos_per_host: int) -> np.ndarray:
    """Positions of the videos host ``process_index`` reads in ``epoch``, in order (int64 [n]).

    Epoch ``e`` uses the permutation ``perm_e(j) = index_shuffle(j, seed=[seed, e], max_index=N-1)``
    (``tf.random.experimental.index_shuffle``, stateless); host ``h`` reads ``perm_e(h + P*i)`` for
    ``i < steps_per_epoch * videos_per_host``.
    """
    steps = (num_videos // process_count) // videos_per_host
    per_epoch = steps * videos_per_host
    tf = import_tensorflow()
    j = tf.range(per_epoch, dtype=tf.int64) * process_count + process_index
    pos = tf.random.experimental.index_shuffle(j, tf.constant([seed, epoch], tf.int64),
                                               tf.constant(num_videos - 1, tf.int64))
    return pos.numpy()


def batch_shapes(config: "PipelineConfig", videos_per_host: int, feature_dim: int) -> dict[str, list[int]]:
    """Shape of every batch field for ``config.layout`` (see the module docstring)."""
    k, lc, lv = config.clips_per_video, config.max_len - config.max_video_len, config.max_video_len
    per_row = {"caps": [lc], "cmasks": [lc], "vfeats": [lv, feature_dim], "vmasks": [lv]}
    d = config.num_local_devices
    lead = [d, videos_per_host // d * k] if config.layout == "device" else [videos_per_host * k]
    return {key: lead + per_row.get(key, []) for key in ROW_KEYS}


class TrainIterator:
    """Iterator over training batches of one host; ``state()``/``restore`` give exact resume.

    Example::

        it = TrainIterator("/data/store", "train", PipelineConfig(videos_per_device=64))
        batch = next(it)              # dict, see module docstring
        state = it.state()            # {"epoch": 0, "step": 1, ...}: save with the checkpoint
        it2 = TrainIterator("/data/store", "train", cfg, state=state)   # continues identically
    """

    def __init__(self, store: Union[str, FeatureStore], split: str = "train",
                 config: PipelineConfig = PipelineConfig(), *, state: Optional[dict] = None):
        self.store = store if isinstance(store, FeatureStore) else FeatureStore(store, split)
        cfg = config
        if cfg.num_local_devices is None or cfg.process_index is None or cfg.process_count is None:
            import jax
            cfg = dataclasses.replace(
                cfg,
                num_local_devices=cfg.num_local_devices or jax.local_device_count(),
                process_index=jax.process_index() if cfg.process_index is None else cfg.process_index,
                process_count=jax.process_count() if cfg.process_count is None else cfg.process_count)
        if not 0 <= cfg.process_index < cfg.process_count:
            raise ValueError(f"process_index {cfg.process_index} not in [0, {cfg.process_count})")
        if cfg.layout not in ("device", "flat"):
            raise ValueError(f"layout must be 'device' or 'flat', got {cfg.layout!r}")
        self.config = cfg
        self.videos_per_host = cfg.videos_per_device * cfg.num_local_devices
        self.steps_per_epoch = (len(self.store) // cfg.process_count) // self.videos_per_host
        if self.steps_per_epoch == 0:
            raise ValueError(f"split {split!r} has {len(self.store)} videos: too few for one step of "
                             f"{self.videos_per_host} videos on each of {cfg.process_count} hosts")
        self._epoch, self._step = 0, 0
        if state is not None:
            self._check_state(state)
            self._epoch, self._step = int(state["epoch"]), int(state["step"])
        self._it: Optional[Iterator] = None
        self._workers: Optional[BatchWorkers] = None
        self._sampling = {"seed": cfg.seed, "clips_per_video": cfg.clips_per_video, "max_len": cfg.max_len,
                          "max_video_len": cfg.max_video_len}
        #: Optional ``order_fn(epoch) -> int64 [steps_per_epoch * videos_per_host]``: this
        #: host's video positions for ``epoch`` (e.g. hard-negative batches), replacing the
        #: shuffled order. Called at the start of each epoch, when that epoch's first batch
        #: is requested; it must return the same order for the same epoch on resume.
        self.order_fn: Optional[Callable[[int], np.ndarray]] = None

    # ------------------------------------------------------------------ state
    def _fingerprint(self) -> dict:
        c = self.config
        return {"seed": c.seed, "num_videos": len(self.store), "process_index": c.process_index,
                "process_count": c.process_count, "videos_per_host": self.videos_per_host,
                "clips_per_video": c.clips_per_video}

    def state(self) -> dict:
        """Position of the next batch (JSON-serialisable); store it with the model checkpoint."""
        return {"epoch": self._epoch, "step": self._step, **self._fingerprint()}

    def _check_state(self, state: dict) -> None:
        for k, v in self._fingerprint().items():
            if k in state and state[k] != v:
                raise ValueError(f"iterator state was saved with {k}={state[k]!r}, this pipeline has {v!r}")

    def restore(self, state: dict) -> None:
        """Jump to a position returned by :meth:`state` (rebuilds the tf.data pipeline)."""
        self._check_state(state)
        self._epoch, self._step = int(state["epoch"]), int(state["step"])
        self._it = None

    def save_state(self, path: str) -> None:
        """Write :meth:`state` as JSON (atomically; any filesystem :mod:`data_pipeline.fileio` reads)."""
        fileio.atomic_write_json(path, self.state())

    def load_state(self, path: str) -> None:
        self.restore(fileio.read_json(path))

    # ------------------------------------------------------------------ data
    def load_video(self, epoch: int, position: int) -> dict[str, np.ndarray]:
        """Sampled clips of video ``position`` in ``epoch``: the rows a batch holds for it."""
        return sample_stored_video(self.store, self._sampling, epoch, position)

    def as_dataset(self):
        """The ``tf.data.Dataset`` of batches, starting at the current position.

        Batches are assembled by :class:`BatchWorkers` (``config.num_workers`` processes, or
        in this process when it is 0) and fed to ``tf.data`` through
        ``Dataset.from_generator``, then prefetched.  With an ``order_fn`` the dataset
        covers the rest of the current epoch only (the next epoch's order is asked for when
        this one is exhausted, see :meth:`__next__`).
        """
        tf = import_tensorflow()
        c = self.config
        shapes = batch_shapes(c, self.videos_per_host, self.store.feature_dim)
        if self._workers is None:
            flat = {key: (self.videos_per_host * c.clips_per_video, *shape[2 if c.layout == "device" else 1:])
                    for key, shape in shapes.items()}
            workers = available_cores() if c.num_workers is None else c.num_workers
            if fileio.is_url(self.store.store_dir) and self.store.store_dir.startswith("ram://"):
                workers = 0  # TF's in-memory filesystem exists only inside this process
            self._workers = BatchWorkers(self.store, self._sampling, flat, num_workers=workers, prefetch=c.prefetch)
        signature = {key: tf.TensorSpec(shape, tf.as_dtype(ROW_DTYPES[key])) for key, shape in shapes.items()}
        first_order = self.epoch_order(self._epoch)
        tasks = self._tasks(self._epoch, self._step, first_order)
        ds = tf.data.Dataset.from_generator(lambda: self._workers.run(tasks, shapes),
                                            output_signature=signature)
        ds = ds.prefetch(self.config.prefetch)
        opts = tf.data.Options()
        opts.deterministic = True
        return ds.with_options(opts)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This host's video positions of ``epoch`` in reading order (int64 [steps * videos_per_host])."""
        c = self.config
        per_epoch = self.steps_per_epoch * self.videos_per_host
        if self.order_fn is not None:
            order = np.asarray(self.order_fn(epoch), np.int64)
            if order.shape != (per_epoch,):
                raise ValueError(f"order_fn({epoch}) returned {order.shape[0] if order.ndim else order!r} "
                                 f"positions, the epoch needs {per_epoch}")
            return order
        return host_video_order(len(self.store), epoch, seed=c.seed, process_index=c.process_index,
                                process_count=c.process_count, videos_per_host=self.videos_per_host)

    def _tasks(self, epoch: int, step: int, first_order: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(epoch, positions [videos_per_host]) of every batch from ``(epoch, step)`` on.

        ``first_order`` is :meth:`epoch_order` of ``epoch``, computed by the caller (in the
        thread that asks for batches, not in a tf.data thread)."""
        c = self.config
        first_epoch = epoch
        while c.num_epochs is None or epoch < c.num_epochs:
            order = first_order if epoch == first_epoch else self.epoch_order(epoch)
            order = order.reshape(self.steps_per_epoch, self.videos_per_host)
            for s in range(step, self.steps_per_epoch):
                yield epoch, order[s]
            if self.order_fn is not None:
                return  # the next epoch's order is built on demand (see __next__)
            epoch, step = epoch + 1, 0

    def close(self) -> None:
        """Stops the worker processes and drops the tf.data iterator (idempotent).

        Also called at interpreter exit for iterators still open, before Python starts
        tearing itself down (a TensorFlow iterator destroyed later could wait forever on a
        Python callback).
        """
        self._it = None
        if self._workers is not None:
            self._workers.close()
            self._workers = None

    def __enter__(self) -> "TrainIterator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> "TrainIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._it = self.as_dataset().as_numpy_iterator()
        batch = next(self._it)  # StopIteration ends a finite run
        self._step += 1
        if self._step >= self.steps_per_epoch:
            self._epoch, self._step = self._epoch + 1, 0
            if self.order_fn is not None:
                self._it = None  # the next epoch's order is built on demand
        return batch


def create_train_iterator(store_dir: str, split: str = "train", *, state: Optional[dict] = None,
                          **config) -> TrainIterator:
    """Convenience constructor: ``create_train_iterator(dir, "train", videos_per_device=8, seed=0)``."""
    return TrainIterator(store_dir, split, PipelineConfig(**config), state=state)
