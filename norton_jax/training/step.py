"""Norton's data-parallel train step: one per-device program under ``jax.shard_map``.

The step runs over a 1-D device mesh with axis ``"data"``.  Parameters and optimiser
state are replicated (``P()``), the batch is sharded by videos (``P("data")``), gradients
are averaged with ``lax.pmean``.  Two loss semantics:

* ``negatives="local"`` (the reference, spec 4.7): every device computes Norton's loss on
  its own shard of the batch; the reported loss is the mean over devices.
* ``negatives="global"``: clip/caption embeddings and token outputs are ``all_gather``ed
  so that both contrastive losses see the global batch (every device computes the same
  loss; gradients flow back to each shard through the gather).

Only the trainable parameters (``layernorm_only`` or ``all``) are differentiated and
carried in the optimiser state; the frozen ones are a separate, non-donated argument.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from norton_jax.losses import LossConfig, norton_loss
from norton_jax.models.trainable import trainable_filter

DATA_AXIS = "data"
BATCH_KEYS = ("caps", "cmasks", "vfeats", "vmasks")
Negatives = Literal["local", "global"]
#: ``loss_fn(model, batch, rngs) -> (scalar loss, metrics with "loss_total")`` (per device).
LossFn = Callable[[nnx.Module, dict[str, jax.Array], nnx.Rngs], tuple[jax.Array, dict[str, jax.Array]]]


class TrainState(NamedTuple):
    """What changes from step to step (replicated over the mesh)."""

    step: jax.Array  # [] int32
    trainable: Any  # nnx.State of the trainable parameters
    opt_state: Any  # optax state of `trainable`
    rng: jax.Array  # [2] uint32 base key; dropout keys are folded from (step, device)


class ModelParts(NamedTuple):
    """A model cut into a static graph, its frozen parameters and the rest (RNG state)."""

    graphdef: Any
    frozen: Any
    rest: Any


def split_model(model: nnx.Module, trainable: str) -> tuple[ModelParts, Any]:
    """Splits ``model`` into (``ModelParts``, trainable ``nnx.State``) for ``trainable`` mode."""
    graphdef, train_params, frozen, rest = nnx.split(model, trainable_filter(trainable), nnx.Param, ...)
    return ModelParts(graphdef, frozen, rest), train_params


def merge_model(parts: ModelParts, trainable_params: Any) -> nnx.Module:
    """Inverse of :func:`split_model`."""
    return nnx.merge(parts.graphdef, trainable_params, parts.frozen, parts.rest)


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D ``("data",)`` mesh over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def shard_batch(
    batch: dict[str, np.ndarray], mesh: Mesh, keys: tuple[str, ...] = BATCH_KEYS
) -> dict[str, jax.Array]:
    """Host-local batch rows ``[local_rows, ...]`` -> global arrays sharded over ``"data"``.

    Works unchanged on one process and on many (each host passes its own rows). ``keys``
    are the fields sent (default: the four model inputs; fine-tuning adds e.g. ``targets``).
    """
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k])) for k in keys}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree replicated on every device of ``mesh`` (every process passes the
    same values; works when the mesh spans devices of other processes)."""
    sharding = NamedSharding(mesh, P())

    def one(x):
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            data = jax.make_array_from_process_local_data(sharding, np.asarray(jax.random.key_data(x)))
            return jax.random.wrap_key_data(data, impl=impl)
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree.map(one, tree)


def model_outputs_for_loss(outputs: dict[str, jax.Array]) -> tuple[jax.Array, ...]:
    """The six encoder outputs in :func:`norton_jax.losses.norton_loss` argument order."""
    return (
        outputs["pooled_video"],  # [B, D]
        outputs["pooled_text"],  # [B, D]
        outputs["video_outputs"],  # [B, F, D]
        outputs["text_outputs"],  # [B, T, D]
        outputs["video_mask_outputs"],  # [B, F]
        outputs["text_mask_outputs"],  # [B, T]
    )


