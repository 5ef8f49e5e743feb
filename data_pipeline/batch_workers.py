"""Training batches assembled in worker processes (the per-video work of the input pipeline).

Why processes: the reference sampling (caption merging, clip growth; :mod:`data_pipeline.sampling`)
is sequential Python/numpy per video.  Run inside ``tf.data`` (``tf.numpy_function``) every
call needs the GIL, so one host core was the ceiling however many cores the host has.
:class:`BatchWorkers` starts ``num_workers`` plain Python processes (``python -m
data_pipeline.batch_workers``; no TensorFlow, no JAX, no copy of the parent: they read the
store themselves and parse records with :mod:`data_pipeline.example_proto`).  Each worker
fills whole host batches into shared-memory slots; the main process copies a finished slot
out, in order, and hands it to ``tf.data`` (``Dataset.from_generator`` in
:class:`data_pipeline.input_pipeline.TrainIterator`).

A batch depends only on ``(seed, epoch, positions)`` (:func:`fill_batch`), so batches are
identical for any number of workers, including ``num_workers=0`` (assembly in the calling
process), and identical to the single-process pipeline they replace.

Lifetime: workers ignore SIGINT (Ctrl-C is the trainer's to handle), exit when their stdin
closes (the parent ended, even by SIGKILL), and are stopped by :meth:`BatchWorkers.close`,
by garbage collection or at interpreter exit; the shared memory is unlinked by the parent.

Protocol (pickles framed by an 8-byte little-endian length): the parent sends one ``init``
dict, then ``(generation, seq, slot, epoch, positions)`` tasks, then ``None``; the worker
answers ``(generation, seq, slot, error_or_None)`` per task.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import struct
import subprocess
import sys
import weakref
from typing import Any, BinaryIO, Iterator, Optional, Sequence

import numpy as np

from data_pipeline.feature_store import FeatureStore
from data_pipeline.sampling import sample_video, video_rng

__all__ = ["ROW_KEYS", "ROW_DTYPES", "BatchWorkers", "available_cores", "fill_batch"]

ROW_KEYS = ("caps", "cmasks", "vfeats", "vmasks", "video_index", "text_start", "text_end",
            "video_start", "video_end")
ROW_DTYPES = {"caps": np.int32, "cmasks": np.bool_, "vfeats": np.float32, "vmasks": np.bool_,
              "video_index": np.int32, "text_start": np.int32, "text_end": np.int32,
              "video_start": np.int32, "video_end": np.int32}
_ALIGN = 64  # bytes; every field of a slot starts on a 64-byte boundary


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under ``taskset``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def sample_stored_video(store: FeatureStore, sampling: dict[str, int], epoch: int,
                        position: int) -> dict[str, np.ndarray]:
    """The ``K`` sampled clips of video ``position`` in ``epoch`` (every field of ``ROW_KEYS``).

    ``sampling``: ``seed, clips_per_video (K), max_len, max_video_len``.  The clips come from
    :func:`~data_pipeline.sampling.sample_video` with the Generator
    :func:`~data_pipeline.sampling.video_rng` ``(seed, epoch, position)``, so they depend on
    these three numbers only.
    """
    position = int(position)
    k = sampling["clips_per_video"]
    rec = store[position]
    clips = sample_video(rec.features, rec.starts, rec.ends, rec.tokens,
                         video_rng(sampling["seed"], epoch, position), clips_per_video=k,
                         max_len=sampling["max_len"], max_video_len=sampling["max_video_len"])
    clips["video_index"] = np.full((k,), position, np.int32)
    return clips


def fill_batch(store: FeatureStore, sampling: dict[str, int], epoch: int, positions: np.ndarray,
               out: dict[str, np.ndarray]) -> None:
    """Samples videos ``positions`` (int [V]) of ``epoch`` into the flat batch arrays ``out``.

    ``out[key]`` is ``[V*K, ...]``; rows ``v*K .. v*K+K-1`` get
    :func:`sample_stored_video` of ``positions[v]``.
    """
    k = sampling["clips_per_video"]
    for v, pos in enumerate(positions):
        clips = sample_stored_video(store, sampling, epoch, pos)
        rows = slice(v * k, (v + 1) * k)
        for key in ROW_KEYS:
            out[key][rows] = clips[key]


def aligned_empty(shape: Sequence[int], dtype) -> np.ndarray:
    """``np.empty`` whose data starts on a 64-byte boundary.

    TensorFlow takes such numpy arrays without copying them (``from_generator`` outputs,
    ``tf.constant``); an array from plain ``np.empty`` is 16-byte aligned and gets copied.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGN, np.uint8)
    start = -raw.ctypes.data % _ALIGN
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def slot_layout(shapes: dict[str, tuple]) -> tuple[dict[str, int], int]:
    """Byte offset of every field in a slot, and the slot's size."""
    offsets, size = {}, 0
    for key in ROW_KEYS:
        offsets[key] = size
        nbytes = int(np.prod(shapes[key])) * np.dtype(ROW_DTYPES[key]).itemsize
        size += -(-nbytes // _ALIGN) * _ALIGN
    return offsets, max(size, _ALIGN)


def slot_arrays(buf, shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
    """Numpy views of one slot's fields in ``buf`` (a shared-memory buffer)."""
    offsets, _ = slot_layout(shapes)
    return {key: np.ndarray(shapes[key], ROW_DTYPES[key], buffer=buf, offset=offsets[key]) for key in ROW_KEYS}


def _send(fh: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(struct.pack("<Q", len(data)) + data)
    while view:  # unbuffered pipes: a write may be partial
        view = view[fh.write(view):]


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = fh.read(n - got)
        if not chunk:
            raise EOFError("pipe closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv(fh: BinaryIO) -> Any:
    (n,) = struct.unpack("<Q", _read_exact(fh, 8))
    return pickle.loads(_read_exact(fh, n))


def _portable(err: BaseException) -> BaseException:
    """``err`` if it survives pickling (e.g. DataError), else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(err).__name__}: {err}")


def _worker_main() -> None:
    """Entry point of a worker process (``python -m data_pipeline.batch_workers``)."""
    import signal
    from multiprocessing import resource_tracker, shared_memory

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Unbuffered both ways: the parent waits on the pipe with select(), which cannot see
    # frames sitting in a user-space buffer.
    inbox = os.fdopen(os.dup(0), "rb", buffering=0)
    outbox = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # stray prints go to stderr, never into the protocol
    init = _recv(inbox)
    store = FeatureStore(init["store_dir"], init["split"], verify="none")
    slots = []
    for name in init["slot_names"]:
        shm = shared_memory.SharedMemory(name=name)
        # The parent owns and unlinks the segment; this process only maps it.
        resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001 - no public API in 3.11
        slots.append((shm, slot_arrays(shm.buf, init["shapes"])))
    try:
        while True:
            try:
                task = _recv(inbox)
            except EOFError:  # the parent is gone
                return
            if task is None:
                return
            generation, seq, slot, epoch, positions = task
            try:
                fill_batch(store, init["sampling"], epoch, positions, slots[slot][1])
                _send(outbox, (generation, seq, slot, None))
            except Exception as err:  # noqa: BLE001 - raised again in the parent
                _send(outbox, (generation, seq, slot, _portable(err)))
    except BrokenPipeError:
        return
    finally:
        store.close()
        for shm, arrays in slots:
            arrays.clear()
            shm.close()


_LIVE: "weakref.WeakSet[BatchWorkers]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for workers in list(_LIVE):
        workers.close()


def _stop(procs: list, shms: list) -> None:
    for proc in procs:
        try:
            _send(proc.stdin, None)
            proc.stdin.close()
        except (OSError, ValueError):
            pass
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    for shm in shms:
        try:
            shm.close()
        except BufferError:  # a view is still alive somewhere; the unlink below still frees the name
            pass
        try:
            shm.unlink()
        except FileNotFoundError:
            pass


class BatchWorkers:
    """Fills host batches for a stream of ``(epoch, positions)`` tasks, in order.

    Args:
      store: the split to read (workers reopen it from ``store.store_dir`` / ``store.split``).
      sampling: ``seed, clips_per_video, max_len, max_video_len``.
      shapes: flat shape of each field of a host batch, ``{key: (V*K, ...)}``.
      num_workers: worker processes (0: assemble in the calling process).
      prefetch: batches that may be ready beyond the one being consumed.
    """

    def __init__(self, store: FeatureStore, sampling: dict[str, int], shapes: dict[str, tuple], *,
                 num_workers: int, prefetch: int = 2):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 (0: in this process), got {num_workers}")
        self.store, self.sampling, self.shapes = store, dict(sampling), dict(shapes)
        self.num_workers = int(num_workers)
        self._generation = 0
        self._recycled: list[dict[str, np.ndarray]] = []
        self._max_recycled = max(1, prefetch) + 4
        self._procs: list[subprocess.Popen] = []
        self._shms: list = []
        self._closed = False
        self._finalizer = None
        if self.num_workers:
            self._start(n_slots=self.num_workers + max(1, prefetch) + 1)
        _LIVE.add(self)

    def _start(self, n_slots: int) -> None:
        from multiprocessing import shared_memory

        _, size = slot_layout(self.shapes)
        self._finalizer = weakref.finalize(self, _stop, self._procs, self._shms)
        try:
            for _ in range(n_slots):
                self._shms.append(shared_memory.SharedMemory(create=True, size=size))
        except OSError as err:
            self.close()
            raise OSError(f"cannot allocate {n_slots} x {size / 2**20:.0f} MiB of shared memory for the "
                          f"input workers ({err}); enlarge /dev/shm or set num_workers=0") from err
        self._slots = [slot_arrays(shm.buf, self.shapes) for shm in self._shms]
        self._free = list(range(n_slots))
        self._inflight = [0] * self.num_workers
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        init = {"store_dir": self.store.store_dir, "split": self.store.split, "sampling": self.sampling,
                "shapes": self.shapes, "slot_names": [shm.name for shm in self._shms]}
        for _ in range(self.num_workers):
            proc = subprocess.Popen([sys.executable, "-m", "data_pipeline.batch_workers"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
                                    bufsize=0)
            self._procs.append(proc)
            _send(proc.stdin, init)
        self._by_fd = {proc.stdout.fileno(): i for i, proc in enumerate(self._procs)}

    def close(self) -> None:
        """Stops the workers and frees the shared memory (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._slots = []
        if self._finalizer is not None:
            self._finalizer()

    def run(self, tasks: Iterator[tuple[int, np.ndarray]],
            out_shapes: Optional[dict[str, Sequence[int]]] = None) -> Iterator[dict[str, np.ndarray]]:
        """Batches for ``tasks`` in order, reshaped to ``out_shapes`` if given.

        The arrays are never overwritten while anyone holds them (:meth:`_output_buffers`);
        ``tf.data.Dataset.from_generator`` may keep them without copying.  A later call
        supersedes an unfinished earlier one (its pending tasks are dropped).
        """
        shapes = out_shapes or self.shapes
        if not self.num_workers:
            for epoch, positions in tasks:
                out = {key: np.empty(shape, ROW_DTYPES[key]) for key, shape in self.shapes.items()}
                fill_batch(self.store, self.sampling, epoch, positions, out)
                yield {key: out[key].reshape(shapes[key]) for key in ROW_KEYS}
            return
        if self._closed:
            raise RuntimeError("the input worker processes were closed")
        self._generation += 1
        generation = self._generation
        tasks = iter(tasks)
        issued = wanted = 0
        done: dict[int, tuple[int, Optional[BaseException]]] = {}
        exhausted = False
        while generation == self._generation:
            while self._free and not exhausted:
                try:
                    epoch, positions = next(tasks)
                except StopIteration:
                    exhausted = True
                    break
                w = int(np.argmin(self._inflight))
                _send(self._procs[w].stdin, (generation, issued, self._free.pop(), int(epoch),
                                             np.asarray(positions, np.int64)))
                self._inflight[w] += 1
                issued += 1
            if wanted == issued:
                if exhausted:
                    return
                self._receive(generation, done)  # every slot is held by a superseded run's task
                continue
            while wanted not in done:
                self._receive(generation, done)
            slot, err = done.pop(wanted)
            if err is not None:
                self._free.append(slot)
                raise err
            wanted += 1
            batch = self._output_buffers(shapes)
            for key in ROW_KEYS:
                np.copyto(batch[key], self._slots[slot][key].reshape(shapes[key]))
            self._free.append(slot)
            yield batch

    def _output_buffers(self, shapes: dict[str, Sequence[int]]) -> dict[str, np.ndarray]:
        """Arrays to copy a finished slot into: a recycled set nobody else holds, else new ones.

        Writing into memory that was touched before avoids the page faults of a fresh
        34 MB allocation per batch.  A set is reused only when this object holds the sole
        reference to every array (``sys.getrefcount``): a consumer that kept a batch, or a
        ``tf.data`` tensor that aliases it, keeps it out of reuse, so a handed-out batch is
        never overwritten.
        """
        for arrays in self._recycled:
            if all(sys.getrefcount(a) <= 3 for a in arrays.values()):  # the dict, the loop, the call
                if all(arrays[k].shape == tuple(shapes[k]) for k in ROW_KEYS):
                    return arrays
        arrays = {key: aligned_empty(shapes[key], ROW_DTYPES[key]) for key in ROW_KEYS}
        if len(self._recycled) < self._max_recycled:
            self._recycled.append(arrays)
        return arrays

    def _receive(self, generation: int, done: dict) -> None:
        """Waits for finished tasks: ``generation``'s go to ``done``, stale ones free their slot."""
        while True:
            ready, _, _ = select.select(list(self._by_fd), [], [], 1.0)
            if not ready:
                dead = [p for p in self._procs if p.poll() is not None]
                if dead:
                    raise RuntimeError(f"an input worker process ended unexpectedly (exit status "
                                       f"{dead[0].returncode}); out of memory?")
                continue
            for fd in ready:
                w = self._by_fd[fd]
                try:
                    gen, seq, slot, err = _recv(self._procs[w].stdout)
                except EOFError:
                    raise RuntimeError(f"input worker {w} ended unexpectedly (exit status "
                                       f"{self._procs[w].wait()}); out of memory?") from None
                self._inflight[w] -= 1
                if gen == generation:
                    done[seq] = (slot, err)
                else:
                    self._free.append(slot)
            return


if __name__ == "__main__":
    _worker_main()
