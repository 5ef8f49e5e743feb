"""Progress lines and the distributed start of the training commands (train, finetune)."""

from __future__ import annotations

import os
import sys
from typing import Any

import jax

__all__ = ["maybe_initialize_distributed", "say"]


def say(message: str, *, source: str = "norton_jax.train") -> None:
    """A one-line progress message on process 0 (stderr), independent of log verbosity."""
    if jax.process_index() == 0:
        print(f"[{source}] {message}", file=sys.stderr, flush=True)


def maybe_initialize_distributed(config: Any) -> None:
    """``jax.distributed.initialize()`` only when ``config.train.distributed`` or the
    environment (``NORTON_DISTRIBUTED=1``) asks."""
    if config.train.get("distributed", False) or os.environ.get("NORTON_DISTRIBUTED") == "1":
        jax.distributed.initialize()
