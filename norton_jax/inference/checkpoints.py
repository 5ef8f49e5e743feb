"""Where a model's weights come from and how they are loaded for inference (eval mode, spec §5.0).

:func:`resolve_checkpoint` accepts what users point at (a training workdir, its
``checkpoints/`` folder, one ``<step>/`` folder, or a ``.pt`` / ``.pth`` / ``.safetensors``
file), on a local disk or any filesystem :mod:`data_pipeline.fileio` knows (``gs://``);
:func:`load_model` builds the :class:`~norton_jax.models.dual_encoder.DualEncoder` from it.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Mapping, Union

from flax import nnx

from data_pipeline import fileio
from norton_jax.models.config import ModelConfig, load_config_file
from norton_jax.models.dual_encoder import DualEncoder, init_model

__all__ = ["CheckpointRef", "Step", "model_config_arg", "parse_step_arg", "resolve_checkpoint", "load_model"]

PathLike = Union[str, os.PathLike]
Step = Union[int, str, None]  # an orbax step, "best", "latest" or None (= latest)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")
GEOMETRY_FIELDS = (
    "hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_video_layers",
    "num_hidden_text_layers", "vocab_size", "max_position_embeddings", "type_vocab_size", "video_input_dim",
)


def parse_step_arg(text: str) -> Step:
    """The ``type=`` of every ``--step`` flag: :func:`norton_jax.checkpoint.parse_step` (an integer,
    ``best`` or ``latest`` -> None, the latest step).  A bad value raises
    ``argparse.ArgumentTypeError`` (argparse prints it as a usage error)."""
    from norton_jax.checkpoint import parse_step  # noqa: PLC0415 - orbax is slow to import; only when --step is given

    try:
        return parse_step(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def model_config_arg(config: Any) -> ModelConfig | None:
    """``--config`` value -> ModelConfig: a config file (``get_config().model``), a ModelConfig,
    a ConfigDict / mapping (either the model fields or a full config with ``model``)."""
    if config is None:
        return None
    if isinstance(config, (str, os.PathLike)):
        return ModelConfig.from_any(load_config_file(os.fspath(config)).model)
    if isinstance(config, ModelConfig):
        return config
    if isinstance(config, Mapping) or hasattr(config, "to_dict"):
        values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        if "model" in values:
            values = values["model"]
            values = values.to_dict() if hasattr(values, "to_dict") else dict(values)
        return ModelConfig.from_any(values)
    raise TypeError(f"cannot read a model config from {type(config).__name__}")


@dataclass(frozen=True)
class CheckpointRef:
    """Where the weights come from: a reference/exported file, or an orbax root and step."""

    kind: str  # "file" | "orbax"
    path: str  # the file, or the orbax root (folder of <step>/ dirs)
    step: Step  # orbax step (None = latest; "best"/"latest" as norton_jax.checkpoint reads them)


def _clean(path: PathLike) -> str:
    path = os.fspath(path)
    return path.rstrip("/") if fileio.is_url(path) else os.path.normpath(path)


def _has_steps(folder: str) -> bool:
    return any(name.isdigit() and fileio.isdir(fileio.join(folder, name)) for name in fileio.listdir(folder))


def resolve_checkpoint(path: PathLike, step: Step = None) -> CheckpointRef:
    """Accepts a training workdir (``W/checkpoints/<step>``), its ``checkpoints/`` folder, one
    step folder, or a ``.pt`` / ``.pth`` / ``.safetensors`` file; raises FileNotFoundError
    naming ``path`` when none of these is there."""
    p = _clean(path)
    if fileio.isfile(p):
        if not p.endswith(CHECKPOINT_SUFFIXES):
            raise ValueError(f"{p}: checkpoint files must be .pt, .pth or .safetensors")
        return CheckpointRef("file", p, None)
    if not fileio.isdir(p):
        raise FileNotFoundError(f"checkpoint not found: {p}")
    sub = fileio.join(p, "checkpoints")
    if fileio.isdir(sub) and _has_steps(sub):
        return CheckpointRef("orbax", sub, step)
    name = fileio.basename(p)
    if name.isdigit() and (fileio.exists(fileio.join(p, "params")) or fileio.exists(fileio.join(p, "meta"))):
        if isinstance(step, int) and step != int(name):
            raise ValueError(f"{p} is step {name}, but step={step} was asked for")
        return CheckpointRef("orbax", fileio.dirname(p), int(name))
    if _has_steps(p):
        return CheckpointRef("orbax", p, step)
    raise FileNotFoundError(
        f"{p}: no checkpoint here (expected a training workdir with checkpoints/<step>/, a "
        "checkpoints/ folder, one <step>/ folder, or a .pt/.safetensors file)"
    )


def load_model(
    checkpoint: PathLike | DualEncoder,
    config: Any = None,
    *,
    step: Step = None,
) -> tuple[DualEncoder, dict[str, Any]]:
    """The model in eval mode (dropout off, spec §5.0) and ``{"checkpoint", "step"}`` of its source.

    ``config`` (config file path, ModelConfig or mapping) gives the geometry for files that
    do not carry it (a reference ``.pt``); for orbax checkpoints it must agree with the
    stored one.  ``step``: an orbax step, ``"best"``/``"latest"`` (as
    :func:`norton_jax.checkpoint.parse_step` reads ``--step``) or None for the latest.
    """
    if isinstance(checkpoint, DualEncoder):
        checkpoint.eval()
        return checkpoint, {"checkpoint": "<in-memory model>", "step": None}
    cfg = model_config_arg(config)
    ref = resolve_checkpoint(checkpoint, step)
    if ref.kind == "file":
        from norton_jax.import_torch import build_pretrained  # noqa: PLC0415 - torch only for .pt files

        model = build_pretrained(ref.path, cfg)
        used_step = None
    else:
        from norton_jax.checkpoint import Checkpointer  # noqa: PLC0415 - orbax only for orbax folders

        with Checkpointer(ref.path, max_to_keep=None, enable_async=False) as ckpt:
            stored = ckpt.model_config(ref.step)
            if cfg is None:
                if stored is None:
                    raise ValueError(f"{ref.path}: the checkpoint stores no model config; pass --config")
                cfg = ModelConfig.from_any(stored)
            elif stored:
                diffs = [f"{k}: checkpoint {stored[k]} vs config {getattr(cfg, k)}"
                         for k in GEOMETRY_FIELDS if k in stored and stored[k] != getattr(cfg, k)]
                if diffs:
                    raise ValueError(f"{ref.path}: --config geometry differs from the checkpoint's ({', '.join(diffs)})")
            model = init_model(cfg)
            restored = ckpt.restore(ref.step, params=nnx.state(model, nnx.Param))
        nnx.update(model, restored.params)
        used_step = restored.step
    model.eval()
    return model, {"checkpoint": fileio.abspath(os.fspath(checkpoint)), "step": used_step}
