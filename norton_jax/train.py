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
* ``metrics.jsonl`` and TensorBoard events (process 0 only);
* ``batches/epoch_<e>.json`` - the hard-negative batch plan of each epoch, when enabled.

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
  anything is saved, so the last good checkpoint stays intact (exit status 3);
* a checkpoint that cannot be written (read-only folder, full disk) stops the run with
  one error naming the step and the folder (exit status 2); earlier steps stay intact;
* SIGTERM (and Ctrl-C) saves a checkpoint at the next step boundary and stops; the
  summary says ``"interrupted": true`` and the ``"signal"``, and the command exits with
  ``128 + signal`` (143, 130).
"""

from __future__ import annotations

import json
import os
import threading

from data_pipeline.tf_utils import configure_tensorflow_environment  # noqa: E402

configure_tensorflow_environment()  # before TensorFlow (tf.data, TensorBoard) loads
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from data_pipeline.input_pipeline import PipelineConfig, TrainIterator
from norton_jax import cli
from norton_jax.checkpoint import CheckpointDamagedError, CheckpointError, Checkpointer
from norton_jax.cli import ConfigError, NonFiniteError  # noqa: F401 - NonFiniteError: re-exported
from norton_jax.models.config import ModelConfig
from norton_jax.models.dual_encoder import init_model
from norton_jax.training import hard_negatives
from norton_jax.training.validate import validate_config
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


def say(message: str, *, source: str = "norton_jax.train") -> None:
    """A one-line progress message on process 0 (stderr), independent of log verbosity."""
    if jax.process_index() == 0:
        print(f"[{source}] {message}", file=sys.stderr, flush=True)


def loss_kwargs_from_config(loss: ml_collections.ConfigDict) -> dict[str, Any]:
    """Keyword arguments of :func:`norton_jax.losses.norton_loss` from ``config.loss``."""
    return dict(
        weight=loss.weight,
        beta=loss.beta,
        seq_len=loss.seq_len,
        prompt_ratio=loss.prompt_ratio,
        epsilon=loss.epsilon,
        alpha=loss.alpha,
        fusion_weight=loss.fusion_weight,
        num_iters=loss.num_iters,
        clip_similarity_kind=loss.clip_similarity_kind,
        fine_grained=loss.fine_grained,
        sequence_distance=loss.get("sequence_distance", "ot"),
        chunk_size=loss.chunk_size,
    )


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """``jax.distributed.initialize()`` only when the config or the environment asks."""
    if config.train.get("distributed", False) or os.environ.get("NORTON_DISTRIBUTED") == "1":
        jax.distributed.initialize()


def _write_json_atomic(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def truncate_metrics(path: str, last_step: int) -> int:
    """Drops the rows of ``path`` (JSON lines) with ``step > last_step``; returns how many.

    A run killed after logging a step but before its checkpoint was written logs that step
    again once resumed; cutting the file back to the restored step keeps one row per step.
    Unreadable lines (a row torn by the kill) are dropped too.  The file is rewritten
    atomically (a new file, then a rename).
    """
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
                step = int(row["step"])
            except (ValueError, KeyError, TypeError):
                dropped += 1
                continue
            if step > last_step:
                dropped += 1
                continue
            kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return dropped


class MetricLogger:
    """JSON lines + TensorBoard scalars, written by process 0 only.

    ``start_step``: the step the run starts from; rows of ``metrics.jsonl`` after it (left
    by an earlier run that was killed before saving) are dropped first.
    """

    def __init__(self, workdir: str, enabled: bool, *, start_step: int | None = None):
        self.enabled = enabled
        self.writer = None
        if enabled:
            from flax.metrics import tensorboard

            self.path = os.path.join(workdir, "metrics.jsonl")
            if start_step is not None:
                truncate_metrics(self.path, int(start_step))
            self.file = open(self.path, "a")
            self.writer = tensorboard.SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        for k, v in metrics.items():
            self.writer.scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.writer.close()


class _StopRequested:
    """Flag set by SIGTERM / SIGINT; the loop saves and exits at the next step boundary."""

    def __init__(self):
        self.requested = False
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test thread)
                pass
        return self

    def _handle(self, signum, frame):
        say(f"signal {signum} received: saving a checkpoint and stopping")
        self.requested = True
        self.signum = int(signum)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


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


#: ModelConfig fields that change the parameters' shapes or dtypes.
GEOMETRY_FIELDS = (
    "hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_video_layers",
    "num_hidden_text_layers", "vocab_size", "max_position_embeddings", "type_vocab_size",
    "video_input_dim", "num_labels", "param_dtype",
)


def check_resume_geometry(stored: dict[str, Any] | None, model_config: Any, directory: str) -> None:
    """Raises :class:`ConfigError` when the checkpoints in ``directory`` were written for
    another model geometry than ``model_config``; the message lists the differing fields."""
    if not stored:
        return
    current = ModelConfig.from_any(model_config).to_dict()
    diffs = [f"{k}: checkpoint {stored[k]!r} vs config {current[k]!r}"
             for k in GEOMETRY_FIELDS if k in stored and stored[k] != current[k]]
    if diffs:
        raise ConfigError(
            f"{directory} holds checkpoints of another model geometry than config.model "
            f"({'; '.join(diffs)}); pass another --workdir, or set config.model back to the "
            "checkpoint's values to resume"
        )


def precheck_resume(ckpt: Checkpointer, model_config: Any) -> None:
    """Before the model is built: the newest step whose metadata can be read must have the
    config's geometry (a damaged step is left to :func:`restore_for_resume`)."""
    for step in reversed(ckpt.all_steps()):
        try:
            stored = ckpt.model_config(step, suggest_other_steps=False)
        except CheckpointDamagedError:
            continue
        check_resume_geometry(stored, model_config, ckpt.directory)
        return


