"""The :class:`Checkpointer` (orbax ``CheckpointManager`` with integrity checks, failure
handling and a best-checkpoint record), its errors, and :func:`parse_step`."""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from data_pipeline import fileio
from norton_jax.checkpoint import trees
from norton_jax.checkpoint.base import (
    BEST,
    CheckpointDamagedError,
    CheckpointError,
    CheckpointSaveError,
    Restored,
    STATE_ITEMS,
    Step,
    parse_step,
)
from norton_jax.checkpoint.orbax_quirks import (
    current_operation_id,
    install_read_noise_filter,
    release_orbax_waiters,
    short_reason,
)
from norton_jax.checkpoint.trees import abstract_savable, from_saved, to_savable
from norton_jax.models.config import ModelConfig

__all__ = ["Checkpointer"]

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
        install_read_noise_filter()
        self.directory = fileio.abspath(os.fspath(directory))
        self._model_config = None if model_config is None else ModelConfig.from_any(model_config).to_dict()
        self._pending: int | None = None  # step of the last save not yet known to be complete
        self._pending_ops: set[str] = set()
        self._failure: CheckpointSaveError | None = None
        self._closed = False
        self._best_ckpt: Checkpointer | None = None
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
                    **{name: ocp.StandardCheckpointHandler() for name in STATE_ITEMS},
                    "meta": ocp.JsonCheckpointHandler(),
                },
            )
        except OSError as err:
            raise CheckpointError(f"cannot open the checkpoint folder {self.directory}: {short_reason(err)}",
                                  directory=self.directory) from err

    # -- bookkeeping -------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """Finalised steps, ascending (unfinished `*.orbax-checkpoint-tmp-*` dirs excluded)."""
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def step_path(self, step: int) -> str:
        return fileio.join(self.directory, str(int(step)))

    def check_writable(self) -> None:
        """Raises `CheckpointSaveError` now when files cannot be created in the folder."""
        probe = fileio.join(self.directory, f".write-test-{os.getpid()}")
        try:
            fileio.write_bytes(probe, b"ok")
            fileio.remove(probe)
        except OSError as err:
            raise CheckpointSaveError(
                f"the checkpoint folder {self.directory} is not writable ({short_reason(err)}); "
                "free some space or fix its permissions, or pass another --workdir",
                directory=self.directory,
            ) from err

    def _save_failed(self, step: int | None, err: BaseException) -> CheckpointSaveError:
        """Records a failed save, releases orbax's waiting threads, returns the error to raise."""
        release_orbax_waiters(self._pending_ops)
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
            f"could not save {what} to {where}: {short_reason(err)}; {kept} (in {self.directory})",
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
        if self._best_ckpt is not None:
            self._best_ckpt.close()
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
            raise self._damaged(step, f"its metadata cannot be read: {short_reason(err)}",
                                suggest=suggest) from err
        if not isinstance(meta, dict):
            raise self._damaged(step, "its metadata is not a JSON object", suggest=suggest)
        return meta

    def model_config(self, step: Step | str = None, *, suggest_other_steps: bool = True) -> dict[str, Any] | None:
        """The model geometry stored with `step` (latest by default; ``"best"``: the best
        checkpoint), or None.

        Raises `CheckpointDamagedError` when the step's metadata cannot be read."""
        step = parse_step(step)
        if step == BEST:
            return self._best_or_error().model_config(suggest_other_steps=suggest_other_steps)
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
            return f"its metadata cannot be read: {short_reason(err)}"
        names = [n for n in meta.get("items", STATE_ITEMS) if n in STATE_ITEMS]
        try:
            metadata = self.manager.item_metadata(step)
            args = {}
            for name in names:
                tree = getattr(metadata[name], "tree", metadata[name])
                args[name] = ocp.args.StandardRestore(self._abstract_from_metadata(tree, None))
        except Exception as err:  # noqa: BLE001
            return f"its array metadata cannot be read: {short_reason(err)}"
        for name in names:
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(**{name: args[name]}))
            except Exception as err:  # noqa: BLE001
                return f"{name}: {short_reason(err)}"
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
        digest = trees.params_digest(params)
        if digest is None or digest["leaves"] != stored.get("leaves"):
            return False
        return digest["hexdigest"] != stored.get("hexdigest")

    def set_aside(self, step: int) -> str:
        """Moves the folder of `step` to `<directory>.damaged/` (kept for inspection); returns
        the new path.  Used by training before it resumes from an earlier step."""
        root = self.directory.rstrip("/" + os.sep) + ".damaged"
        fileio.makedirs(root)
        dest = fileio.join(root, str(step))
        if fileio.exists(dest):
            dest = f"{dest}-{time.strftime('%Y%m%d-%H%M%S')}"
        fileio.move_tree(self.step_path(step), dest)
        self.manager.reload()
        return dest

    # -- the best checkpoint ------------------------------------------------------------
    @property
    def best_directory(self) -> str:
        """``<directory>.best/``: an orbax folder holding the best step only, plus ``best.json``."""
        return self.directory.rstrip("/" + os.sep) + ".best"

    def _best(self, *, create: bool) -> "Checkpointer | None":
        if self._best_ckpt is None:
            if not create and not fileio.isdir(self.best_directory):
                return None
            self._best_ckpt = Checkpointer(self.best_directory, max_to_keep=1, model_config=self._model_config,
                                           enable_async=False)
        return self._best_ckpt

    def _best_or_error(self) -> "Checkpointer":
        best = self._best(create=False)
        if best is None or best.latest_step() is None:
            raise FileNotFoundError(
                f"no best checkpoint for {self.directory} ({self.best_directory} holds none): the run "
                "never evaluated its validation split (train.eval_every); pass --step latest or a step number"
            )
        return best

    def best_step(self) -> int | None:
        """The step of the best checkpoint, or None when there is none."""
        record = self.best_record()
        return None if record is None else record["step"]

    def best_record(self) -> dict[str, Any] | None:
        """``{"step", "metric", "value"}`` of the best checkpoint (read from that step's own
        metadata, so it is always the step on disk), or None when there is none."""
        best = self._best(create=False)
        if best is None:
            return None
        best.manager.reload()
        step = best.latest_step()
        if step is None:
            return None
        record = (best._read_meta(step).get("extra") or {}).get("best") or {}
        return {"metric": record.get("metric"), "value": record.get("value"), "step": int(step)}

    def save_best(self, step: int, value: float, *, params: Any, metric: str = "val/loss_total",
                  opt_state: Any = None, rng: Any = None, extra: dict[str, Any] | None = None) -> bool:
        """Keeps `step` as the best checkpoint when `value` (lower is better) is finite and
        below the recorded best's; returns whether it was saved.

        The step is written (synchronously) to :attr:`best_directory`, which keeps one step
        and is never rotated by the latest-steps policy; its metadata records
        ``extra["best"] = {"metric", "value"}`` and ``best.json`` repeats it for people.
        """
        step, value = int(step), float(value)
        if not np.isfinite(value):
            return False
        record = self.best_record()
        if record is not None and record["value"] is not None and not value < float(record["value"]):
            return False
        best = self._best(create=True)
        for old in best.all_steps():  # a resumed run can reach a step of the interrupted run again
            if old >= step:
                best.manager.delete(old)
        best.save(step, params=params, opt_state=opt_state, rng=rng, force=True,
                  extra={**(extra or {}), "best": {"metric": metric, "value": value}})
        best.wait_until_finished()
        fileio.atomic_write_json(fileio.join(self.best_directory, "best.json"),
                                 {"step": step, "metric": metric, "value": value}, indent=2)
        return True

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
        savable = to_savable(params)
        items: dict[str, Any] = {"params": ocp.args.StandardSave(savable)}
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(to_savable(opt_state))
        if rng is not None:
            items["rng"] = ocp.args.StandardSave(to_savable(rng))
        meta = {"step": step, "model_config": self._model_config, "items": sorted(items), "extra": extra}
        if force or self.manager.should_save(step):
            meta["params_digest"] = trees.params_digest(savable)
        items["meta"] = ocp.args.JsonSave(meta)
        try:
            written = bool(self.manager.save(step, args=ocp.args.Composite(**items), force=force))
        except Exception as err:  # noqa: BLE001 - a synchronous failure, or the previous save's
            raise self._save_failed(step, err) from err
        if written:
            self._pending = step
            op = current_operation_id()
            self._pending_ops = {op} if op is not None else set()
        return written

    def restore(
        self,
        step: Step | str = None,
        *,
        params: Any = None,
        opt_state: Any = None,
        rng: Any = None,
        sharding: jax.sharding.Sharding | None = None,
        suggest_other_steps: bool = True,
    ) -> Restored:
        """Restores `step` (default: latest finalised; ``"best"``: the best checkpoint,
        :meth:`save_best`).

        `params`, `opt_state`, `rng` are templates (arrays, `jax.ShapeDtypeStruct`s or
        `nnx.State`s; their shardings are the restore targets). `opt_state` / `rng` are
        restored only when a template is given. Without a `params` template the saved
        structure is restored onto `sharding` (default: first device), with string keys.

        Raises `CheckpointDamagedError` when the step's files are missing, truncated or do
        not match their checksum (the message names the newest intact step unless
        `suggest_other_steps=False`), and `CheckpointError` when the step is intact but
        does not fit the templates.
        """
        step = parse_step(step)
        if step == BEST:
            return self._best_or_error().restore(params=params, opt_state=opt_state, rng=rng, sharding=sharding,
                                                 suggest_other_steps=suggest_other_steps)
        step = self._resolve_step(step)
        meta = self._read_meta(step, suggest=suggest_other_steps)
        saved_items = set(meta.get("items", STATE_ITEMS))
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
                    raise self._damaged(step, f"its array metadata cannot be read: {short_reason(err)}",
                                        suggest=suggest_other_steps) from err
                tree = getattr(metadata, "tree", metadata)
                abstract = self._abstract_from_metadata(tree, sharding)
            else:
                abstract = abstract_savable(template, sharding)
            args[name] = ocp.args.StandardRestore(abstract)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as err:  # noqa: BLE001 - damage or a template mismatch: find out which
            reason = self.damage(step)
            if reason is not None:
                raise self._damaged(step, reason, suggest=suggest_other_steps) from err
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} does not fit what was asked for "
                f"(another model geometry, optimiser or trainable set?): {short_reason(err)}",
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
                out[name] = from_saved(restored[name], template)
        return Restored(step=int(meta.get("step", step)), extra=meta.get("extra"), **out)
