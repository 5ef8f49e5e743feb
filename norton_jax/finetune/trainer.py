"""The fine-tuning loop (spec §5.5-5.7): the pre-training machinery with a task loss.

Everything but the data and the loss is shared with pre-training (:mod:`norton_jax.training`): the
``shard_map`` train step over the ``("data",)`` mesh (:func:`~norton_jax.training.step.make_train_step`
with a ``loss_fn``), Adam with warm-up + linear decay + clipping
(:func:`~norton_jax.training.step.make_optimizer`), orbax checkpoints
(:class:`~norton_jax.checkpoint.Checkpointer`), the metrics JSONL/TensorBoard logger,
the non-finite guard (``train.on_non_finite``: ``"stop"`` or ``"skip"``) and the SIGTERM
handler (:mod:`norton_jax.training.metrics`, :mod:`~norton_jax.training.guards`,
:mod:`~norton_jax.training.resume`).  Workdir files other than orbax's go through
:mod:`data_pipeline.fileio` (a ``gs://`` workdir works).

What a run writes to ``workdir``: ``config.json``; ``checkpoints/<step>/`` (parameters incl.
the COIN classifier, optimiser state, RNG) every ``train.checkpoint_every`` steps (0 = every
epoch) and at the end; ``metrics.jsonl`` + TensorBoard (train rows, and ``eval/*`` rows of
the test-split evaluations); ``eval_step<N>.json`` per evaluation; ``summary.json``.
A restarted run with the same workdir resumes from the latest checkpoint: batches are a
function of the step, so it continues exactly.

The safety checks are those of pre-training (:mod:`norton_jax.train`): the config is
validated first (:func:`~norton_jax.finetune.config.validate_finetune_config`), resuming
checks the geometry and skips damaged steps, ``config.json`` is written after those checks,
``metrics.jsonl`` is cut back to the restored step, a failed save stops the run with one
error, and SIGTERM / SIGINT save and stop with ``"signal"`` in the summary (the command
then exits with ``128 + signal``).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from data_pipeline import fileio
from norton_jax.checkpoint import CheckpointError, Checkpointer, checkpoint_root, parse_step
from norton_jax.finetune.config import validate_finetune_config
from norton_jax.finetune.data import (
    COINBatches,
    CaptionBatches,
    load_coin_train,
    load_msrvtt_train,
    resolve_in,
)
from norton_jax.finetune.evaluate import evaluate_task, main_metric
from norton_jax.finetune.losses import make_loss_fn
from norton_jax.models.dual_encoder import DualEncoder, init_model
from norton_jax.training.guards import NonFiniteGuard, StopRequested
from norton_jax.training.metrics import MetricLogger, write_workdir_json
from norton_jax.training.progress import maybe_initialize_distributed
from norton_jax.training.progress import say as train_say
from norton_jax.training.resume import check_resume_geometry, precheck_resume, restore_for_resume
from norton_jax.training.validation import host_copy
from norton_jax.training.step import (ModelParts, init_train_state, make_mesh, make_optimizer, make_train_step,
                                      merge_model, replicate, shard_batch, split_model)


say = functools.partial(train_say, source="norton_jax.finetune")


# ---------------------------------------------------------------------------------------
# Model initialisation
# ---------------------------------------------------------------------------------------


def _orbax_dir(path: str) -> str | None:
    """The orbax root of a workdir / checkpoints folder, or None for a file."""
    return checkpoint_root(path) if os.path.isdir(path) else None


def _has_classifier(path: str) -> bool:
    """Whether the starting checkpoint carries a ``video_encoder.classifier``."""
    root = _orbax_dir(path)
    if root is not None:
        with Checkpointer(root, max_to_keep=None, enable_async=False) as ckpt:
            return int((ckpt.model_config() or {}).get("num_labels", 0)) > 0
    from norton_jax import import_torch  # noqa: PLC0415
    from norton_jax.models.keys import normalise_key  # noqa: PLC0415

    if path.endswith(".safetensors"):
        from safetensors import safe_open  # noqa: PLC0415

        with safe_open(path, framework="numpy") as f:
            keys = list(f.keys())
    else:
        keys = list(import_torch.read_state_dict(path)[0])
    return any(normalise_key(k) == "video_encoder.classifier.weight" for k in keys)


def _load_orbax_step(model: DualEncoder, root: str, step: int | str) -> None:
    """``model``'s parameters from step ``step`` (an integer or ``"best"``) of the orbax folder ``root``."""
    with Checkpointer(root, max_to_keep=None, enable_async=False) as ckpt:
        check_resume_geometry(ckpt.model_config(step), model.config, root)
        restored = ckpt.restore(step, params=nnx.state(model, nnx.Param))
    nnx.update(model, restored.params)