def restore_for_resume(ckpt: Checkpointer, *, model_config: Any, params: Any, opt_state: Any, rng: Any,
                       report=say, set_aside: bool = True):
    """Restores the newest intact step of ``ckpt`` (None when there is none).

    Damaged steps (files missing, truncated or not matching their checksum) are skipped
    and said with ``report``; with ``set_aside`` they are moved to
    ``<checkpoints>.damaged/`` once an earlier step was restored, so that the resumed run
    can save those steps again.  A step of another geometry raises :class:`ConfigError`;
    every step damaged raises :class:`~norton_jax.checkpoint.CheckpointDamagedError`;
    nothing is moved then.
    """
    steps = ckpt.all_steps()
    if not steps:
        return None
    damaged: list[tuple[int, CheckpointDamagedError]] = []
    restored = None
    for step in reversed(steps):
        try:
            check_resume_geometry(ckpt.model_config(step, suggest_other_steps=False), model_config,
                                  ckpt.directory)
            restored = ckpt.restore(step, params=params, opt_state=opt_state, rng=rng,
                                    suggest_other_steps=False)
        except CheckpointDamagedError as err:
            damaged.append((step, err))
            report(f"{err}; trying an earlier step" if step != steps[0] else str(err))
            continue
        break
    if restored is None:
        raise CheckpointDamagedError(
            f"every checkpoint in {ckpt.directory} is damaged (steps {steps}); move that folder "
            "away (or pass another --workdir) to start from scratch",
            directory=ckpt.directory,
        )
    for step, _ in damaged if set_aside else ():
        report(f"moved the damaged step {step} to {ckpt.set_aside(step)}")
    if damaged:
        report(f"resuming from step {restored.step}, the newest intact checkpoint in {ckpt.directory}")
    return restored


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
    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
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
        say(f"resumed from step {restored.step} of {workdir}")
    if is_main:  # only now: a failed resume check leaves the workdir's config.json as it was
        _write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict())

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
                     pipeline, iterator)
    finally:
        _close_iterator(iterator)


def _loop(config, workdir, ckpt, is_main, mesh, num_devices, parts, state, tx, schedule, pipeline,
          iterator) -> dict[str, Any]:
    if config.train.hard_negatives.enabled:
        iterator.order_fn = hard_negatives.EpochPlanner(
            config=config, workdir=workdir, iterator=iterator,
            embed_fn=lambda: merge_model(parts, state.trainable),
        )

    parts = ModelParts(parts.graphdef, replicate(parts.frozen, mesh), replicate(parts.rest, mesh))
    state = replicate(state, mesh)
    train_step = make_train_step(
        parts, tx, mesh,
        loss_kwargs=loss_kwargs_from_config(config.loss),
        negatives=config.train.negatives,
    )
    start = int(state.step)
    logger = MetricLogger(workdir, enabled=is_main, start_step=start)

    def save(step: int) -> None:
        full = merge_model(parts, state.trainable)
        ckpt.save(
            step,
            params=nnx.state(full, nnx.Param),
            opt_state=state.opt_state,
            rng=state.rng,
            extra={"data": iterator.state()},
            force=True,
        )

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
    stop = _StopRequested()
    try:
        with stop:
            t_prev = time.perf_counter()
            while step < stop_at:
                batch = next(iterator)
                state, metrics = train_step(state, shard_batch(batch, mesh))
                step += 1
                # Two scalars per step: a bad step stops the run before anything is saved.
                if min(jax.device_get((metrics["inputs_finite"], metrics["finite"]))) < 1:
                    _raise_if_non_finite({k: float(v) for k, v in jax.device_get(metrics).items()}, step)
                if step % config.train.log_every == 0 or step == stop_at or stop.requested:
                    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
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
        "checkpoint": None if latest is None else os.path.join(workdir, "checkpoints", str(latest)),
        "metrics": last,
        "interrupted": bool(stop.requested),
        "signal": stop.signum if stop.requested else None,
    }
    if is_main:
        _write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    return summary


