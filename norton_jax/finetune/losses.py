"""Fine-tuning losses of the reference (spec §2.7, ``mmpt/losses/nce.py``, ``mmpt/losses/loss.py``).

==================================  =======================================  ===========
function                            reference                                task
==================================  =======================================  ===========
:func:`t2v_contrastive_loss`        ``T2VContraLoss``                        MSR-VTT retrieval (§5.5)
:func:`v2t_contrastive_loss`        ``V2TContraLoss``                        MSR-VTT QA (§5.6)
:func:`frame_cross_entropy`         ``CrossEntropy`` (ignore index -100)     COIN (§5.7)
==================================  =======================================  ===========

Both contrastive losses are one-directional cross-entropies over raw dot products of the
pooled (un-normalised) embeddings, with no temperature (trap T1), mean over the batch.

:func:`make_loss_fn` wraps them as the per-device ``loss_fn(model, batch, rngs)`` that
:func:`norton_jax.training.step.make_train_step` takes.

Negatives on several devices (``train.negatives``): the authors fine-tune on one GPU, so
each loss sees the whole batch (512 retrieval / 128 QA pairs).  ``"global"`` (default)
keeps that on D devices: the pooled embeddings are ``all_gather``ed over the ``"data"``
axis and every device computes the loss of the whole configured batch (for COIN: the mean
over every scored frame of the batch), as ``train.negatives="global"`` does in
pre-training; the averaged gradient is that of the one-device loss.  ``"local"``: each
device's loss sees only its shard (1/D of the negatives), the device losses are averaged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from norton_jax.cli import ConfigError
from norton_jax.training.step import DATA_AXIS, LossFn

IGNORE_INDEX = -100
TASK_LOSSES = {"msrvtt": "t2v", "msrvtt_qa": "v2t", "coin": "frame_ce"}
NEGATIVES = ("global", "local")  # train.negatives of the fine-tuning configs


def _gather(x: jax.Array) -> jax.Array:  # [b, ...] (this device) -> [D*b, ...] (the global batch)
    return jax.lax.all_gather(x, DATA_AXIS, tiled=True)


def _diagonal_ce(logits: jax.Array) -> jax.Array:  # [B, B] -> []
    """``CE_mean(logits, arange(B))``: row ``i``'s target is column ``i``."""
    labels = jnp.arange(logits.shape[0])
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def t2v_contrastive_loss(
    pooled_text: jax.Array,  # [B, D]
    pooled_video: jax.Array,  # [B, D]
) -> jax.Array:  # [] float32
    """``T2VContraLoss`` (spec §2.7): ``CE_mean(pooled_text @ pooled_video^T, arange(B))``."""
    logits = pooled_text.astype(jnp.float32) @ pooled_video.astype(jnp.float32).T  # [B text, B video]
    return _diagonal_ce(logits)


def v2t_contrastive_loss(
    pooled_video: jax.Array,  # [B, D]
    pooled_text: jax.Array,  # [B, D]
) -> jax.Array:  # [] float32
    """``V2TContraLoss`` (spec §2.7): ``CE_mean(pooled_video @ pooled_text^T, arange(B))``."""
    logits = pooled_video.astype(jnp.float32) @ pooled_text.astype(jnp.float32).T  # [B video, B text]
    return _diagonal_ce(logits)


def frame_cross_entropy(
    logits: jax.Array,  # [..., C]
    targets: jax.Array,  # [...] int, IGNORE_INDEX where not scored
    *,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[jax.Array, jax.Array]:  # ([] mean CE, [] number of scored frames)
    """``CrossEntropy`` of the COIN task (spec §2.7): CE over ``logits.reshape(-1, C)`` vs
    ``targets.reshape(-1)``, mean over the entries whose target is not ``ignore_index``.

    Unlike torch (NaN), a batch with no scored entry gives loss 0 (a device whose shard
    holds only padded windows must not poison the averaged gradient).
    """
    c = logits.shape[-1]
    flat_logits = logits.reshape(-1, c).astype(jnp.float32)  # [N, C]
    flat_targets = targets.reshape(-1)  # [N]
    valid = flat_targets != ignore_index
    safe = jnp.where(valid, flat_targets, 0)
    per = optax.softmax_cross_entropy_with_integer_labels(flat_logits, safe)  # [N]
    count = jnp.sum(valid)
    loss = jnp.sum(jnp.where(valid, per, 0.0)) / jnp.maximum(count, 1).astype(jnp.float32)
    return loss, count


def make_loss_fn(task: str, negatives: str = "global") -> LossFn:
    """The per-device ``loss_fn(model, batch, rngs) -> (loss, metrics)`` of a fine-tuning task.

    * ``msrvtt``: the model on ``caps, cmasks, vfeats, vmasks`` (dropout on), T2V loss;
    * ``msrvtt_qa``: the same, V2T loss;
    * ``coin``: ``model.classify_frames`` on the windows, frame CE against ``targets
      [B, Lv]`` (-100 on padded frames).

    ``negatives`` (see the module docstring): ``"global"`` = the loss of the whole batch
    gathered over the ``"data"`` axis (the function then runs only inside the train step's
    ``shard_map``), ``"local"`` = the loss of this device's shard.

    Metrics: ``loss_total`` (and ``frames`` for COIN: scored frames on the device).
    """
    if task not in TASK_LOSSES:
        raise ValueError(f"unknown fine-tuning task {task!r}; choose one of {sorted(TASK_LOSSES)}")
    if negatives not in NEGATIVES:
        raise ConfigError(f"train.negatives must be one of {list(NEGATIVES)}, got {negatives!r}")
    gather = negatives == "global"

    if task == "coin":

        def coin_loss(model, batch, rngs):
            logits = model.classify_frames(
                batch["caps"], batch["cmasks"], batch["vfeats"], batch["vmasks"],
                deterministic=False, rngs=rngs,
            )  # [B, Lv, C]
            loss, count = frame_cross_entropy(logits, batch["targets"])
            if gather:
                # mean over the scored frames of the whole batch: device d contributes
                # D * sum_d / N, so the mean over devices (of loss and gradient) is sum / N
                devices = jax.lax.psum(1, DATA_AXIS)
                total = jax.lax.psum(count, DATA_AXIS)
                loss = loss * (devices * count / jnp.maximum(total, 1)).astype(jnp.float32)
            return loss, {"loss_total": loss, "frames": count.astype(jnp.float32)}

        return coin_loss

    def contrastive_loss(model, batch, rngs):
        out = model(batch["caps"], batch["cmasks"], batch["vfeats"], batch["vmasks"], deterministic=False, rngs=rngs)
        video, text = out["pooled_video"], out["pooled_text"]  # [b, D] each
        if gather:  # every device: the loss of the global batch [B, D]
            video, text = _gather(video), _gather(text)
        if task == "msrvtt":
            loss = t2v_contrastive_loss(text, video)
        else:
            loss = v2t_contrastive_loss(video, text)
        return loss, {"loss_total": loss}

    return contrastive_loss
