"""Training checkpoints with `orbax.checkpoint.CheckpointManager`.

One checkpoint step holds four orbax items:

| item | content | handler |
|---|---|---|
| `params` | model parameters (pytree / `nnx.State`) | StandardSave |
| `opt_state` | optimiser state (optax state, `nnx.state(optimizer)`), optional | StandardSave |
| `rng` | RNG state (a key, a pytree of keys, `nnx.state(model, nnx.RngState)`), optional | StandardSave |
| `meta` | `{"step", "model_config", "items", "extra"}` | JsonSave |

Orbax provides the guarantees we rely on: saves are written to
`<step>.orbax-checkpoint-tmp-<timestamp>` and renamed to `<step>` only once complete, so an
interrupted save is never listed nor restored; `max_to_keep` keeps the last N;
`save_interval_steps` saves every K steps (`force=True` overrides).

Restoring onto a different device count / mesh: pass templates whose leaves are
`jax.ShapeDtypeStruct`s (or arrays) carrying the *target* sharding, e.g. from
`nnx.eval_shape` plus `jax.sharding.NamedSharding`; orbax reads and reshards accordingly.
Without a `params` template, parameters are restored from the checkpoint's own metadata
onto `jax.devices()[0]` (or the `sharding` given).

Typed PRNG keys are stored as their raw key data and re-wrapped with the template's
implementation on restore. `nnx.State` values are stored as pure dicts and restored into a
copy of the template State.

What can go wrong, and what the caller gets (all are `CheckpointError`, a
`norton_jax.cli.UserError`, so a command prints one `error:` line):

* **A save fails** (read-only folder, disk full): `CheckpointSaveError` naming the step
  and the folder, raised by the next `save`, `wait_until_finished` or `close` (orbax writes
  in a background thread).  The helper threads orbax leaves waiting for that save are
  released, so the process can still exit; earlier steps are untouched.
* **A step is damaged** (a file deleted or truncated, a byte changed): `CheckpointDamagedError`
  naming the step, the folder, the newest intact step (`--step N`) and the steps on disk.
  Every save records, in `meta`, a SHA-256 over the parameters (leaves in path order,
  with their shapes and dtypes); `restore` recomputes it, so a flipped bit is detected even
  where the storage format has no checksum of its own.  Checkpoints written before the
  checksum existed load without this verification.
* **A step does not fit the templates** (another model geometry, optimiser or trainable
  set): a plain `CheckpointError` saying so, with orbax's reason.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from norton_jax.cli import UserError
from norton_jax.models.config import ModelConfig

__all__ = [
    "CheckpointDamagedError", "CheckpointError", "CheckpointSaveError", "Checkpointer", "Restored",
    "abstract_like", "checkpoint_root", "params_digest",
]


class CheckpointError(UserError):
    """A checkpoint step that cannot be written or read; the message names the step and folder."""

    def __init__(self, message: str, *, step: int | None = None, directory: str | None = None):
        super().__init__(message)
        self.step = step
        self.directory = directory


class CheckpointDamagedError(CheckpointError):
    """The stored files of a step are missing, truncated or altered."""


class CheckpointSaveError(CheckpointError):
    """A save could not be completed (e.g. a read-only folder or a full disk)."""

_STATE_ITEMS = ("params", "opt_state", "rng")


class Restored(NamedTuple):
    """What `Checkpointer.restore` returns (`opt_state` / `rng` are None when not requested;
    `extra` is the JSON dict given to `save(extra=...)`, or None)."""

    step: int
    params: Any
    opt_state: Any
    rng: Any
    extra: dict[str, Any] | None = None


def _is_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


_LEAF_KEY = "__leaf__"  # orbax's StandardSave needs a container: a bare array is wrapped


def _is_bare_leaf(tree: Any) -> bool:
    return not isinstance(tree, nnx.State) and jax.tree_util.treedef_is_leaf(jax.tree.structure(tree))


def _to_savable(tree: Any) -> Any:
    """nnx.State -> pure dict; typed PRNG keys -> raw uint32 key data; bare leaf -> dict."""
    if isinstance(tree, nnx.State):
        tree = nnx.to_pure_dict(tree)
    tree = jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)
    return {_LEAF_KEY: tree} if _is_bare_leaf(tree) else tree


def abstract_like(tree: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
    """Template pytree -> `jax.ShapeDtypeStruct`s keeping each leaf's sharding.

    Leaves without a sharding (numpy arrays, ShapeDtypeStructs without one) get `sharding`,
    default `SingleDeviceSharding(jax.devices()[0])`."""
    default = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def one(x: Any) -> jax.ShapeDtypeStruct:
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding or default)
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        arr = np.asarray(x)
        return jax.ShapeDtypeStruct(arr.shape, arr.dtype, sharding=default)

    return jax.tree.map(one, tree)


def _abstract_savable(template: Any, sharding: jax.sharding.Sharding | None) -> Any:
    """Template (maybe nnx.State, maybe typed keys) -> abstract tree in the saved format."""
    if isinstance(template, nnx.State):
        template = nnx.to_pure_dict(template)
    abstract = abstract_like(template, sharding)

    def one(x: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
        if not _is_key(x):
            return x
        data = jax.eval_shape(jax.random.key_data, x)
        return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=x.sharding)

    abstract = jax.tree.map(one, abstract)
    return {_LEAF_KEY: abstract} if _is_bare_leaf(abstract) else abstract


def _from_saved(restored: Any, template: Any) -> Any:
    """Inverse of `_to_savable` guided by the template."""
    pure_template = nnx.to_pure_dict(template) if isinstance(template, nnx.State) else template
    if _is_bare_leaf(pure_template):
        restored = restored[_LEAF_KEY]

    def one(t: Any, r: Any) -> Any:
        if _is_key(t):
            impl = jax.random.key_impl(t) if isinstance(t, jax.Array) else None
            return jax.random.wrap_key_data(r, impl=impl) if impl is not None else jax.random.wrap_key_data(r)
        return r

    out = jax.tree.map(one, pure_template, restored)
    if isinstance(template, nnx.State):
        state = jax.tree.map(lambda x: x, template)  # fresh Variables, template untouched
        nnx.replace_by_pure_dict(state, out)
        return state
    return out


def checkpoint_root(path: str | os.PathLike) -> str:
    """The orbax checkpoint folder for ``path``: a training workdir (one holding
    ``checkpoints/``, as ``norton_jax.train`` writes) maps to that subfolder."""
    path = os.fspath(path)
    sub = os.path.join(path, "checkpoints")
    return sub if os.path.isdir(sub) else path


def _short_reason(err: BaseException) -> str:
    """The first line of an orbax / tensorstore error, without the long TensorStore spec dump.

    Orbax's "Encountered error while reading array index" is replaced by the tensorstore
    error it wraps (which names the array and what is wrong with its bytes)."""
    seen = set()
    while (str(err).startswith("Encountered error while reading") and err.__cause__ is not None
           and id(err) not in seen):
        seen.add(id(err))
        err = err.__cause__
    text = str(err).strip() or type(err).__name__
    text = text.split("See full TensorStore details")[0]
    line = " ".join(text.splitlines()[0].split()) if text.strip() else type(err).__name__
    return line if len(line) <= 240 else line[:237] + "..."


def _path_name(path: tuple) -> str:
    """``(DictKey('a'), SequenceKey(0))`` -> ``"a/0"``: the same for int and str dict keys."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _host_array(x: Any) -> np.ndarray | None:
    """The value of a leaf on the host, or None when this process does not hold all of it."""
    if isinstance(x, jax.Array):
        if x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return None
    return np.asarray(x)


