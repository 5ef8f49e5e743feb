"""What every checkpoint module shares: the errors, :class:`Restored`, step names
(:func:`parse_step`) and the checkpoint folder of a workdir (:func:`checkpoint_root`)."""

from __future__ import annotations

import os
from typing import Any, Literal, NamedTuple

from data_pipeline import fileio
from norton_jax.cli import UserError

__all__ = [
    "BEST", "CheckpointDamagedError", "CheckpointError", "CheckpointSaveError", "Restored", "STATE_ITEMS",
    "checkpoint_root", "parse_step",
]

#: The step name of the best checkpoint (lowest validation loss), kept beside the latest ones.
BEST = "best"
Step = int | Literal["best"] | None


class CheckpointError(UserError):
    """A checkpoint step that cannot be written or read; the message names the step and folder."""

    def __init__(self, message: str, *, step: int | None = None, directory: str | None = None):
        super().__init__(message)
        self.step = step
        self.directory = directory


class CheckpointDamagedError(CheckpointError):
    """The stored files of a step are missing, truncated or altered."""


class CheckpointSaveError(CheckpointError):
    """A save could not be completed (e.g. a read-only folder or a full disk)."""

STATE_ITEMS = ("params", "opt_state", "rng")


class Restored(NamedTuple):
    """What `Checkpointer.restore` returns (`opt_state` / `rng` are None when not requested;
    `extra` is the JSON dict given to `save(extra=...)`, or None)."""

    step: int
    params: Any
    opt_state: Any
    rng: Any
    extra: dict[str, Any] | None = None



def parse_step(text: str | int | None) -> Step:
    """A checkpoint step as users write it: ``"best"``, ``"latest"`` / empty / None (the
    latest step: None) or a non-negative integer.  Raises ``ValueError`` naming the text."""
    if text is None or isinstance(text, int) and not isinstance(text, bool):
        if text is not None and text < 0:
            raise ValueError(f"a checkpoint step must be >= 0, got {text}")
        return text
    word = str(text).strip().lower()
    if word in ("", "latest"):
        return None
    if word == BEST:
        return BEST
    try:
        step = int(word)
    except ValueError:
        raise ValueError(f"expected a checkpoint step: an integer, 'best' or 'latest', got {text!r}") from None
    if step < 0:
        raise ValueError(f"a checkpoint step must be >= 0, got {text!r}")
    return step


def checkpoint_root(path: str | os.PathLike) -> str:
    """The orbax checkpoint folder for ``path``: a training workdir (one holding
    ``checkpoints/``, as ``norton_jax.train`` writes) maps to that subfolder."""
    path = os.fspath(path)
    sub = fileio.join(path, "checkpoints")
    return sub if fileio.isdir(sub) else path
