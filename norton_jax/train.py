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

A non-finite loss, gradient or input stops the run with :class:`NonFiniteError` before
anything is saved, so the last good checkpoint stays intact.  SIGTERM (and Ctrl-C)
saves a checkpoint at the next step boundary and exits cleanly.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow (tf.data, TensorBoard) loads
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # TF only runs tf.data and summaries here
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
from norton_jax.checkpoint import Checkpointer
from norton_jax.models.dual_encoder import init_model
from norton_jax.training import hard_negatives
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


class NonFiniteError(FloatingPointError):
    """Training produced (or was fed) NaN/inf; the message names what and at which step."""


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


class MetricLogger:
    """JSON lines + TensorBoard scalars, written by process 0 only."""

    def __init__(self, workdir: str, enabled: bool):
        self.enabled = enabled
        self.writer = None
        if enabled:
            from flax.metrics import tensorboard

            self.path = os.path.join(workdir, "metrics.jsonl")
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

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def resolve_store(config: ml_collections.ConfigDict) -> str:
    """The feature-store directory of ``config.data``, building the embedded corpus if asked."""
    store = os.path.expanduser(config.data.store)
    index = os.path.join(store, f"{config.data.split}.index.json")
    if not os.path.exists(index):
        if config.data.get("build_if_missing"):
            if config.data.build_if_missing != "youcook2-mnc":
                raise ValueError(
                    f"config.data.build_if_missing={config.data.build_if_missing!r}: only the embedded "
                    "'youcook2-mnc' corpus can be built automatically"
                )
            from data_pipeline import youcook2_mnc

            say(f"building the youcook2-mnc corpus into {store} (first run only)")
            youcook2_mnc.build(store)
        else:
            raise FileNotFoundError(
                f"config.data.store={store!r} has no {config.data.split!r} split ({index} missing); "
                "convert features with `python -m data_pipeline.convert` or build the embedded corpus "
                "with `python -m data_pipeline.build youcook2-mnc --out DIR`"
            )
    return store


def build_model(config: ml_collections.ConfigDict) -> nnx.Module:
    """Random init, then the optional starting checkpoint (VideoCLIP/Norton .pt, safetensors, orbax)."""
    model = init_model(config.model, seed=config.train.seed)
    init = config.train.get("init_checkpoint")
    if init:
        from norton_jax import import_torch

        import_torch.load_pretrained(model, init)
        say(f"initialised the model from {init}")
    return model


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) training; returns a summary dict (final step, last metrics, paths)."""
    maybe_initialize_distributed(config)
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    if is_main:
        _write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict())

    mesh = make_mesh()
    num_devices = mesh.devices.size
    model = build_model(config)
    parts, trainable = split_model(model, config.train.trainable)
    total_steps = int(config.optim.get("total_steps") or config.train.steps)
    tx, schedule = make_optimizer(config.optim, total_steps)
    state = init_train_state(trainable, tx, config.train.seed)

    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=config.train.keep_checkpoints,
        save_interval_steps=1,
        model_config=model.config,
    )
    data_state = None
    if ckpt.latest_step() is not None:
        restored = ckpt.restore(
            params=nnx.state(model, nnx.Param), opt_state=state.opt_state, rng=state.rng
        )
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

    store = resolve_store(config)
    pipeline = PipelineConfig(
        videos_per_device=config.data.videos_per_device,
        seed=config.data.seed,
        layout="flat",
        num_local_devices=jax.local_device_count(),
        num_parallel_calls=config.data.get("num_parallel_calls", -1),
    )
    iterator = TrainIterator(store, config.data.split, pipeline, state=data_state)
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
    logger = MetricLogger(workdir, enabled=is_main)

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

    start = int(state.step)
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
    try:
        with _StopRequested() as stop:
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
    finally:
        # Pending (async) checkpoint writes finish even when the loop raised.
        ckpt.wait_until_finished()
        ckpt.close()
        logger.close()
        if progress is not None:
            progress.close()
    summary = {
        "step": step,
        "workdir": workdir,
        "checkpoint": os.path.join(workdir, "checkpoints", str(step)),
        "metrics": last,
        "interrupted": bool(stop.requested),
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


def config_and_workdir_from_flags() -> tuple[ml_collections.ConfigDict, str]:
    """``--config`` and ``--workdir`` (both required) for the training CLIs; quiets orbax."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    config = _CONFIG.value
    if config is None or _WORKDIR.value is None:
        raise app.UsageError("--config and --workdir are required")
    return config, _WORKDIR.value


def main(argv: list[str]) -> None:
    del argv
    config, workdir = config_and_workdir_from_flags()
    summary = train_and_evaluate(config, workdir)
    if jax.process_index() == 0:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app.run(main)