def params_digest(tree: Any) -> dict[str, Any] | None:
    """A SHA-256 over the leaves of ``tree`` plus each leaf's shape and dtype.

    Leaves are visited in the order of their path names (``"video_encoder/.../kernel"``),
    so a tree restored with string keys gives the same digest as the integer-keyed tree
    that was saved.  Returns None when some leaf is not fully held by this process (an
    array sharded over several hosts): such a tree is saved without a checksum.
    """
    entries = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        arr = _host_array(leaf)
        if arr is None:
            return None
        entries.append((_path_name(path), np.ascontiguousarray(arr)))
    entries.sort(key=lambda e: e[0])
    h = hashlib.sha256()
    leaves = {}
    for name, arr in entries:
        leaves[name] = [list(arr.shape), str(arr.dtype)]
        h.update(f"{name}\0{arr.dtype}\0{arr.shape}\0".encode())
        h.update(arr.reshape(-1).view(np.uint8).data if arr.size else b"")
    return {"algorithm": "sha256", "hexdigest": h.hexdigest(), "leaves": leaves}


def _release_orbax_waiters(operation_ids: set[str]) -> None:
    """Lets orbax's helper threads of a failed save finish instead of waiting 5 minutes.

    When one part of an asynchronous save fails, the other parts' threads keep waiting for
    signals that never come (up to orbax's coordination timeout) and, being non-daemon
    threads, keep the interpreter from exiting.  They are cancelled and their signals set,
    so they return at once.  Only threads of ``operation_ids`` (the failed saves) are
    touched, and only in a single-process run (across hosts the signals are shared).
    """
    if not operation_ids or jax.process_count() > 1:
        return
    try:
        from orbax.checkpoint._src.futures import future as orbax_future  # noqa: PLC0415
    except ImportError:  # a later orbax: nothing we know how to release
        return
    thread_type = getattr(orbax_future, "_SignalingThread", None)
    set_signals = getattr(orbax_future, "set_signals", None)
    if thread_type is None or set_signals is None:
        return
    waiting = [t for t in threading.enumerate()
               if isinstance(t, thread_type) and t.is_alive()
               and str(getattr(t, "_operation_id", None)) in operation_ids]
    for t in waiting:
        try:
            t.cancel()
            set_signals(getattr(t, "_receive_signals", ()), operation_id=t._operation_id)
        except Exception:  # noqa: BLE001 - best effort on a failure path
            pass
    for t in waiting:
        threading.Thread.join(t, timeout=5)  # orbax's own join() raises for a cancelled thread
    if waiting:  # the cancelled threads never ran their coroutines: not worth a warning at exit
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)


