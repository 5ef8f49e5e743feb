"""Training checkpoints with `orbax.checkpoint.CheckpointManager`.

One checkpoint step holds four orbax items:

| item | content | handler |
|---|---|---|
| `params` | model parameters (pytree / `nnx.State`) | StandardSave |
| `opt_state` | optimiser state (optax state, `nnx.state(optimizer)`), optional | StandardSave |
| `rng` | RNG state (a key, a pytree of keys, `nnx.state(model, nnx.RngState)`), optional | StandardSave |
| `meta` | `{"step", "model_config", "items", "extra"}` | JsonSave |

Orbax provides the guarantees we rely on: saves are written to
`<step>.orbax-checkpoint-tmp-<timestamp>` and renamed to `<step>` only once complete, so an
interrupted save is never listed nor restored; `max_to_keep` keeps the last N;
`save_interval_steps` saves every K steps (`force=True` overrides).

Restoring onto a different device count / mesh: pass templates whose leaves are
`jax.ShapeDtypeStruct`s (or arrays) carrying the *target* sharding, e.g. from
`nnx.eval_shape` plus `jax.sharding.NamedSharding`; orbax reads and reshards accordingly.
Without a `params` template, parameters are restored from the checkpoint's own metadata
onto `jax.devices()[0]` (or the `sharding` given).

Typed PRNG keys are stored as their raw key data and re-wrapped with the template's
implementation on restore. `nnx.State` values are stored as pure dicts and restored into a
copy of the template State.

What can go wrong, and what the caller gets (all are `CheckpointError`, a
`norton_jax.cli.UserError`, so a command prints one `error:` line):

* **A save fails** (read-only folder, disk full): `CheckpointSaveError` naming the step
  and the folder, raised by the next `save`, `wait_until_finished` or `close` (orbax writes
  in a background thread).  The helper threads orbax leaves waiting for that save are
  released, so the process can still exit; earlier steps are untouched.
* **A step is damaged** (a file deleted or truncated, a byte changed): `CheckpointDamagedError`
  naming the step, the folder, the newest intact step (`--step N`) and the steps on disk.
  Every save records, in `meta`, a SHA-256 over the parameters (leaves in path order,
  with their shapes and dtypes); `restore` recomputes it, so a flipped bit is detected even
  where the storage format has no checksum of its own.  Checkpoints written before the
  checksum existed load without this verification.
* **A step does not fit the templates** (another model geometry, optimiser or trainable
  set): a plain `CheckpointError` saying so, with orbax's reason.

The best checkpoint: `Checkpointer.save_best(step, value, ...)` keeps the step with the
lowest validation loss in `<directory>.best/` (one orbax step, never rotated by
`max_to_keep`, plus a `best.json`); `restore(step="best")` / `model_config(step="best")`
read it, and `parse_step` turns a user's `--step` text into an int, `"best"` or None
(latest).  See docs/checkpoints.md, "Checkpoint selection".

Modules: `base` (errors, `Restored`, `parse_step`, `checkpoint_root`), `trees` (pytree
conversions, `params_digest`), `orbax_quirks` (orbax failure-path work-arounds),
`manager` (`Checkpointer`).
"""

from __future__ import annotations

from norton_jax.checkpoint.base import (
    BEST,
    CheckpointDamagedError,
    CheckpointError,
    CheckpointSaveError,
    Restored,
    checkpoint_root,
    parse_step,
)
from norton_jax.checkpoint.manager import Checkpointer
from norton_jax.checkpoint.trees import abstract_like, params_digest

__all__ = [
    "BEST", "CheckpointDamagedError", "CheckpointError", "CheckpointSaveError", "Checkpointer", "Restored",
    "abstract_like", "checkpoint_root", "params_digest", "parse_step",
]
