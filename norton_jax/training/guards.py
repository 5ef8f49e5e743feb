"""How a training loop stops: SIGTERM / SIGINT at a step boundary (:class:`StopRequested`),
and a non-finite step (:func:`raise_if_non_finite`, or skipped with :class:`NonFiniteGuard`
when ``train.on_non_finite = "skip"``)."""

from __future__ import annotations

import signal
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from norton_jax.cli import NonFiniteError
from norton_jax.training.progress import say

__all__ = ["NonFiniteGuard", "StopRequested", "raise_if_non_finite", "skip_non_finite_updates"]

ON_NON_FINITE = ("stop", "skip")


class StopRequested:
    """Flag set by SIGTERM / SIGINT; the loop saves and exits at the next step boundary."""

    def __init__(self, report: Callable[[str], None] = say):
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._report = report

    def __enter__(self) -> "StopRequested":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test thread)
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self._report(f"signal {signum} received: saving a checkpoint and stopping")
        self.requested = True
        self.signum = int(signum)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def raise_if_non_finite(metrics: dict[str, float], step: int, *, skipped_in_a_row: int = 0) -> None:
    """Raises :class:`~norton_jax.cli.NonFiniteError` (exit status 3) naming what is not
    finite in a step's ``metrics`` (``inputs_finite`` / ``finite`` flags of the train step)."""
    if metrics.get("inputs_finite", 1.0) < 1:
        raise NonFiniteError(
            f"step {step}: the input batch field 'vfeats' holds NaN or inf; stopping before "
            "saving (the last good checkpoint is kept). Check the feature store."
        )
    if metrics.get("finite", 1.0) < 1:
        bad = [k for k in ("loss_total", "loss_clip_caption", "loss_video_paragraph", "grad_norm")
               if not np.isfinite(metrics.get(k, 0.0))]
        after = (f" ({skipped_in_a_row} steps in a row, more than train.max_skipped)"
                 if skipped_in_a_row else "")
        raise NonFiniteError(
            f"step {step}: non-finite {', '.join(bad) or 'loss/gradient'}{after}; stopping before saving "
            "(the last good checkpoint is kept)"
        )


def skip_non_finite_updates(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` that, when any gradient is NaN/inf, returns updates of ``-0.0`` (so that
    ``params + update`` is ``params`` bit for bit, signed zeros included) and its previous
    state unchanged; the state keeps ``tx``'s structure (checkpoints stay compatible)."""

    def update(grads, state, params=None):
        updates, new_state = tx.update(grads, state, params)
        ok = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.full_like(u, -0.0)), updates)
        new_state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, state)
        return updates, new_state

    return optax.GradientTransformation(tx.init, update)


class NonFiniteGuard:
    """Decides, per step, what a non-finite loss or gradient does (``train.on_non_finite``).

    ``"stop"``: :func:`raise_if_non_finite` at once.  ``"skip"``: the step's update was not
    applied (the optimiser is wrapped with :func:`skip_non_finite_updates`), the step is
    counted (``skipped_steps`` in every metrics row) and the run goes on, until more than
    ``max_skipped`` steps in a row were skipped.  NaN/inf in the *input* always stops.
    """

    def __init__(self, mode: str = "stop", max_skipped: int = 0, *, skipped: int = 0,
                 report: Callable[[str], None] = say):
        if mode not in ON_NON_FINITE:
            raise ValueError(f"on_non_finite must be one of {ON_NON_FINITE}, got {mode!r}")
        self.mode, self.max_skipped = mode, int(max_skipped)
        self.skipped = int(skipped)  # in the whole run (restored on resume)
        self.in_a_row = 0
        self._report = report

    def wrap(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
        return skip_non_finite_updates(tx) if self.mode == "skip" else tx

    def check(self, metrics: dict[str, Any], step: int) -> bool:
        """After a step: True when it was skipped; raises when the run must stop."""
        flags = jax.device_get((metrics["inputs_finite"], metrics["finite"]))  # two scalars per step
        if min(flags) >= 1:
            self.in_a_row = 0
            return False
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if self.mode == "stop" or host.get("inputs_finite", 1.0) < 1:
            raise_if_non_finite(host, step)
        self.in_a_row += 1
        if self.in_a_row > self.max_skipped:
            raise_if_non_finite(host, step, skipped_in_a_row=self.in_a_row)
        self.skipped += 1
        self._report(f"step {step}: non-finite loss or gradient, update skipped "
                     f"({self.in_a_row} in a row, {self.skipped} in all)")
        return True