def make_train_step(
    parts: ModelParts,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    loss_config: LossConfig | None = None,
    loss_kwargs: dict[str, Any] | None = None,
    negatives: Negatives = "local",
    loss_fn: LossFn | None = None,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds the jitted, donated ``train_step(state, batch) -> (state, metrics)``.

    By default the per-device loss is Norton's (``norton_loss(config=loss_config)`` on the
    model's outputs; ``loss_kwargs``, a dict of :class:`~norton_jax.losses.LossConfig`
    fields, is applied on top of ``loss_config`` or of the reference defaults).  ``loss_fn(model, batch, rngs) -> (loss, metrics)`` replaces it (the
    fine-tuning losses, :mod:`norton_jax.finetune`): it runs per device inside
    ``shard_map`` on the device's shard of ``batch`` (so it may use collectives over
    ``"data"`` itself), must use ``rngs`` for dropout, and its ``metrics`` must hold
    ``loss_total``; ``negatives`` must then stay ``"local"``.

    ``batch`` holds the four model inputs (spec 3.2) as global arrays sharded over the
    mesh's ``"data"`` axis (:func:`shard_batch`); each device's shard must hold whole
    sequences (a multiple of ``loss_config.seq_len`` rows; whole videos in practice).

    Metrics (replicated scalars): every entry of ``norton_loss``'s metrics dict averaged
    over devices, ``grad_norm`` (global L2 norm of the averaged gradient),
    ``inputs_finite`` (0 when any ``vfeats`` value is NaN/inf on any device) and
    ``finite`` (0 when the loss or the gradient is not finite).
    """
    if negatives not in ("local", "global"):
        raise ValueError(f"negatives must be 'local' or 'global', got {negatives!r}")
    if loss_fn is not None and negatives != "local":
        raise ValueError("a custom loss_fn gathers negatives itself; leave negatives='local'")
    if loss_fn is None and loss_kwargs is None and loss_config is None:
        raise ValueError("pass loss_config (Norton's loss) or a loss_fn")
    cfg = (loss_config or LossConfig()).replace(**(loss_kwargs or {}))
    norton = functools.partial(norton_loss, config=cfg)

    def compute_loss(trainable, frozen, rest, batch, key):
        model = nnx.merge(parts.graphdef, trainable, frozen, rest)
        if loss_fn is not None:
            return loss_fn(model, batch, nnx.Rngs(dropout=key))
        outputs = model(
            batch["caps"], batch["cmasks"], batch["vfeats"], batch["vmasks"],
            deterministic=False, rngs=nnx.Rngs(dropout=key),
        )
        features = model_outputs_for_loss(outputs)
        if negatives == "global":
            features = tuple(jax.lax.all_gather(x, DATA_AXIS, tiled=True) for x in features)
        return norton(*features)

    def per_device(state: TrainState, frozen, rest, batch):
        device = jax.lax.axis_index(DATA_AXIS)
        key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), device)
        # Differentiate a per-device (varying) copy of the replicated parameters, so
        # that each device holds the gradient of its own loss and the explicit pmean
        # below is the only cross-device reduction (with replicated parameters
        # shard_map's autodiff would psum the gradients itself).
        trainable = jax.lax.pcast(state.trainable, DATA_AXIS, to="varying")
        (loss, metrics), grads = jax.value_and_grad(compute_loss, has_aux=True)(
            trainable, frozen, rest, batch, key
        )
        grads = jax.lax.pmean(grads, DATA_AXIS)
        metrics = jax.lax.pmean(metrics, DATA_AXIS)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        inputs_finite = jax.lax.pmin(jnp.all(jnp.isfinite(batch["vfeats"])).astype(jnp.float32), DATA_AXIS)
        finite = (jnp.isfinite(metrics["loss_total"]) & jnp.isfinite(grad_norm)).astype(jnp.float32)
        metrics = dict(metrics, grad_norm=grad_norm, inputs_finite=inputs_finite, finite=finite)
        new_state = TrainState(state.step + 1, trainable, opt_state, state.rng)
        return new_state, metrics

    sharded = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(), P(), P(), P(DATA_AXIS)),
        out_specs=(P(), P()),
    )
    jitted = jax.jit(sharded, donate_argnums=(0,))

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        return jitted(state, parts.frozen, parts.rest, batch)

    # ``train_step.lower(state, batch)``: the jitted program lowered for (abstract) inputs,
    # e.g. ``.compile().memory_analysis()`` for the compiled memory (benchmarks/train_step.py).
    train_step.lower = lambda state, batch: jitted.lower(state, parts.frozen, parts.rest, batch)
    return train_step


def make_optimizer(optim: Any, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam with the reference's schedule and clipping (spec 4.6).

    Linear warm-up from 0 to ``optim.lr`` over ``optim.warmup_steps`` updates, then linear
    (power-1 polynomial) decay to ``optim.end_lr`` at ``total_steps``; gradients clipped to
    global norm ``optim.clip_norm``; Adam ``(b1, b2, eps)``, no weight decay.
    """
    warmup = int(optim.warmup_steps)
    decay_steps = max(int(total_steps) - warmup, 1)
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, optim.lr, max(warmup, 1)),
            optax.polynomial_schedule(optim.lr, optim.end_lr, power=1, transition_steps=decay_steps),
        ],
        boundaries=[warmup],
    ) if warmup > 0 else optax.polynomial_schedule(optim.lr, optim.end_lr, power=1, transition_steps=decay_steps)
    tx = optax.chain(
        optax.clip_by_global_norm(optim.clip_norm),
        optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps),
    )
    return tx, schedule


def init_train_state(trainable: Any, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Step 0 state for ``trainable`` parameters."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        trainable=trainable,
        opt_state=tx.init(trainable),
        rng=jax.random.key_data(jax.random.key(seed)),
    )