def _is_orbax_read_noise(unraisable: Any) -> bool:
    """Whether an "exception ignored" report is the echo of one failed orbax read.

    When one array of a restore cannot be read, orbax abandons the other reads of the
    same call: their coroutines are collected with the same error, and the I/O callbacks
    that complete later find the event loop closed.  Python reports each of these as an
    ignored exception (hundreds of tracebacks); the failure itself is raised once.
    """
    obj = unraisable.object
    code = getattr(obj, "cr_code", None)
    if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
        return True
    exc = unraisable.exc_value
    if obj is None and isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        tb = unraisable.exc_traceback
        while tb is not None:
            if tb.tb_frame.f_code.co_filename.endswith(os.path.join("asyncio", "base_events.py")):
                return True
            tb = tb.tb_next
    return False


def _drop_orbax_read_futures(record: logging.LogRecord) -> bool:
    """asyncio's "exception was never retrieved" report of an abandoned orbax read: dropped."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (exc is not None and str(exc).startswith("Encountered error while reading array index"))


_NOISE_FILTER_INSTALLED = False


def _install_read_noise_filter() -> None:
    """Drops :func:`_is_orbax_read_noise` reports (unless ``--debug`` / NORTON_DEBUG is set);
    every other ignored exception goes to the previous hook."""
    global _NOISE_FILTER_INSTALLED
    if _NOISE_FILTER_INSTALLED:
        return
    from norton_jax import cli  # noqa: PLC0415

    if cli.debug_requested():
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not _is_orbax_read_noise(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_drop_orbax_read_futures)
    warnings.filterwarnings("ignore", message="coroutine '_read_array_index_and_device_put' was never awaited",
                            category=RuntimeWarning)
    _NOISE_FILTER_INSTALLED = True


def _current_operation_id() -> str | None:
    try:
        from orbax.checkpoint._src.futures import synchronization  # noqa: PLC0415

        return str(synchronization.OperationIdGenerator.get_current_operation_id())
    except Exception:  # noqa: BLE001 - only used to release threads after a failure
        return None


class Checkpointer:
    """Saves / restores (params, opt_state, step, rng) with an orbax `CheckpointManager`.

    Args:
      directory: checkpoint root (created if missing); steps live in `directory/<step>`.
      max_to_keep: keep the last N finalised checkpoints (None = all).
      save_interval_steps: `save` only writes when `step % K == 0` (unless `force=True`).
      model_config: geometry stored with every checkpoint (read back by `model_config()`,
        used by `norton_jax.export_torch`).
      enable_async: write in a background thread (call `wait_until_finished()` / `close()`).

    Example::

        with Checkpointer("ckpt", max_to_keep=3, save_interval_steps=1000,
                          model_config=model.config) as ckpt:
            ckpt.save(step, params=nnx.state(model, nnx.Param), opt_state=opt_state,
                      rng=nnx.state(model, nnx.RngState))
            ...
            r = ckpt.restore(params=abstract_params, opt_state=abstract_opt_state,
                             rng=nnx.state(model, nnx.RngState))
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 3,
        save_interval_steps: int = 1,
        model_config: ModelConfig | Any | None = None,
        enable_async: bool = True,
    ):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
        if save_interval_steps < 1:
            raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}")
        _install_read_noise_filter()
        self.directory = os.path.abspath(os.fspath(directory))
        self._model_config = None if model_config is None else ModelConfig.from_any(model_config).to_dict()
        self._pending: int | None = None  # step of the last save not yet known to be complete
        self._pending_ops: set[str] = set()
        self._failure: CheckpointSaveError | None = None
        self._closed = False
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            create=True,
            enable_async_checkpointing=enable_async,
        )
        try:
            self.manager = ocp.CheckpointManager(
                self.directory,
                options=options,
                item_handlers={
                    **{name: ocp.StandardCheckpointHandler() for name in _STATE_ITEMS},
                    "meta": ocp.JsonCheckpointHandler(),
                },
            )
        except OSError as err:
            raise CheckpointError(f"cannot open the checkpoint folder {self.directory}: {_short_reason(err)}",
                                  directory=self.directory) from err

    # -- bookkeeping -------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """Finalised steps, ascending (unfinished `*.orbax-checkpoint-tmp-*` dirs excluded)."""
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def step_path(self, step: int) -> str:
        return os.path.join(self.directory, str(int(step)))

    def check_writable(self) -> None:
        """Raises `CheckpointSaveError` now when files cannot be created in the folder."""
        probe = os.path.join(self.directory, f".write-test-{os.getpid()}")
        try:
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as err:
            raise CheckpointSaveError(
                f"the checkpoint folder {self.directory} is not writable ({_short_reason(err)}); "
                "free some space or fix its permissions, or pass another --workdir",
                directory=self.directory,
            ) from err

    def _save_failed(self, step: int | None, err: BaseException) -> CheckpointSaveError:
        """Records a failed save, releases orbax's waiting threads, returns the error to raise."""
        _release_orbax_waiters(self._pending_ops)
        self._pending, self._pending_ops = None, set()
        try:
            self.manager.reload()
            good = self.all_steps()
        except Exception:  # noqa: BLE001 - the folder may be unreadable too
            good = []
        what = "a checkpoint" if step is None else f"checkpoint step {step}"
        where = self.directory if step is None else self.step_path(step)
        kept = f"the last good checkpoint is step {good[-1]}" if good else "no earlier checkpoint exists"
        failure = CheckpointSaveError(
            f"could not save {what} to {where}: {_short_reason(err)}; {kept} (in {self.directory})",
            step=step, directory=self.directory,
        )
        self._failure = failure
        return failure

    def wait_until_finished(self) -> None:
        """Blocks until pending saves are written; raises `CheckpointSaveError` if one failed."""
        if self._failure is not None:
            raise self._failure
        try:
            self.manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001 - whatever orbax's background save raised
            raise self._save_failed(self._pending, err) from err
        self._pending, self._pending_ops = None, set()

    def finish_after_error(self, error: BaseException, report: Any) -> None:
        """Lets pending saves finish while ``error`` is being raised by the caller.

        A save failure found here is passed to ``report`` (one line, ``"also: ..."``)
        unless it *is* ``error``: the error already on its way up stays the one reported.
        """
        try:
            self.wait_until_finished()
        except CheckpointError as err:
            if err is not error:
                report(f"also: {err}")

    def close(self) -> None:
        """Waits for pending saves and releases orbax's resources.

        Raises `CheckpointSaveError` if a pending save failed (once: after a reported
        failure `close` only cleans up).
        """
        if self._closed:
            return
        failure = None
        if self._failure is None:
            try:
                self.wait_until_finished()
            except CheckpointSaveError as err:
                failure = err
        self._closed = True
        if self._failure is None:
            self.manager.close()
        else:  # orbax's close would wait on (and re-raise) the failed save
            for part in ("_checkpointer", "_non_blocking_metadata_store", "_blocking_metadata_store",
                         "_checkpoint_deleter"):
                try:
                    getattr(self.manager, part).close()
                except Exception:  # noqa: BLE001 - cleaning up after a reported failure
                    pass
        if failure is not None:
            raise failure

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # do not hide the error being raised behind a save error
            try:
                self.close()
            except CheckpointError:
                pass

    def _resolve_step(self, step: int | None) -> int:
        self.manager.reload()
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"no finalised checkpoint in {self.directory}")
            return steps[-1]
        if step not in steps:
            raise FileNotFoundError(
                f"no finalised checkpoint for step {step} in {self.directory}; available: {steps}"
            )
        return step

    def _read_meta(self, step: int, *, suggest: bool = True) -> dict[str, Any]:
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as err:  # noqa: BLE001 - any read error of the step's files
            raise self._damaged(step, f"its metadata cannot be read: {_short_reason(err)}",
                                suggest=suggest) from err
        if not isinstance(meta, dict):
            raise self._damaged(step, "its metadata is not a JSON object", suggest=suggest)
        return meta

    def model_config(self, step: int | None = None, *, suggest_other_steps: bool = True) -> dict[str, Any] | None:
        """The model geometry stored with `step` (latest by default), or None.

        Raises `CheckpointDamagedError` when the step's metadata cannot be read."""
        step = self._resolve_step(step)
        return self._read_meta(step, suggest=suggest_other_steps).get("model_config")

    # -- integrity ---------------------------------------------------------------------
    def _damaged(self, step: int, reason: str, *, suggest: bool = True) -> CheckpointDamagedError:
        """The error for a damaged `step`, naming the newest intact other step when `suggest`."""
        steps = self.all_steps()
        others = [s for s in steps if s != step]
        hint = ""
        if suggest and others:
            intact = next((s for s in reversed(others) if self.damage(s) is None), None)
            hint = (f"; the newest intact step is {intact}: pass --step {intact}" if intact is not None
                    else "; no other step is intact")
        return CheckpointDamagedError(
            f"checkpoint step {step} in {self.directory} is damaged ({reason}){hint} "
            f"(steps on disk: {steps or 'none'})",
            step=step, directory=self.directory,
        )

    def damage(self, step: int) -> str | None:
        """Why `step` cannot be read back (reading every item as stored), or None if intact.

        Reads the whole step without templates, so the answer depends only on the files:
        missing, truncated or altered data, or parameters that do not match their checksum.
        """
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as err:  # noqa: BLE001
            return f"its metadata cannot be read: {_short_reason(err)}"
        names = [n for n in meta.get("items", _STATE_ITEMS) if n in _STATE_ITEMS]
        try:
            metadata = self.manager.item_metadata(step)
            args = {}
            for name in names:
                tree = getattr(metadata[name], "tree", metadata[name])
                args[name] = ocp.args.StandardRestore(self._abstract_from_metadata(tree, None))
        except Exception as err:  # noqa: BLE001
            return f"its array metadata cannot be read: {_short_reason(err)}"
        for name in names:
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(**{name: args[name]}))
            except Exception as err:  # noqa: BLE001
                return f"{name}: {_short_reason(err)}"
            if name == "params" and self._checksum_mismatch(meta, restored["params"]):
                return "the stored parameters do not match their checksum"
        return None

    @staticmethod
    def _abstract_from_metadata(tree: Any, sharding: jax.sharding.Sharding | None) -> Any:
        target = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=target), tree)

    @staticmethod
    def _checksum_mismatch(meta: dict[str, Any], params: Any) -> bool:
        """True when `meta` holds a checksum and `params` (saved form) does not match it.

        A tree restored with other dtypes or shapes than saved (a casting template) cannot be
        compared byte for byte and is not reported."""
        stored = meta.get("params_digest")
        if not stored:
            return False  # written before checksums existed
        digest = params_digest(params)
        if digest is None or digest["leaves"] != stored.get("leaves"):
            return False
        return digest["hexdigest"] != stored.get("hexdigest")

    def set_aside(self, step: int) -> str:
        """Moves the folder of `step` to `<directory>.damaged/` (kept for inspection); returns
        the new path.  Used by training before it resumes from an earlier step."""
        root = self.directory.rstrip(os.sep) + ".damaged"
        os.makedirs(root, exist_ok=True)
        dest = os.path.join(root, str(step))
        if os.path.exists(dest):
            dest = f"{dest}-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(self.step_path(step), dest)
        self.manager.reload()
        return dest

    # -- save / restore ------------------------------------------------------------------
    def save(
        self,
        step: int,
        *,
        params: Any,
        opt_state: Any = None,
        rng: Any = None,
        extra: dict[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Saves a checkpoint for `step`; returns whether one was written (interval policy).

        `extra` is a small JSON-serialisable dict stored with the step (e.g. the input
        pipeline position); it comes back as `Restored.extra`.  Raises `CheckpointSaveError`
        when this save, or the previous asynchronous one, could not be written.
        """
        step = int(step)
        if self._failure is not None:
            raise self._failure
        if self._pending is not None:  # surface a failure of the previous save with its own step
            self.wait_until_finished()
        savable = _to_savable(params)
        items: dict[str, Any] = {"params": ocp.args.StandardSave(savable)}
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(_to_savable(opt_state))
        if rng is not None:
            items["rng"] = ocp.args.StandardSave(_to_savable(rng))
        meta = {"step": step, "model_config": self._model_config, "items": sorted(items), "extra": extra}
        if force or self.manager.should_save(step):
            meta["params_digest"] = params_digest(savable)
        items["meta"] = ocp.args.JsonSave(meta)
        try:
            written = bool(self.manager.save(step, args=ocp.args.Composite(**items), force=force))
        except Exception as err:  # noqa: BLE001 - a synchronous failure, or the previous save's
            raise self._save_failed(step, err) from err
        if written:
            self._pending = step
            op = _current_operation_id()
            self._pending_ops = {op} if op is not None else set()
        return written

    def restore(
        self,
        step: int | None = None,
        *,
        params: Any = None,
        opt_state: Any = None,
        rng: Any = None,
        sharding: jax.sharding.Sharding | None = None,
        suggest_other_steps: bool = True,
    ) -> Restored:
        """Restores `step` (default: latest finalised).

        `params`, `opt_state`, `rng` are templates (arrays, `jax.ShapeDtypeStruct`s or
        `nnx.State`s; their shardings are the restore targets). `opt_state` / `rng` are
        restored only when a template is given. Without a `params` template the saved
        structure is restored onto `sharding` (default: first device), with string keys.

        Raises `CheckpointDamagedError` when the step's files are missing, truncated or do
        not match their checksum (the message names the newest intact step unless
        `suggest_other_steps=False`), and `CheckpointError` when the step is intact but
        does not fit the templates.
        """
        step = self._resolve_step(step)
        meta = self._read_meta(step, suggest=suggest_other_steps)
        saved_items = set(meta.get("items", _STATE_ITEMS))
        args: dict[str, Any] = {}
        templates = {"params": params, "opt_state": opt_state, "rng": rng}
        for name, template in templates.items():
            if name != "params" and template is None:
                continue
            if name not in saved_items:
                raise ValueError(f"checkpoint {self.directory}/{step} has no '{name}' item (saved: {sorted(saved_items)})")
            if template is None:
                try:
                    metadata = self.manager.item_metadata(step)[name]
                except Exception as err:  # noqa: BLE001
                    raise self._damaged(step, f"its array metadata cannot be read: {_short_reason(err)}",
                                        suggest=suggest_other_steps) from err
                tree = getattr(metadata, "tree", metadata)
                abstract = self._abstract_from_metadata(tree, sharding)
            else:
                abstract = _abstract_savable(template, sharding)
            args[name] = ocp.args.StandardRestore(abstract)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as err:  # noqa: BLE001 - damage or a template mismatch: find out which
            reason = self.damage(step)
            if reason is not None:
                raise self._damaged(step, reason, suggest=suggest_other_steps) from err
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} does not fit what was asked for "
                f"(another model geometry, optimiser or trainable set?): {_short_reason(err)}",
                step=step, directory=self.directory,
            ) from err
        if self._checksum_mismatch(meta, restored["params"]):
            raise self._damaged(step, "the stored parameters do not match their checksum",
                                suggest=suggest_other_steps)
        out = {}
        for name, template in templates.items():
            if name not in args:
                out[name] = None
            elif template is None:
                out[name] = restored[name]
            else:
                out[name] = _from_saved(restored[name], template)
        return Restored(step=int(meta.get("step", step)), extra=meta.get("extra"), **out)
