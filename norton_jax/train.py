"""Norton pre-training: one readable train loop over a device mesh.

    python -m norton_jax.train --config configs/tiny.py --workdir /tmp/norton \\
        --config.train.steps=200

The same program runs on one CPU, eight GPUs or a multi-host TPU pod: the per-device
step is written with ``jax.shard_map`` (:mod:`norton_jax.training.step`), every host
reads its own shard of the data (:mod:`data_pipeline.input_pipeline`), and
``jax.distributed.initialize()`` is called only when asked (``--config.train.distributed``
or ``NORTON_DISTRIBUTED=1``).

What a run writes to ``--workdir``:

* ``config.json`` - the resolved config;
* ``checkpoints/<step>/`` - orbax checkpoints (parameters, optimiser state, RNG, the data
  iterator position) every ``train.checkpoint_every`` steps and at the end; a run
  restarted with the same workdir resumes from the latest one and continues exactly;
* ``checkpoints.best/<step>/`` + ``best.json`` - the step with the lowest validation loss,
  when ``train.eval_every > 0`` (:class:`~norton_jax.training.validation.ValidationLoss`,
  docs/checkpoints.md "Checkpoint selection"); ``--step best`` picks it;
* ``metrics.jsonl`` (``val/*`` rows every ``train.eval_every`` steps) and TensorBoard
  events (process 0 only);
* ``batches/epoch_<e>.json`` - the hard-negative batch plan of each epoch, when enabled.

Every file of the workdir other than orbax's goes through :mod:`data_pipeline.fileio`, so
a ``gs://`` workdir works.  The plumbing shared with fine-tuning lives in
:mod:`norton_jax.training` (``metrics``, ``guards``, ``resume``, ``progress``,
``absl_cli``); this module is the entry point and owns the flags.

What is checked, and how a run stops (the command's exit statuses are those of
:mod:`norton_jax.cli`):

* the config is validated before anything expensive
  (:func:`norton_jax.training.validate.validate_config`: one error naming every bad field);
* a missing feature store is an error, except for the embedded corpus in its default
  folder (:func:`resolve_store`);
* resuming checks that the checkpoints were written for the config's model geometry, and
  skips damaged steps (moved to ``checkpoints.damaged/``) to resume from the newest
  intact one; ``config.json`` is written only once these checks passed, and
  ``metrics.jsonl`` is cut back to the restored step so that every step appears once;
* a non-finite loss, gradient or input stops the run with :class:`NonFiniteError` before
  anything is saved, so the last good checkpoint stays intact (exit status 3); with
  ``train.on_non_finite="skip"`` a non-finite loss or gradient skips the update instead
  (parameters and optimiser state untouched, counted as ``skipped_steps`` in
  ``metrics.jsonl``) and only more than ``train.max_skipped`` skipped steps in a row stop;
* a checkpoint that cannot be written (read-only folder, full disk) stops the run with
  one error naming the step and the folder (exit status 2); earlier steps stay intact;
* SIGTERM (and Ctrl-C) saves a checkpoint at the next step boundary and stops; the
  summary says ``"interrupted": true`` and the ``"signal"``, and the command exits with
  ``128 + signal`` (143, 130).
"""

from __future__ import annotations

import json
import os

from data_pipeline.tf_utils import configure_tensorflow_environment  # noqa: E402

configure_tensorflow_environment()  # before TensorFlow (tf.data, TensorBoard) loads
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags
from flax import nnx
from ml_collections import config_flags

from data_pipeline import fileio
from data_pipeline.input_pipeline import PipelineConfig, TrainIterator
from norton_jax import cli
from norton_jax.checkpoint import CheckpointError, Checkpointer
from norton_jax.cli import ConfigError, NonFiniteError  # noqa: F401 - NonFiniteError: re-exported
from norton_jax.losses import LossConfig
from norton_jax.models.dual_encoder import init_model
from norton_jax.training import hard_negatives
from norton_jax.training import absl_cli
from norton_jax.training.absl_cli import exit_status  # noqa: F401 - re-exported
from norton_jax.training.guards import NonFiniteGuard, StopRequested
from norton_jax.training.guards import raise_if_non_finite  # noqa: F401 - re-exported
from norton_jax.training.metrics import MetricLogger, truncate_metrics, write_workdir_json  # noqa: F401
from norton_jax.training.progress import maybe_initialize_distributed, say  # noqa: F401 - re-exported
from norton_jax.training.resume import (  # noqa: F401 - re-exported
    GEOMETRY_FIELDS,
    check_resume_geometry,
    precheck_resume,
    restore_for_resume,
)
from norton_jax.training.validate import validate_config
from norton_jax.training.validation import ValidationLoss
from norton_jax.training.step import (
    ModelParts,
    init_train_state,
    make_mesh,
    make_optimizer,
    make_train_step,
    merge_model,
    replicate,
    shard_batch,
    split_model,
)


