"""Checkpoint selection for pre-training: Norton's loss on the held-out videos of the
store's validation split (``config.data.val_split``), every ``train.eval_every`` steps.

The loss is the training objective (:func:`norton_jax.losses.norton_loss` with
``config.loss``) computed in evaluation mode (no dropout) on the first
``train.eval_batches`` batches of the split, drawn with a fixed seed, so that every
evaluation of a run sees the same videos; each batch is cut into per-device groups of
``data.videos_per_device`` videos (the negatives one training device sees) and the
losses are averaged.  Every process evaluates the same batches (process 0's view of the
split), so all of them agree on which step is the best one.  The result is logged as
``val/*`` rows of ``metrics.jsonl`` and decides :meth:`~norton_jax.checkpoint.Checkpointer.save_best`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipeline.input_pipeline import PipelineConfig, TrainIterator
from norton_jax.losses import LossConfig, norton_loss
from norton_jax.training.step import model_outputs_for_loss

__all__ = ["ValidationLoss", "host_copy"]


def host_copy(model: nnx.Module) -> nnx.Module:
    """``model`` with every array fetched to the host and put on the first device (an eval copy)."""
    graphdef, state = nnx.split(model)

    def local(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = np.asarray(jax.device_get(jax.random.key_data(x)))
            return jax.random.wrap_key_data(jnp.asarray(data), impl=jax.random.key_impl(x))
        return jnp.asarray(np.asarray(jax.device_get(x)))

    return nnx.merge(graphdef, jax.tree.map(local, state))


class ValidationLoss:
    """``ValidationLoss(config, store)(model) -> {"val/loss_total": ..., ...}`` (means over batches)."""

    def __init__(self, config: Any, store: str):
        self.store, self.split = store, str(config.data.get("val_split", "val"))
        self.num_batches = int(config.train.get("eval_batches", 4))
        self.pipeline = PipelineConfig(
            videos_per_device=int(config.data.videos_per_device), seed=int(config.data.seed), layout="flat",
            num_local_devices=1, process_index=0, process_count=1, num_workers=0,
        )
        self.rows = self.pipeline.videos_per_device * self.pipeline.clips_per_video
        loss = LossConfig.from_config(config.loss)

        def one(state, batch):
            model = nnx.merge(self.graphdef, state)
            outputs = model(batch["caps"], batch["cmasks"], batch["vfeats"], batch["vmasks"], deterministic=True)
            return norton_loss(*model_outputs_for_loss(outputs), config=loss)[1]

        self.graphdef = None
        self._one = jax.jit(one)
        self._batches: list[dict[str, np.ndarray]] | None = None

    def batches(self) -> list[dict[str, np.ndarray]]:
        """The validation batches (read once, kept in host memory)."""
        if self._batches is None:
            iterator = TrainIterator(self.store, self.split, self.pipeline)
            try:
                count = min(self.num_batches, iterator.steps_per_epoch)
                self._batches = [next(iterator) for _ in range(count)]
            finally:
                iterator.close()
        return self._batches

    def __call__(self, model: nnx.Module) -> dict[str, float]:
        graphdef, state = nnx.split(host_copy(model))
        self.graphdef = graphdef
        sums: dict[str, float] = {}
        count = 0
        for batch in self.batches():
            for start in range(0, len(batch["vfeats"]) - self.rows + 1, self.rows):
                chunk = {k: jnp.asarray(v[start:start + self.rows]) for k, v in batch.items()
                         if k in ("caps", "cmasks", "vfeats", "vmasks")}
                metrics = jax.device_get(self._one(state, chunk))
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                count += 1
        return {f"val/{k}": v / max(count, 1) for k, v in sums.items()} | {"val/groups": float(count)}