def load_init(model: DualEncoder, path: str, *, seed: int = 0, step: int | str | None = None) -> str:
    """Fills ``model`` from a pre-trained checkpoint (reference ``.pt``, ``.safetensors``
    export, orbax checkpoint folder or training workdir); returns a description.

    ``step`` (orbax folders only; ``--init_step``): an integer, ``"best"`` (the step with the
    lowest validation loss, :meth:`~norton_jax.checkpoint.Checkpointer.save_best`) or
    None / ``"latest"`` for the latest step.

    A model with a COIN classifier (``model.num_labels > 0``) started from a checkpoint
    without one (every pre-trained Norton / VideoCLIP checkpoint) keeps its freshly
    initialised classifier (BERT init, N(0, 0.02), bias 0) and loads everything else.
    """
    from norton_jax import import_torch  # noqa: PLC0415

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"--init checkpoint not found: {path}")
    step = parse_step(step)
    source = _orbax_dir(path) or path
    if step is not None and _orbax_dir(path) is None:
        raise ValueError(f"--init_step {step} names a step of an orbax checkpoint folder; {path} is a file")

    def load(target: DualEncoder) -> None:
        if step is None:
            import_torch.load_pretrained(target, source)
        else:
            _load_orbax_step(target, source, step)

    where = source if step is None else f"{source} (step {step})"
    if model.config.num_labels > 0 and not _has_classifier(path):
        backbone = DualEncoder(model.config.replace(num_labels=0), rngs=nnx.Rngs(params=seed, dropout=seed + 1))
        load(backbone)
        nnx.update(model, nnx.state(backbone, nnx.Param))
        return f"{where} (classifier newly initialised)"
    load(model)
    return where


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def build_batches(config: ml_collections.ConfigDict, data_dir: str, num_devices: int):
    """The task's training batches (:class:`CaptionBatches` / :class:`COINBatches`)."""
    from norton_jax.evaluate.run import Layout  # noqa: PLC0415

    d, task = config.data, config.task
    common = dict(seed=int(d.seed), num_devices=num_devices,
                  process_index=jax.process_index(), process_count=jax.process_count())
    features = resolve_in(data_dir, d.features)
    if task == "coin":
        train = load_coin_train(resolve_in(data_dir, d.train_list), features,
                                num_labels=config.model.num_labels, missing=d.missing)
        return COINBatches(train, videos_per_device=int(config.train.videos_per_device),
                           stride=int(d.stride), size=int(d.size), **common)
    train = load_msrvtt_train(resolve_in(data_dir, d.train_list), resolve_in(data_dir, d.captions), features,
                              missing=d.missing)
    return CaptionBatches(train, batch_size=int(config.train.batch_size),
                          layout=Layout(int(d.max_video_len), int(d.max_len)), dup=int(d.dup), **common)


def check_config(config: ml_collections.ConfigDict) -> None:
    """One :class:`~norton_jax.cli.ConfigError` listing every bad field the loop relies on."""
    validate_finetune_config(config)


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------


def _host_model(parts: ModelParts, trainable: Any) -> DualEncoder:
    """An eval copy of the model with host-fetched (then single-device) parameters."""
    return host_copy(merge_model(parts, trainable))