#: The folder each automatically buildable corpus is built into (relative to the working
#: directory, or to the repository): ``configs/tiny.py``'s ``data.store``.
DEFAULT_BUILD_STORES = {"youcook2-mnc": os.path.join("data", "build", "youcook2-mnc")}
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_store(config: ml_collections.ConfigDict) -> str:
    """The feature-store directory of ``config.data``, building the embedded corpus if asked.

    A missing store is built only when ``config.data.build_if_missing`` names the corpus
    **and** ``config.data.store`` is that corpus's default folder
    (:data:`DEFAULT_BUILD_STORES`) or ``config.data.build_anywhere`` is true; any other
    missing store is an error (a mistyped path must not silently get a demo corpus).
    """
    store = os.path.expanduser(config.data.store)
    index = os.path.join(store, f"{config.data.split}.index.json")
    if os.path.exists(index):
        return store
    corpus = config.data.get("build_if_missing") or ""
    if corpus:
        if corpus not in DEFAULT_BUILD_STORES:
            raise ConfigError(
                f"config.data.build_if_missing={corpus!r}: only the embedded "
                f"{', '.join(repr(c) for c in DEFAULT_BUILD_STORES)} corpus can be built automatically"
            )
        default = DEFAULT_BUILD_STORES[corpus]
        defaults = {os.path.abspath(default), os.path.abspath(os.path.join(_REPO, default))}
        if os.path.abspath(store) in defaults or config.data.get("build_anywhere", False):
            from data_pipeline import youcook2_mnc

            say(f"building the {corpus} corpus into {store} (first run only)")
            youcook2_mnc.build(store)
            return store
        raise FileNotFoundError(
            f"config.data.store={config.data.store!r} has no {config.data.split!r} split ({index} missing); "
            f"the {corpus} corpus is built automatically only into its default folder {default}: "
            f"to build it at {store} run `python -m data_pipeline.build {corpus} --out {store}` "
            "(or pass --config.data.build_anywhere=true), or correct the path"
        )
    raise FileNotFoundError(
        f"config.data.store={config.data.store!r} has no {config.data.split!r} split ({index} missing); "
        "convert features with `python -m data_pipeline.convert` or build the embedded corpus "
        "with `python -m data_pipeline.build youcook2-mnc --out DIR`"
    )


def build_model(config: ml_collections.ConfigDict) -> nnx.Module:
    """Random init, then the optional starting checkpoint (VideoCLIP/Norton .pt, safetensors, orbax)."""
    model = init_model(config.model, seed=config.train.seed)
    init = config.train.get("init_checkpoint")
    if init:
        from norton_jax import import_torch

        import_torch.load_pretrained(model, init)
        say(f"initialised the model from {init}")
    return model


def _close_iterator(iterator: Any) -> None:
    """Stops the input pipeline (worker processes, tf.data iterator)."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()
    else:
        iterator._it = None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) training; returns a summary dict (final step, last metrics, paths).

    The summary's ``"interrupted"`` is true when SIGTERM / SIGINT stopped the run (after a
    checkpoint was saved) and ``"signal"`` is that signal's number (None otherwise);
    ``"checkpoint"`` is the newest checkpoint on disk.  Raises
    :class:`~norton_jax.cli.ConfigError` (bad config), :class:`NonFiniteError` (NaN/inf),
    :class:`~norton_jax.checkpoint.CheckpointError` (a save failed, damaged checkpoints)
    and ``FileNotFoundError`` (no feature store).
    """
    validate_config(config)
    maybe_initialize_distributed(config)
    is_main = jax.process_index() == 0
    fileio.makedirs(workdir)
    ckpt = Checkpointer(
        fileio.join(workdir, "checkpoints"),
        max_to_keep=config.train.keep_checkpoints,
        save_interval_steps=1,
        model_config=config.model,
    )
    try:
        return _train(config, workdir, ckpt, is_main)
    finally:
        try:
            ckpt.close()
        except CheckpointError:
            pass  # already raised (or superseded by the error being raised) in _train