def _raise_if_non_finite(metrics: dict[str, float], step: int) -> None:
    if metrics.get("inputs_finite", 1.0) < 1:
        raise NonFiniteError(
            f"step {step}: the input batch field 'vfeats' holds NaN or inf; stopping before "
            "saving (the last good checkpoint is kept). Check the feature store."
        )
    if metrics.get("finite", 1.0) < 1:
        bad = [k for k in ("loss_total", "loss_clip_caption", "loss_video_paragraph", "grad_norm")
               if not np.isfinite(metrics.get(k, 0.0))]
        raise NonFiniteError(
            f"step {step}: non-finite {', '.join(bad) or 'loss/gradient'}; stopping before saving "
            "(the last good checkpoint is kept)"
        )


_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and config go.")
_DEBUG = flags.DEFINE_bool("debug", False, f"Show the full traceback of an error (or set {cli.DEBUG_ENV}=1).")


class _NoOrbaxTracebacks:
    """A logging filter: orbax's error records keep their one-line message, lose the traceback
    (the failure itself reaches the user as one ``error:`` line; ``--debug`` keeps them)."""

    def filter(self, record) -> bool:
        if f"{os.sep}orbax{os.sep}" in (record.pathname or ""):
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def config_and_workdir_from_flags() -> tuple[ml_collections.ConfigDict, str]:
    """``--config`` and ``--workdir`` (both required) for the training CLIs; quiets orbax."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    if not cli.debug_requested(["--debug"] if _DEBUG.value else []):
        logging.get_absl_handler().addFilter(_NoOrbaxTracebacks())
    config = _CONFIG.value
    if config is None or _WORKDIR.value is None:
        raise cli.UserError("--config and --workdir are required (e.g. --config configs/tiny.py --workdir DIR)")
    return config, _WORKDIR.value


def exit_status(summary: dict[str, Any]) -> int:
    """0 for a completed run, ``128 + signal`` for one stopped by SIGTERM / SIGINT."""
    if summary.get("interrupted"):
        return cli.interrupted_exit_code(summary.get("signal") or signal.SIGTERM)
    return cli.EXIT_OK


def main(argv: list[str]) -> int:
    del argv
    config, workdir = config_and_workdir_from_flags()
    summary = train_and_evaluate(config, workdir)
    if jax.process_index() == 0:
        print(json.dumps(summary, indent=2))
    return exit_status(summary)


def _exit_watchdog(code: int, prog: str, grace_s: float = 30.0) -> None:
    """After a failed or interrupted run, ends the process if threads still block its exit.

    A daemon thread: when the interpreter exits normally it simply disappears.
    """
    if code == cli.EXIT_OK:
        return

    def end() -> None:
        time.sleep(grace_s)
        print(f"{prog}: background threads still running {grace_s:.0f} s after the end; exiting",
              file=sys.stderr, flush=True)
        os._exit(code)

    threading.Thread(target=end, name="norton-exit-watchdog", daemon=True).start()


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with a flag mistake (an unknown flag or config field, a value of
    the wrong type) reported as one ``error:`` line, exit status 2."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as err:
        if cli.debug_requested(argv):
            raise
        text = str(err)
        while len(text) > 1 and text[0] == text[-1] == "'":  # a KeyError's quoted message
            text = text[1:-1].replace("\\'", "'").replace("\\n", " ")
        print(f"{_PROG}: error: bad flag: {' '.join(text.split())}  (--helpfull lists the flags)",
              file=sys.stderr)
        sys.exit(cli.EXIT_USER_ERROR)


_PROG = "norton_jax"


def run_absl_cli(main_fn, prog: str) -> None:
    """Runs an absl ``main_fn(argv) -> status`` the way every norton-jax command does
    (:func:`norton_jax.cli.run`: one ``error:`` line per user mistake, ``--debug`` for the
    traceback) and exits with its status."""

    global _PROG
    _PROG = prog

    def absl_main(argv: list[str]) -> int:
        code = cli.run(lambda _: main_fn(argv), ["--debug"] if _DEBUG.value else [], prog=prog)
        _exit_watchdog(code, prog)
        return code

    app.run(absl_main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run_absl_cli(main, "python -m norton_jax.train")