def finetune(config: ml_collections.ConfigDict, workdir: str, *, eval_only: bool = False) -> dict[str, Any]:
    """Runs (or resumes) fine-tuning of ``config.task``; returns the summary dict.

    ``eval_only``: no training; evaluate the latest checkpoint of ``workdir`` (or the
    ``--init`` model when there is none) on the test split.
    """
    check_config(config)
    maybe_initialize_distributed(config)
    is_main = jax.process_index() == 0
    fileio.makedirs(workdir)
    data_dir = os.path.expanduser(config.data.dir)
    ckpt = Checkpointer(
        fileio.join(workdir, "checkpoints"),
        max_to_keep=int(config.train.keep_checkpoints),
        model_config=config.model,
    )
    try:
        return _finetune(config, workdir, ckpt, data_dir, is_main, eval_only)
    finally:
        try:
            ckpt.close()
        except CheckpointError:
            pass  # already raised (or superseded by the error being raised) in _finetune


def _finetune(config, workdir, ckpt, data_dir, is_main, eval_only) -> dict[str, Any]:
    if not eval_only:
        ckpt.check_writable()
    precheck_resume(ckpt, config.model)
    mesh = make_mesh()
    num_devices = mesh.devices.size
    model = init_model(config.model, seed=int(config.train.seed))
    resumed = ckpt.latest_step() is not None
    if not resumed and config.train.get("init_checkpoint"):
        say("initialised from " + load_init(model, config.train.init_checkpoint, seed=int(config.train.seed),
                                            step=config.train.get("init_step") or None))
    elif not resumed:
        say("no --init checkpoint and no checkpoint in the workdir: starting from a random initialisation")

    batches = None if eval_only else build_batches(config, data_dir, num_devices)
    steps_per_epoch = batches.steps_per_epoch if batches is not None else 1
    total = int(config.train.get("steps") or 0) or int(config.train.epochs) * steps_per_epoch
    tx, schedule = make_optimizer(config.optim, int(config.optim.get("total_steps") or total))
    parts, trainable = split_model(model, config.train.trainable)
    state = init_train_state(trainable, tx, int(config.train.seed))
    skipped = 0
    if resumed:
        restored = restore_for_resume(ckpt, model_config=model.config, params=nnx.state(model, nnx.Param),
                                      opt_state=state.opt_state, rng=state.rng, report=say,
                                      set_aside=not eval_only)
        nnx.update(model, restored.params)
        parts, trainable = split_model(model, config.train.trainable)
        state = state._replace(step=jnp.asarray(restored.step, jnp.int32), trainable=trainable,
                               opt_state=restored.opt_state, rng=restored.rng)
        skipped = int((restored.extra or {}).get("skipped_steps", 0))
        say(f"{'evaluating' if eval_only else 'resumed from'} step {restored.step} of {workdir}")
    if is_main and not eval_only:  # only now: a failed resume check leaves config.json as it was
        write_workdir_json(workdir, "config.json", config.to_dict())
    guard = NonFiniteGuard(config.train.get("on_non_finite", "stop"), config.train.get("max_skipped", 0),
                           skipped=skipped, report=say)
    tx = guard.wrap(tx)  # "skip": a non-finite step leaves parameters and optimiser state as they were

    parts = ModelParts(parts.graphdef, replicate(parts.frozen, mesh), replicate(parts.rest, mesh))
    live = {"state": replicate(state, mesh)}  # the current TrainState (donated each step)
    start = int(live["state"].step)
    # Training cuts metrics.jsonl back to the restored step; evaluation only appends its rows.
    logger = MetricLogger(workdir, enabled=is_main, start_step=None if eval_only else start)
    evaluations: dict[int, dict[str, Any]] = {}

    def evaluate(step: int) -> None:
        if not is_main:
            return
        t0 = time.perf_counter()
        result = evaluate_task(_host_model(parts, live["state"].trainable), config, data_dir)
        result["step"] = step
        result["seconds"] = round(time.perf_counter() - t0, 3)
        evaluations[step] = result
        write_workdir_json(workdir, f"eval_step{step}.json", result)
        logger.write(step, {f"eval/{k}": float(v) for k, v in result["metrics"].items()})
        key = main_metric(config.task)
        say(f"step {step}: test {key} = {result['metrics'][key]:.4f} ({result['counts']})")

    def save(step: int) -> None:
        full = merge_model(parts, live["state"].trainable)
        ckpt.save(step, params=nnx.state(full, nnx.Param), opt_state=live["state"].opt_state,
                  rng=live["state"].rng,
                  extra={"task": config.task, "epoch": step / steps_per_epoch, "skipped_steps": guard.skipped},
                  force=True)

    step = start
    stop = StopRequested(report=say)
    try:
        if eval_only:
            evaluate(start)
        else:
            if config.eval.at_start and start == 0:
                evaluate(0)
            loss_fn = make_loss_fn(config.task, config.train.get("negatives", "global"))
            train_step = make_train_step(parts, tx, mesh, loss_fn=loss_fn)
            step = _train_loop(config, live, train_step, mesh, schedule, batches, total, save, evaluate,
                               logger, stop, is_main, guard)
            ckpt.wait_until_finished()  # the last save must have been written before evaluating it
            if config.eval.at_end and step == total and step not in evaluations:
                evaluate(step)
    except BaseException as exc:
        ckpt.finish_after_error(exc, report=say)
        raise
    finally:
        logger.close()
    ckpt.wait_until_finished()
    latest = ckpt.latest_step()
    summary = {
        "task": config.task,
        "step": step,
        **({} if eval_only else {"total_steps": total, "steps_per_epoch": steps_per_epoch}),
        "workdir": workdir,
        "checkpoint": None if latest is None else fileio.join(workdir, "checkpoints", str(latest)),
        **({"skipped_steps": guard.skipped} if guard.mode == "skip" else {}),
        "interrupted": bool(stop.requested),
        "signal": stop.signum if stop.requested else None,
        "eval": {s: r["metrics"] for s, r in sorted(evaluations.items())},
    }
    if is_main:
        write_workdir_json(workdir, "eval_summary.json" if eval_only else "summary.json", summary)
    return summary