def _train(config: ml_collections.ConfigDict, workdir: str, ckpt: Checkpointer, is_main: bool) -> dict[str, Any]:
    ckpt.check_writable()
    precheck_resume(ckpt, config.model)  # before the corpus build and the model init
    store = resolve_store(config)

    mesh = make_mesh()
    num_devices = mesh.devices.size
    model = build_model(config)
    parts, trainable = split_model(model, config.train.trainable)
    total_steps = int(config.optim.get("total_steps") or config.train.steps)
    tx, schedule = make_optimizer(config.optim, total_steps)
    state = init_train_state(trainable, tx, config.train.seed)
    skipped = 0

    data_state = None
    restored = restore_for_resume(ckpt, model_config=model.config, params=nnx.state(model, nnx.Param),
                                  opt_state=state.opt_state, rng=state.rng)
    if restored is not None:
        nnx.update(model, restored.params)
        parts, trainable = split_model(model, config.train.trainable)
        state = state._replace(
            step=jnp.asarray(restored.step, jnp.int32),
            trainable=trainable,
            opt_state=restored.opt_state,
            rng=restored.rng,
        )
        data_state = (restored.extra or {}).get("data")
        skipped = int((restored.extra or {}).get("skipped_steps", 0))
        say(f"resumed from step {restored.step} of {workdir}")
    guard = NonFiniteGuard(config.train.get("on_non_finite", "stop"), config.train.get("max_skipped", 0),
                           skipped=skipped)
    tx = guard.wrap(tx)  # "skip": a non-finite step leaves parameters and optimiser state as they were
    validator = None
    if int(config.train.get("eval_every", 0) or 0) > 0:
        val_split = config.data.get("val_split", "val")
        if not fileio.exists(fileio.join(store, f"{val_split}.index.json")):
            raise FileNotFoundError(
                f"config.train.eval_every={config.train.eval_every} evaluates the {val_split!r} split "
                f"(config.data.val_split) of {store}, which has none ({val_split}.index.json missing); convert "
                "held-out videos with `python -m data_pipeline.build per-video ... --out STORE --split val`, or set "
                "--config.train.eval_every=0"
            )
        validator = ValidationLoss(config, store)
    if is_main:  # only now: a failed resume check leaves the workdir's config.json as it was
        write_workdir_json(workdir, "config.json", config.to_dict())

    pipeline = PipelineConfig(
        videos_per_device=config.data.videos_per_device,
        seed=config.data.seed,
        layout="flat",
        num_local_devices=jax.local_device_count(),
        num_parallel_calls=config.data.get("num_parallel_calls", -1),
    )
    iterator = TrainIterator(store, config.data.split, pipeline, state=data_state)
    try:
        return _loop(config, workdir, ckpt, is_main, mesh, num_devices, parts, state, tx, schedule,
                     pipeline, iterator, guard, validator)
    finally:
        _close_iterator(iterator)


