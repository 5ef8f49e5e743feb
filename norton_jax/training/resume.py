"""Resuming a training or fine-tuning run from its workdir's checkpoints: the model
geometry check, and the newest intact step (damaged steps are skipped and set aside)."""

from __future__ import annotations

from typing import Any

from norton_jax.checkpoint import CheckpointDamagedError, Checkpointer
from norton_jax.cli import ConfigError
from norton_jax.models.config import ModelConfig
from norton_jax.training.progress import say

__all__ = ["GEOMETRY_FIELDS", "check_resume_geometry", "precheck_resume", "restore_for_resume"]


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