def _train_loop(config, live, train_step, mesh, schedule, batches, total, save, evaluate, logger, stop,
                is_main, guard: NonFiniteGuard) -> int:
    """Steps from ``live["state"].step`` to ``total`` (or ``train.stop_after_steps`` more);
    returns the last step.  Logs every ``train.log_every`` steps, saves every
    ``train.checkpoint_every`` steps (0 = every epoch) and at the end, evaluates every
    ``eval.every_steps`` (0 = never) steps; SIGTERM saves and stops at a step boundary."""
    tc = config.train
    every = int(tc.checkpoint_every) or batches.steps_per_epoch
    eval_every = int(config.eval.get("every_steps") or 0)
    start = int(live["state"].step)
    stop_at = total
    if tc.get("stop_after_steps"):
        stop_at = min(stop_at, start + int(tc.stop_after_steps))
    progress = None
    if is_main and tc.get("progress", True):
        from tqdm import tqdm  # noqa: PLC0415

        progress = tqdm(total=total, initial=start, desc=f"finetune {config.task}", unit="step",
                        dynamic_ncols=True, file=sys.stderr)
    step = start
    try:
        with stop:
            t_prev, last_logged = time.perf_counter(), start
            while step < stop_at:
                batch = shard_batch(batches(step), mesh, batches.keys)
                live["state"], metrics = train_step(live["state"], batch)
                step += 1
                # two scalars per step: a bad step stops the run (or, "skip", is counted) before
                # anything is saved
                skipped = guard.check(metrics, step)
                if step % tc.log_every == 0 or step == stop_at or stop.requested or skipped:
                    row = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    if guard.mode == "skip":
                        row["skipped_steps"] = float(guard.skipped)
                    now = time.perf_counter()
                    row["lr"] = float(schedule(step - 1))
                    row["epoch"] = step / batches.steps_per_epoch
                    row["step_time_s"] = (now - t_prev) / max(step - last_logged, 1)
                    t_prev, last_logged = now, step
                    logger.write(step, row)
                    if progress is not None:
                        progress.set_postfix(loss=f"{row['loss_total']:.4f}")
                if progress is not None:
                    progress.update(1)
                if step % every == 0 or step == stop_at or stop.requested:
                    save(step)
                if eval_every and step % eval_every == 0 and step != stop_at:
                    evaluate(step)
                if stop.requested:
                    say(f"stopped at step {step} on request; resume with the same --workdir")
                    break
    finally:
        if progress is not None:
            progress.close()
    return step