def _loop(config, workdir, ckpt, is_main, mesh, num_devices, parts, state, tx, schedule, pipeline,
          iterator, guard: NonFiniteGuard, validator: ValidationLoss | None) -> dict[str, Any]:
    if config.train.hard_negatives.enabled:
        iterator.order_fn = hard_negatives.EpochPlanner(
            config=config, workdir=workdir, iterator=iterator,
            embed_fn=lambda: merge_model(parts, state.trainable),
        )

    parts = ModelParts(parts.graphdef, replicate(parts.frozen, mesh), replicate(parts.rest, mesh))
    state = replicate(state, mesh)
    train_step = make_train_step(
        parts, tx, mesh,
        loss_config=LossConfig.from_config(config.loss),
        negatives=config.train.negatives,
    )
    start = int(state.step)
    logger = MetricLogger(workdir, enabled=is_main, start_step=start)

    def extra() -> dict[str, Any]:
        return {"data": iterator.state(), "skipped_steps": guard.skipped}

    def save(step: int) -> None:
        full = merge_model(parts, state.trainable)
        ckpt.save(step, params=nnx.state(full, nnx.Param), opt_state=state.opt_state, rng=state.rng,
                  extra=extra(), force=True)

    eval_every = int(config.train.get("eval_every", 0) or 0)

    def validate(step: int) -> dict[str, float]:
        """The validation loss of the current parameters; keeps the step if it is the best."""
        full = merge_model(parts, state.trainable)
        val = validator(full)
        if ckpt.save_best(step, val["val/loss_total"], params=nnx.state(full, nnx.Param),
                          opt_state=state.opt_state, rng=state.rng, extra=extra()):
            say(f"step {step}: validation loss {val['val/loss_total']:.4f}, the best so far: kept in "
                f"{ckpt.best_directory}")
        return val

    stop_at = int(config.train.steps)
    stop_early = config.train.get("stop_after_steps")  # simulates an interruption (tests)
    if stop_early:
        stop_at = min(stop_at, start + int(stop_early))
    last: dict[str, float] = {}
    step = start
    progress = None
    if is_main and config.train.get("progress", True):
        from tqdm import tqdm

        progress = tqdm(total=int(config.train.steps), initial=start, desc="train", unit="step",
                        dynamic_ncols=True, file=sys.stderr)
    stop = StopRequested()
    try:
        with stop:
            t_prev = time.perf_counter()
            while step < stop_at:
                batch = next(iterator)
                state, metrics = train_step(state, shard_batch(batch, mesh))
                step += 1
                # Two scalars per step: a bad step stops the run (or, "skip", is counted) before
                # anything is saved.
                skipped = guard.check(metrics, step)
                val = validate(step) if validator is not None and step % eval_every == 0 else {}
                if step % config.train.log_every == 0 or step == stop_at or stop.requested or skipped or val:
                    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    if guard.mode == "skip":
                        metrics["skipped_steps"] = float(guard.skipped)
                    metrics.update(val)
                    now = time.perf_counter()
                    metrics["lr"] = float(schedule(step - 1))
                    metrics["step_time_s"] = (now - t_prev) / config.train.log_every
                    metrics["sequences_per_s"] = (
                        num_devices * config.data.videos_per_device * pipeline.clips_per_video
                        / config.loss.seq_len / max(metrics["step_time_s"], 1e-9))
                    t_prev = now
                    logger.write(step, metrics)
                    last = metrics
                    if progress is not None:
                        progress.set_postfix(loss=f"{metrics['loss_total']:.4f}")
                if progress is not None:
                    progress.update(1)
                if step % config.train.checkpoint_every == 0 or step == stop_at or stop.requested:
                    save(step)
                if stop.requested:
                    say(f"stopped at step {step} on request; resume with the same --workdir")
                    break
    except BaseException as exc:
        ckpt.finish_after_error(exc, report=say)
        raise
    finally:
        logger.close()
        if progress is not None:
            progress.close()
    # Pending (asynchronous) writes must have succeeded before the run reports success.
    ckpt.wait_until_finished()
    latest = ckpt.latest_step()
    summary = {
        "step": step,
        "workdir": workdir,
        "checkpoint": None if latest is None else fileio.join(workdir, "checkpoints", str(latest)),
        "metrics": last,
        **({"skipped_steps": guard.skipped} if guard.mode == "skip" else {}),
        **({"best": ckpt.best_record()} if validator is not None else {}),
        "interrupted": bool(stop.requested),
        "signal": stop.signum if stop.requested else None,
    }
    if is_main:
        write_workdir_json(workdir, "summary.json", summary)
    return summary


_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and config go.")
_DEBUG = flags.DEFINE_bool("debug", False, f"Show the full traceback of an error (or set {cli.DEBUG_ENV}=1).")


def config_and_workdir_from_flags() -> tuple[ml_collections.ConfigDict, str]:
    """``--config`` and ``--workdir`` (both required); quiets orbax."""
    return absl_cli.config_and_workdir(_CONFIG.value, _WORKDIR.value, debug=_DEBUG.value)


def main(argv: list[str]) -> int:
    del argv
    config, workdir = config_and_workdir_from_flags()
    summary = train_and_evaluate(config, workdir)
    if jax.process_index() == 0:
        print(json.dumps(summary, indent=2))
    return exit_status(summary)


def run_absl_cli(main_fn, prog: str) -> None:
    """:func:`norton_jax.training.absl_cli.run_absl_cli` with this command's ``--debug``."""
    absl_cli.run_absl_cli(main_fn, prog, debug=lambda: _DEBUG.value)


if __name__ == "__main__":
    run_absl_cli(main, "python -m norton_jax.train")
